"""Start and stop real node processes on 127.0.0.1 (the demo, tests and benchmarks use it).

Each node is ``python -m spheroid_p2p.node run`` with port 0; its "listening on" line gives the
real address. Processes are ended by PID only: SIGTERM (clean shutdown), then SIGKILL if they
do not exit in time.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from spheroid_p2p.client.status import fetch_status
from spheroid_p2p.wire.status import StatusResponse

__all__ = ["NodeProcess", "evaluator_command", "live_view", "swarm_plan", "wait_for"]

LISTENING = re.compile(r"spheroid node (\S+) listening on (\S+)")


class NodeProcess:
    """One ``python -m spheroid_p2p.node run`` process, started by us and ended by PID."""

    def __init__(
        self,
        workdir: Path,
        name: str,
        *args: str,
        verbose: int = 2,
        listen: str = "127.0.0.1:0",
        prefix: tuple[str, ...] = (),
    ) -> None:
        """``prefix``: a command the node runs under, e.g. ``("ip", "netns", "exec", NS)`` to
        run it on an emulated host (scripts/wan) or an ssh command for a real one."""
        self.name = name
        self.workdir = workdir
        self.log_path = workdir / f"{name}.log"
        self.prefix = prefix
        self.args = [
            "--listen",
            listen,
            "--key",
            str(workdir / f"{name}.key"),
            "--data-dir",
            str(workdir / name),
            *args,
        ]
        self.verbose = verbose
        self.proc: subprocess.Popen[str] | None = None
        self.addr = ""
        self.peer_id = ""

    def start(self, timeout_s: float = 60.0) -> NodeProcess:
        """Start the process and wait until it listens (bounded by ``timeout_s``)."""
        with open(self.log_path, "a") as log:
            self.proc = subprocess.Popen(
                [
                    *self.prefix,
                    sys.executable,
                    "-m",
                    "spheroid_p2p.node",
                    *(["-v"] * self.verbose),
                    "run",
                    *self.args,
                ],
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        deadline = time.monotonic() + timeout_s
        assert self.proc.stdout is not None
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            match = LISTENING.search(line)
            if match:
                self.peer_id, self.addr = match.group(1), match.group(2)
                return self
        self.kill9()
        raise RuntimeError(f"node {self.name} did not start; its log:\n{self.log()[-3000:]}")

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    def status(self, timeout_s: float = 5.0) -> StatusResponse:
        return asyncio.run(fetch_status(self.addr, timeout_s))

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill9(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self, timeout_s: float = 10.0) -> int | None:
        """SIGTERM, then wait; SIGKILL if it does not exit in time."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.kill9()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return self.proc.returncode


def live_view(status: StatusResponse) -> frozenset[tuple[bytes, int]]:
    """The (owner, block) pairs a node considers live."""
    return frozenset((r.owner, r.block) for r in status.records if not r.departed)


def wait_for(predicate: Callable[[], bool], timeout_s: float, interval_s: float = 0.2) -> float:
    """Poll ``predicate`` until true; returns the seconds it took. Bounded in time."""
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        if predicate():
            return time.monotonic() - start
        time.sleep(interval_s)
    raise TimeoutError(f"condition not met within {timeout_s} s")


def swarm_plan(n_blocks: int, extra: list[int]) -> list[tuple[int, int]]:
    """(block, replica index) of every trainer: one per block, then one more per entry of
    ``extra`` (a block listed twice gets two more)."""
    plan = [(b, 0) for b in range(n_blocks)]
    for b in extra:
        if not 0 <= b < n_blocks:
            raise ValueError(f"no block {b} in a {n_blocks}-block model")
        plan.append((b, sum(1 for x, _ in plan if x == b)))
    return plan


def evaluator_command(
    bootstrap: str, corpus_and_model: list[str], every_s: float, out: Path, windows: int = 16
) -> list[str]:
    """``node eval`` scoring the swarm every ``every_s`` seconds until it is ended."""
    return [
        sys.executable,
        "-m",
        "spheroid_p2p.node",
        "eval",
        "--bootstrap",
        bootstrap,
        *corpus_and_model,
        "--windows",
        str(windows),
        "--every",
        str(every_s),
        "--count",
        "1000000",
        "--out",
        str(out),
    ]
