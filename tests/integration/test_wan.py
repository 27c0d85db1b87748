"""Across three emulated hosts (scripts/wan): generation with the stock CLI, and a round.

The hosts are network namespaces joined by 100 Mbit/s links with 25 ms one way each (the
``default`` profile: 100 ms between hosts), built by ``scripts/wan/topology.py`` and torn down
after the module. Block servers and trainers run on hosts 1 and 2; the commands a user types
(``generate``, ``node eval``) run on host 3, as on a third machine. Skipped, saying why, when not
root or without ``/dev/net/tun``.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from spheroid_p2p.ml.block import BlockDenoiser
from spheroid_p2p.ml.checkpoint import save_block
from spheroid_p2p.ml.config import ModelConfig
from spheroid_p2p.testing import tiny_trainer_args
from tests.support.swarm import NodeProcess

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts" / "wan"))

from topology import PROFILES, Topology, unavailable  # noqa: E402

pytestmark = pytest.mark.wan

SMALL = ["--context", "16", "--d-model", "32", "--layers-per-block", "1"]


@pytest.fixture(scope="module")
def hosts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Topology]:
    reason = unavailable()
    if reason:
        pytest.skip(f"the emulated hosts {reason}")
    with Topology(PROFILES["default"], workdir=tmp_path_factory.mktemp("wan")) as topo:
        yield topo


def _on(topo: Topology, host: int, *cmd: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*topo.exec_prefix(host), sys.executable, *cmd],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _node(topo: Topology, host: int, tmp: Path, name: str, *args: str) -> NodeProcess:
    return NodeProcess(
        tmp,
        name,
        *args,
        verbose=1,
        listen=f"{topo.addr(host)}:0",
        prefix=tuple(topo.exec_prefix(host)),
    ).start(timeout_s=90)


def _wait(topo: Topology, peer: str, count: int, role: str) -> None:
    done = _on(
        topo,
        2,
        str(ROOT / "scripts" / "wan" / "wait_serving.py"),
        "--peer",
        peer,
        "--count",
        str(count),
        "--role",
        role,
        "--timeout",
        "60",
    )
    assert done.returncode == 0, done.stderr


def test_generate_across_hosts_with_an_undialable_client(hosts: Topology, tmp_path: Path) -> None:
    """Two servers (blocks 0-1 on host 1, 2-3 on host 2); the client on host 3 names a reply
    address nobody can dial (port 9 there is closed), yet gets its answer, over the
    connection it opened to the last hop."""
    cfg = ModelConfig(context=16, d_model=32, layers_per_block=1)
    paths = []
    for b in range(cfg.n_blocks):
        paths.append(tmp_path / f"block{b}.safetensors")
        save_block(paths[-1], BlockDenoiser(cfg, b))
    first = _node(
        hosts, 0, tmp_path, "s1", "--checkpoint", str(paths[0]), "--checkpoint", str(paths[1])
    )
    second = _node(
        hosts,
        1,
        tmp_path,
        "s2",
        "--checkpoint",
        str(paths[2]),
        "--checkpoint",
        str(paths[3]),
        "--bootstrap",
        first.addr,
    )
    try:
        _wait(hosts, first.addr, 4, "serve")
        done = _on(
            hosts,
            2,
            "-m",
            "spheroid_p2p.generate",
            "--peer",
            first.addr,
            "--prompt",
            "Day 1.",
            "--bytes",
            "12",
            "--advertise",
            f"{hosts.addr(2)}:9",
            "--timeout",
            "20",
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith("Day 1.") and len(done.stdout.encode()) >= 6 + 12
        assert "12 bytes in 12 traversals" in done.stderr
        assert "0 retries" in done.stderr
    finally:
        for node in (second, first):
            node.stop()


def test_a_round_across_hosts_and_eval_from_a_third(hosts: Topology, tmp_path: Path) -> None:
    """Two replicas of a one-block model on hosts 1 and 2 average in rounds over the WAN;
    ``node eval`` on host 3 then fetches the averaged version and scores it."""
    flags = [
        *tiny_trainer_args(steps=40, round_steps=10, round_period=6, round_grace=3),
        "--n-blocks",
        "1",
        "--min-replicas",
        "2",
    ]
    a = _node(hosts, 0, tmp_path, "r1", *flags, "--seed", "1")
    b = _node(hosts, 1, tmp_path, "r2", *flags, "--seed", "2", "--bootstrap", a.addr)
    try:
        _wait(hosts, a.addr, 2, "serve")  # training done: both serve the block
        reports = [
            line
            for node in (a, b)
            if (path := tmp_path / node.name / "block-0.rounds.jsonl").exists()
            for line in path.read_text().splitlines()
            if line
        ]
        assert any('"contributors": [{' in r and r.count('"peer"') >= 2 for r in reports), reports
        done = _on(
            hosts,
            2,
            "-m",
            "spheroid_p2p.node",
            "eval",
            "--bootstrap",
            a.addr,
            "--corpus",
            "embedded",
            *SMALL,
            "--n-blocks",
            "1",
            "--windows",
            "4",
            "--timeout",
            "60",
        )
        assert done.returncode == 0, done.stderr
        assert "CE=" in done.stdout
    finally:
        for node in (b, a):
            node.stop()
