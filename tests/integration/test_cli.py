"""The command line as a user runs it: stops, start-up mistakes, status output (issue 18)."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from spheroid_p2p.ml.checkpoint import load_trainer_or_previous
from spheroid_p2p.ml.config import TrainConfig
from spheroid_p2p.testing import tiny_trainer_args
from tests.support.swarm import NodeProcess, wait_for

pytestmark = pytest.mark.integration
NODE = [sys.executable, "-m", "spheroid_p2p.node"]


def _step(node: NodeProcess) -> int:
    jobs = node.status().jobs
    return jobs[0].step if jobs else 0


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_trainer_stops_at_once_on_a_signal_with_its_steps_checkpointed(
    tmp_path: Path, sig: signal.Signals
) -> None:
    """SIGINT or SIGTERM ends a training node in well under 2 s (measured: ~0.1 s), and
    its checkpoint holds every step it reported: the restart resumes there."""
    node = NodeProcess(tmp_path, "t", *tiny_trainer_args(round_steps=0), verbose=1).start()
    try:
        wait_for(lambda: _step(node) >= 60, timeout_s=60)
        reported = _step(node)
        assert node.proc is not None
        started = time.monotonic()
        node.proc.send_signal(sig)
        node.proc.wait(10)
        took = time.monotonic() - started
    finally:
        node.kill9()
    assert node.proc.returncode == 0, node.log()[-2000:]
    assert took < 2.0, f"stopped in {took:.2f} s"
    assert f"{sig.name}: stopping" in node.log()
    trainer = load_trainer_or_previous(
        tmp_path / "t" / "block-0.trainer.safetensors", TrainConfig(steps=100_000)
    )
    assert trainer is not None and trainer.step_count >= reported


def _refused(*args: str, cwd: Path) -> str:
    """Run ``node`` with ``args``; it must exit 2 with exactly one line, no traceback."""
    done = subprocess.run(
        [*NODE, *args], capture_output=True, text=True, timeout=60, cwd=cwd, check=False
    )
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, done.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr[-2000:]
    return lines[0]


def test_start_up_mistakes_are_one_line_and_nobody_is_dialled(tmp_path: Path) -> None:
    """A missing corpus, a block the model lacks, a taken port, a server without weights,
    a missing checkpoint: one line each that says what to do, and the bootstrap peer is
    never dialled (the checks come before the node listens or joins)."""
    bootstrap = socket.socket()
    bootstrap.bind(("127.0.0.1", 0))
    bootstrap.listen()
    bootstrap.setblocking(False)
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    boot = f"127.0.0.1:{bootstrap.getsockname()[1]}"
    base = ["run", "--key", "k.key", "--data-dir", "d", "--bootstrap", boot]
    try:
        line = _refused(*base, "--train-block", "0", "--corpus", "nope.txt", cwd=tmp_path)
        assert "nope.txt: no such file" in line and "'embedded'" in line
        line = _refused(*base, "--train-block", "9", "--corpus", "embedded", cwd=tmp_path)
        assert "the model has 4 blocks (0..3)" in line
        port = taken.getsockname()[1]
        line = _refused(*base, "--listen", f"127.0.0.1:{port}", cwd=tmp_path)
        assert "the port is in use" in line and "port 0" in line
        line = _refused(*base, "--serve-block", "0", cwd=tmp_path)
        assert "--checkpoint FILE" in line and "--announce-only" in line
        line = _refused(*base, "--checkpoint", "block-0.safetensors", cwd=tmp_path)
        assert "block-0.safetensors: no such file" in line
        line = _refused(*base, "--train-block", "0", cwd=tmp_path)
        assert "needs --corpus" in line
        with pytest.raises(BlockingIOError):
            bootstrap.accept()  # nobody dialled the bootstrap peer
    finally:
        bootstrap.close()
        taken.close()


def test_status_json_watch_and_a_closed_pipe(tmp_path: Path) -> None:
    """`status --json` carries the trainer's step, loss, rate, eta and version; `--watch`
    repeats; `status | head -1` ends without a traceback."""
    node = NodeProcess(tmp_path, "t", *tiny_trainer_args(steps=5000), verbose=1).start()
    try:
        wait_for(lambda: _step(node) >= 60, timeout_s=60)
        out = subprocess.run(
            [*NODE, "status", "--peer", node.addr, "--json"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        view = json.loads(out.stdout)
        (job,) = view["training"]
        assert job["block"] == 0 and job["total"] == 5000 and job["step"] >= 60
        assert job["loss"] > 0 and job["steps_per_s"] > 0 and job["eta_s"] > 0
        assert job["version"] >= 1  # a trainer alone publishes a version every round
        assert any(r["role"] == "train" for r in view["records"])
        text = subprocess.run(
            [*NODE, "status", "--peer", node.addr],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout
        assert "block 0: step" in text and "steps/s" in text
        watch = subprocess.Popen(
            [*NODE, "status", "--peer", node.addr, "--json", "--watch", "0.3"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert watch.stdout is not None
            first = json.loads(watch.stdout.readline())
            second = json.loads(watch.stdout.readline())
            assert second["training"][0]["step"] >= first["training"][0]["step"]
        finally:
            watch.send_signal(signal.SIGINT)
            _, err = watch.communicate(timeout=10)
        assert "Traceback" not in err
        piped = subprocess.run(
            f"{sys.executable} -m spheroid_p2p.node status --peer {node.addr} | head -1",
            shell=True,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert piped.stdout.startswith("node: ") and piped.stderr == ""
    finally:
        node.stop()


def test_eval_says_why_a_block_cannot_be_fetched(tmp_path: Path) -> None:
    """A trainer run with --round-steps 0 publishes no version: eval says so and what to do."""
    node = NodeProcess(
        tmp_path, "t", *tiny_trainer_args(round_steps=0), "--n-blocks", "1", verbose=1
    ).start()
    try:
        done = subprocess.run(
            [
                *NODE,
                "eval",
                "--bootstrap",
                node.addr,
                "--corpus",
                "embedded",
                *("--context", "16", "--d-model", "32", "--layers-per-block", "1"),
                *("--n-blocks", "1", "--timeout", "4"),
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    finally:
        node.stop()
    last = done.stderr.strip().splitlines()[-1]
    assert done.returncode == 2, done.stderr[-2000:]
    assert last.startswith("error: no version of block 0 could be fetched in 4 s")
    assert "--round-steps 0" in last and "--round-steps N" in last


def test_a_span_model_is_trained_and_generated_from_the_command_line(tmp_path: Path) -> None:
    """`node run --span 4` trains a span model (layout P chosen for it) and serves it;
    `generate` emits 4 bytes per traversal by default; a span the model does not emit is
    refused with how to get one."""
    node = NodeProcess(
        tmp_path, "s", *tiny_trainer_args(steps=30), "--n-blocks", "1", "--span", "4", verbose=1
    ).start()
    try:
        wait_for(node.serving_trained, timeout_s=120)
        done = subprocess.run(
            [sys.executable, "-m", "spheroid_p2p.generate", "--peer", node.addr, "--prompt",
             "Day 1", "--bytes", "8"],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-2000:]
        assert "8 bytes in 2 traversals" in done.stderr
        wrong = subprocess.run(
            [sys.executable, "-m", "spheroid_p2p.generate", "--peer", node.addr, "--prompt",
             "Day 1", "--bytes", "8", "--span", "8", "--timeout", "5"],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
    finally:
        node.stop()
    assert wrong.returncode == 2
    assert "emits spans of 4" in wrong.stderr and "--span K" in wrong.stderr
