"""Start and stop real node processes (the demo, tests and benchmarks use it).

Each node is ``python -m spheroid_p2p.node run`` on a port chosen here; it is ready when it
answers a status query on that address (readiness by query: the answer's handshake also
proves its peer id). A node that could not bind the port (taken meanwhile) exits at once and
is started again on another. Processes are ended by PID only: SIGTERM (clean shutdown), then
SIGKILL if they do not exit in time.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import TypeVar

from spheroid_p2p.client.status import fetch_peer_status, fetch_status
from spheroid_p2p.errors import ErrorCode, SpheroidError
from spheroid_p2p.identity import load_or_create_identity
from spheroid_p2p.net.sockets import DialError, parse_addr
from spheroid_p2p.wire.signing import PeerId
from spheroid_p2p.wire.status import RecordView, StatusResponse

__all__ = [
    "NodeProcess",
    "evaluator_command",
    "free_port",
    "live_view",
    "swarm_plan",
    "wait_for",
]

T = TypeVar("T")

#: Ports tried before giving up on starting a node.
START_ATTEMPTS = 5
#: Seconds between status queries while a node starts.
READY_POLL_S = 0.1


def _run(work: Coroutine[object, object, T]) -> T:
    """Run a status query from sync code: on this thread, or, when this thread already runs
    an event loop (a benchmark's async code starting a node), on a thread of its own."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(work)
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="status") as pool:
        return pool.submit(asyncio.run, work).result()


def probe(addr: str, key_path: Path | None = None) -> PeerId | None:
    """The id of the node answering at ``addr`` (proven by the handshake of a status query),
    or None when nothing answers yet. A node that refuses our protocol version answers too:
    its id then comes from its key file (``key_path``), which it wrote before listening."""
    try:
        return _run(fetch_peer_status(addr, timeout_s=2.0))[0]
    except DialError as exc:
        if exc.code == ErrorCode.UNSUPPORTED_VERSION and key_path is not None:
            return load_or_create_identity(key_path)[0].peer_id
        return None
    except (SpheroidError, OSError):
        return None


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now (bound and released here where the address is ours; a
    random high port for an address of another host or namespace)."""
    try:
        with socket.socket() as s:
            s.bind((host, 0))
            return int(s.getsockname()[1])
    except OSError:
        return random.randint(20000, 60000)


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
        run it on an emulated host (scripts/wan) or an ssh command for a real one.
        ``listen``: HOST:PORT, port 0 for one chosen here."""
        self.name = name
        self.workdir = workdir
        self.log_path = workdir / f"{name}.log"
        self.prefix = prefix
        self.listen_host, self.port = parse_addr(listen, allow_any_port=True)
        self.key_path = workdir / f"{name}.key"
        self.args = [
            "--key",
            str(self.key_path),
            "--data-dir",
            str(workdir / name),
            *args,
        ]
        self.verbose = verbose
        self.proc: subprocess.Popen[str] | None = None
        self.addr = ""
        self.peer_id = ""

    def start(self, timeout_s: float = 60.0) -> NodeProcess:
        """Start the process and wait (bounded) until it answers a status query."""
        deadline = time.monotonic() + timeout_s
        for _ in range(START_ATTEMPTS):
            port = self.port or free_port(self.listen_host)
            addr = f"{self.listen_host}:{port}"
            with open(self.log_path, "a") as log:
                self.proc = subprocess.Popen(
                    [
                        *self.prefix,
                        sys.executable,
                        "-m",
                        "spheroid_p2p.node",
                        *(["-v"] * self.verbose),
                        "run",
                        "--listen",
                        addr,
                        *self.args,
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=log,
                    env={**os.environ, "PYTHONUNBUFFERED": "1"},
                )
            while time.monotonic() < deadline and self.proc.poll() is None:
                try:
                    peer = self._probe(addr)
                except BaseException:  # (Ctrl-C, a bug): never leave the process behind
                    self.kill9()
                    raise
                if peer is None:
                    time.sleep(READY_POLL_S)  # not listening yet
                    continue
                self.addr, self.peer_id = addr, peer.to_text()
                return self
            if self.proc.poll() is None or self.port:  # out of time, or a fixed port taken
                break
        self.kill9()
        raise RuntimeError(f"node {self.name} did not start; its log:\n{self.log()[-3000:]}")

    def _probe(self, addr: str) -> PeerId | None:
        """The node's id if it answers at ``addr`` (where it runs: through ``prefix``)."""
        if self.prefix:  # another namespace or host: ask from there
            try:
                done = subprocess.run(
                    [*self.prefix, sys.executable, "-m", "spheroid_p2p.node.launcher", addr],
                    capture_output=True,
                    text=True,
                    timeout=15,
                    check=False,
                )
            except subprocess.TimeoutExpired:
                return None
            return PeerId.from_text(done.stdout.strip()) if done.returncode == 0 else None
        return probe(addr, self.key_path)

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    def status(self, timeout_s: float = 5.0) -> StatusResponse:
        return _run(fetch_status(self.addr, timeout_s))

    def own_records(self, role: str | None = None) -> list[RecordView]:
        """This node's own live records, from its status."""
        me = PeerId.from_text(self.peer_id).digest
        return [
            r
            for r in self.status().records
            if r.owner == me and not r.departed and (role is None or r.role == role)
        ]

    def serving_trained(self) -> bool:
        """Whether it serves a block it trained (a serve record naming its weights)."""
        return any(r.content_hash for r in self.own_records("serve"))

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


def main(argv: list[str] | None = None) -> int:
    """``python -m spheroid_p2p.node.launcher HOST:PORT``: print the id of the node answering
    there (exit 0), or exit 1: the readiness query, run where the node runs."""
    args = sys.argv[1:] if argv is None else argv
    peer = probe(args[0]) if len(args) == 1 else None
    if peer is None:
        return 1
    print(peer.to_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
