"""Real node processes on 127.0.0.1: convergence, crash expiry, restart, version mismatch."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from spheroid_p2p.errors import TransportError
from tests.support.swarm import NodeProcess, live_view, wait_for

pytestmark = pytest.mark.integration
TTL = "3"  # seconds: short, so expiry is observable quickly


@pytest.fixture
def swarm(tmp_path: Path) -> Iterator[list[NodeProcess]]:
    nodes: list[NodeProcess] = []
    yield nodes
    for node in nodes:
        node.stop()


def _start(swarm: list[NodeProcess], tmp: Path, name: str, *args: str) -> NodeProcess:
    node = NodeProcess(tmp, name, "--record-ttl", TTL, "--gossip-interval", "0.5", *args).start()
    swarm.append(node)
    return node


def _views(nodes: list[NodeProcess]) -> list[frozenset[tuple[bytes, int]]]:
    out = []
    for node in nodes:
        try:
            out.append(live_view(node.status()))
        except TransportError:
            out.append(frozenset())
    return out


def test_eight_nodes_converge_then_a_killed_node_expires_and_a_restart_is_accepted(
    swarm: list[NodeProcess], tmp_path: Path
) -> None:
    """8 nodes (each bootstrapped only to its predecessor) agree on 8 records; kill -9 of one
    removes its record everywhere within the ttl; restarted with its key, it is back."""
    first = _start(swarm, tmp_path, "n0", "--serve-block", "0", "--announce-only")
    for i in range(1, 8):
        _start(
            swarm,
            tmp_path,
            f"n{i}",
            f"--{'serve' if i % 2 else 'train'}-block",
            str(i % 4),
            "--announce-only",
            "--bootstrap",
            swarm[i - 1].addr,
        )
    assert first.peer_id
    wait_for(
        lambda: all(len(v) == 8 for v in _views(swarm)) and len(set(_views(swarm))) == 1,
        timeout_s=30,
    )

    victim = swarm[3]
    victim_id = victim.status().agent.split()[-1]
    victim.kill9()
    others = [n for n in swarm if n is not victim]
    took = wait_for(lambda: all(len(v) == 7 for v in _views(others)), timeout_s=15)
    assert took <= float(TTL) + 2.0, f"expiry took {took:.1f} s with a {TTL} s ttl"

    restarted = NodeProcess(tmp_path, victim.name, *victim.args[6:]).start()
    swarm[3] = restarted
    assert restarted.peer_id == victim_id  # same key, same peer id
    wait_for(lambda: all(len(v) == 8 for v in _views(swarm)), timeout_s=20)


def test_clean_shutdown_departs_at_once(swarm: list[NodeProcess], tmp_path: Path) -> None:
    """SIGTERM publishes a signed departure: the record leaves other views before its ttl."""
    a = _start(swarm, tmp_path, "a", "--serve-block", "0", "--announce-only", "--record-ttl", "60")
    b = _start(
        swarm,
        tmp_path,
        "b",
        "--serve-block",
        "1",
        "--announce-only",
        "--bootstrap",
        a.addr,
        "--record-ttl",
        "60",
    )
    wait_for(lambda: len(live_view(a.status())) == 2, timeout_s=15)
    assert b.stop() == 0
    took = wait_for(lambda: len(live_view(a.status())) == 1, timeout_s=10)
    assert took < 5.0


def test_version_mismatch_is_rejected_on_both_sides(
    swarm: list[NodeProcess], tmp_path: Path
) -> None:
    """A node speaking only version 2 is refused with UNSUPPORTED_VERSION, in both logs."""
    v1 = _start(swarm, tmp_path, "v1")
    v2 = _start(swarm, tmp_path, "v2", "--protocol-versions", "2", "--bootstrap", v1.addr)
    wait_for(
        lambda: "UNSUPPORTED_VERSION" in v2.log() and "UNSUPPORTED_VERSION" in v1.log(),
        timeout_s=15,
    )
    assert "no common protocol version" in v1.log() + v2.log()
    with contextlib.suppress(TransportError):
        assert len(live_view(v1.status())) == 0
