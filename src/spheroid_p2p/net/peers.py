"""Thin asyncio glue: TCP connections driven by :class:`PeerConnection` state machines.

This module moves bytes and arms timers; it decides nothing about the protocol. It owns:

* the listener and outbound dials (with errors that say which address failed and why);
* one :class:`_Link` per TCP connection: a read loop feeding the state machine, a writer task
  draining a bounded queue (``write`` then ``drain`` for back-pressure), and the machine's one
  timer;
* the registry of open connections by peer id, with the rule that keeps exactly one
  connection per pair of peers when both dial at once (the one dialled by the lower peer id);
* a cap on connections (extra inbound connections are refused with ``OVERLOADED``).

Every task is owned by a ``TaskGroup`` held by :meth:`PeerManager.run`; closing a link
cancels its tasks and closes its socket in ``finally``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

from spheroid_p2p.core.connection import (
    ConnectionLost,
    ConnectionParams,
    ConnectionState,
    FrameSigner,
    HandshakeDone,
    MessageReceived,
    PeerConnection,
)
from spheroid_p2p.errors import ErrorCode, TransportError
from spheroid_p2p.params import SUPPORTED_VERSIONS
from spheroid_p2p.wire.codec import Envelope
from spheroid_p2p.wire.framing import Buffer
from spheroid_p2p.wire.messages import Close, Message
from spheroid_p2p.wire.signing import PeerId

__all__ = ["DialError", "LinkInfo", "PeerManager", "parse_addr"]

log = logging.getLogger(__name__)

#: Frames queued for one connection before it is considered stuck and closed (OVERLOADED).
MAX_QUEUED_FRAMES = 4096
READ_BYTES = 256 * 1024


class DialError(TransportError):
    """A dial failed; the message names the address and the reason."""


def parse_addr(addr: str, allow_any_port: bool = False) -> tuple[str, int]:
    """``host:port`` -> (host, port); raises ``ValueError`` with the offending text.

    Port 0 ("any free port") is only valid where we listen (``allow_any_port``).
    """
    host, sep, port = addr.rpartition(":")
    low = 0 if allow_any_port else 1
    if not sep or not host or not port.isdigit() or not low <= int(port) < 65536:
        raise ValueError(f"not a host:port address: {addr!r}")
    return host.strip("[]"), int(port)


def _wall_ms() -> int:
    return int(time.time() * 1000)


@dataclass(frozen=True)
class LinkInfo:
    """What the status command shows about a connection."""

    peer: PeerId
    addr: str
    outbound: bool
    rtt_ms: float
    idle_ms: int


class _Link:
    """One TCP connection: its state machine, socket, queue and tasks."""

    def __init__(
        self,
        conn: PeerConnection,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        outbound: bool,
        addr: str,
    ) -> None:
        self.conn = conn
        self.reader = reader
        self.writer = writer
        self.outbound = outbound
        self.addr = addr
        self.queue: asyncio.Queue[list[Buffer] | None] = asyncio.Queue(MAX_QUEUED_FRAMES)
        self.opened: asyncio.Future[PeerId] = asyncio.get_running_loop().create_future()
        self.closed = asyncio.Event()
        self.lost: ConnectionLost | None = None

    def push(self, buffers: list[Buffer]) -> bool:
        if not buffers:
            return True
        try:
            self.queue.put_nowait(buffers)
        except asyncio.QueueFull:
            return False
        return True

    def flush_machine(self) -> None:
        self.push(self.conn.take_outgoing())


class PeerManager:
    """Connections of one node, keyed by peer id once their handshake completes."""

    def __init__(
        self,
        signer: FrameSigner,
        *,
        on_open: Callable[[PeerId, tuple[str, ...]], None],
        on_message: Callable[[PeerId, Envelope], None],
        on_close: Callable[[PeerId, ConnectionLost], None],
        capabilities: tuple[str, ...] = ("gossip/1",),
        listen_addrs: Callable[[], tuple[str, ...]] = tuple,
        agent: str = "",
        params: ConnectionParams | None = None,
        max_connections: int = 64,
        versions: tuple[int, ...] = SUPPORTED_VERSIONS,
        dial_timeout_s: float = 5.0,
    ) -> None:
        self.signer = signer
        self.on_open = on_open
        self.on_message = on_message
        self.on_close = on_close
        self.capabilities = capabilities
        self.listen_addrs = listen_addrs
        self.agent = agent
        self.params = params or ConnectionParams()
        self.max_connections = max_connections
        self.versions = versions
        self.dial_timeout_s = dial_timeout_s
        self._links: set[_Link] = set()
        self._by_peer: dict[PeerId, _Link] = {}
        self._group: asyncio.TaskGroup | None = None
        self._server: asyncio.Server | None = None
        self.bytes_out = 0
        self.frames_out = 0

    @property
    def me(self) -> PeerId:
        return self.signer.key.peer_id

    # -- lifecycle --------------------------------------------------------------------------
    def attach(self, group: asyncio.TaskGroup) -> None:
        """Give the manager the TaskGroup that owns its connection tasks."""
        self._group = group

    async def listen(self, host: str, port: int) -> tuple[str, int]:
        """Start accepting connections; returns the bound (host, port) (port 0 = any)."""
        self._server = await asyncio.start_server(self._accept, host, port)
        sockname = self._server.sockets[0].getsockname()
        return sockname[0], sockname[1]

    async def close(
        self,
        code: ErrorCode = ErrorCode.NO_ERROR,
        reason: str = "shutting down",
        flush_s: float = 1.0,
    ) -> None:
        """Send Close on every connection, give the writers ``flush_s`` to drain, close all."""
        if self._server is not None:
            self._server.close()
        for link in list(self._links):
            link.conn.close(code, reason, _wall_ms())
            link.flush_machine()
            with contextlib.suppress(asyncio.QueueFull):
                link.queue.put_nowait(None)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(flush_s):
                for link in list(self._links):
                    await link.closed.wait()
        for link in list(self._links):
            link.writer.close()

    # -- connections ------------------------------------------------------------------------
    def _new_machine(self, expected: PeerId | None) -> PeerConnection:
        return PeerConnection(
            self.signer,
            now=time.monotonic(),
            nonce=os.urandom(32),
            params=self.params,
            capabilities=self.capabilities,
            listen_addrs=self.listen_addrs(),
            agent=self.agent,
            versions=self.versions,
            expected_peer=expected,
        )

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        addr = f"{peer[0]}:{peer[1]}" if peer else "?"
        if len(self._links) >= self.max_connections:
            log.warning(
                "refusing connection from %s: %d connections open (the cap)", addr, len(self._links)
            )
            frames = self.signer.encode(
                Close(code=int(ErrorCode.OVERLOADED), reason="connection cap reached"), _wall_ms()
            )
            writer.writelines(frames)
            with contextlib.suppress(ConnectionError):
                await writer.drain()
            writer.close()
            return
        link = _Link(self._new_machine(None), reader, writer, outbound=False, addr=addr)
        await self._drive(link)

    async def dial(self, addr: str, expected: PeerId | None = None) -> PeerId:
        """Connect to ``addr`` and complete the handshake; returns the peer's id.

        Raises:
            DialError: naming ``addr`` and why: refused, timed out, unreachable, or the
                handshake's error code and reason (e.g. UNSUPPORTED_VERSION).
        """
        if expected is not None and expected in self._by_peer:
            return expected
        host, port = parse_addr(addr)
        try:
            async with asyncio.timeout(self.dial_timeout_s):
                reader, writer = await asyncio.open_connection(host, port)
        except ConnectionRefusedError:
            raise DialError(
                f"dial {addr} failed: connection refused (is a node listening there?)"
            ) from None
        except TimeoutError:
            raise DialError(
                f"dial {addr} failed: no TCP connection within {self.dial_timeout_s:.0f} s"
            ) from None
        except OSError as exc:
            raise DialError(f"dial {addr} failed: {exc.strerror or exc}") from exc
        link = _Link(self._new_machine(expected), reader, writer, outbound=True, addr=addr)
        if self._group is None:
            raise RuntimeError("PeerManager.attach() was not called")
        self._group.create_task(self._drive(link))
        try:
            async with asyncio.timeout(self.params.handshake_timeout_s + 1):
                return await link.opened
        except TimeoutError:
            raise DialError(f"dial {addr} failed: handshake did not finish") from None

    async def _drive(self, link: _Link) -> None:
        """Own one connection until it closes: read loop, writer task, timer."""
        self._links.add(link)
        writer_task = asyncio.create_task(self._write_loop(link))
        try:
            link.conn.start(_wall_ms())
            link.flush_machine()
            await self._read_loop(link)
        except (ConnectionError, OSError) as exc:
            self._lost(link, ConnectionLost(int(ErrorCode.NO_ERROR), f"socket error: {exc}", True))
        except Exception:  # a bug: close this connection only, never the whole node
            log.exception(
                "[%s] internal error on the connection with %s", self.me.short(), link.addr
            )
            link.conn.close(ErrorCode.INTERNAL_ERROR, "internal error", _wall_ms())
            link.flush_machine()
            self._lost(link, ConnectionLost(int(ErrorCode.INTERNAL_ERROR), "internal error", False))
        finally:
            with contextlib.suppress(asyncio.QueueFull):
                link.queue.put_nowait(None)
            with contextlib.suppress(TimeoutError, ConnectionError, OSError):
                async with asyncio.timeout(1.0):
                    await writer_task
            writer_task.cancel()
            link.writer.close()
            self._links.discard(link)
            if not link.opened.done():
                lost = link.lost or ConnectionLost(int(ErrorCode.NO_ERROR), "closed", True)
                verb = "rejected" if lost.code else "closed"
                link.opened.set_exception(
                    DialError(f"dial {link.addr} failed: handshake {verb}: {lost.describe()}")
                )
                link.opened.exception()  # mark retrieved; the dialler re-raises it
            link.closed.set()

    async def _read_loop(self, link: _Link) -> None:
        conn = link.conn
        while link.lost is None:
            deadline = conn.get_timer()
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                async with asyncio.timeout(timeout):
                    data = await link.reader.read(READ_BYTES)
            except TimeoutError:
                self._events(link, conn.handle_timer(time.monotonic(), _wall_ms()))
                continue
            if not data:
                self._events(link, conn.eof(time.monotonic(), _wall_ms()))
                break
            self._events(link, conn.receive_data(data, time.monotonic(), _wall_ms()))

    async def _write_loop(self, link: _Link) -> None:
        while True:
            buffers = await link.queue.get()
            if buffers is None:
                return
            link.writer.writelines(buffers)
            self.frames_out += 1
            self.bytes_out += sum(len(b) for b in buffers)
            await link.writer.drain()

    def _events(self, link: _Link, events: list[object]) -> None:
        link.flush_machine()
        for event in events:
            if isinstance(event, HandshakeDone):
                self._opened(link, event.result.peer_id)
            elif isinstance(event, MessageReceived):
                peer = link.conn.peer_id
                if peer is not None and self._by_peer.get(peer) is link:
                    self.on_message(peer, event.envelope)
            elif isinstance(event, ConnectionLost):
                self._lost(link, event)

    def _opened(self, link: _Link, peer: PeerId) -> None:
        existing = self._by_peer.get(peer)
        if existing is not None and existing is not link:
            # Both dialled: keep the connection dialled by the lower peer id (the same choice
            # on both sides), close the other.
            def dialler(lk: _Link) -> tuple[bytes, bytes]:
                result = lk.conn.result
                nonces = (result.local_nonce, result.peer_nonce) if result else (b"", b"")
                if lk.outbound:
                    return self.me.digest, nonces[0]
                return peer.digest, nonces[1]

            # The dialler's id, then the dialler's handshake nonce: both sides see the same.
            keep_new = dialler(link) < dialler(existing)
            loser = existing if keep_new else link
            loser.conn.close(ErrorCode.NO_ERROR, "duplicate connection", _wall_ms())
            loser.flush_machine()
            loser.lost = ConnectionLost(0, "duplicate connection", False)
            with contextlib.suppress(asyncio.QueueFull):
                loser.queue.put_nowait(None)
            if not keep_new:
                if not link.opened.done():
                    link.opened.set_result(peer)
                return
        self._by_peer[peer] = link
        if not link.opened.done():
            link.opened.set_result(peer)
        log.info(
            "[%s] connected to %s (%s, %s)",
            self.me.short(),
            peer.short(),
            link.addr,
            "outbound" if link.outbound else "inbound",
        )
        if existing is None:
            result = link.conn.result
            self.on_open(peer, result.capabilities if result else ())

    def _lost(self, link: _Link, lost: ConnectionLost) -> None:
        if link.lost is None:
            link.lost = lost
        peer = link.conn.peer_id
        if peer is not None and self._by_peer.get(peer) is link:
            del self._by_peer[peer]
            level = logging.INFO if lost.code == ErrorCode.NO_ERROR else logging.WARNING
            log.log(
                level,
                "[%s] connection to %s (%s) ended: %s",
                self.me.short(),
                peer.short(),
                link.addr,
                lost.describe(),
            )
            self.on_close(peer, lost)
        elif peer is None and lost.code != ErrorCode.NO_ERROR:
            log.warning(
                "[%s] handshake with %s failed: %s", self.me.short(), link.addr, lost.describe()
            )

    # -- sending ----------------------------------------------------------------------------
    def send(self, peer: PeerId, message: Message) -> bool:
        """Queue ``message`` for ``peer``; False if not connected. A peer whose queue is full
        (it stopped reading) is disconnected with OVERLOADED."""
        link = self._by_peer.get(peer)
        if link is None or link.lost is not None or link.conn.state is not ConnectionState.OPEN:
            return False
        if not link.push(link.conn.send(message, _wall_ms())):
            log.warning(
                "[%s] %s is not reading (%d frames queued); disconnecting",
                self.me.short(),
                peer.short(),
                MAX_QUEUED_FRAMES,
            )
            link.conn.close(ErrorCode.OVERLOADED, "send queue full", _wall_ms())
            self._lost(link, ConnectionLost(int(ErrorCode.OVERLOADED), "send queue full", False))
            link.writer.close()
            return False
        return True

    def close_peer(self, peer: PeerId, code: ErrorCode, reason: str) -> None:
        """Close the connection to ``peer`` with a coded Close frame."""
        link = self._by_peer.get(peer)
        if link is None:
            return
        link.conn.close(code, reason, _wall_ms())
        link.flush_machine()
        self._lost(link, ConnectionLost(int(code), reason, False, clean=True))
        with contextlib.suppress(asyncio.QueueFull):
            link.queue.put_nowait(None)

    def is_outbound(self, peer: PeerId) -> bool:
        """Whether we dialled the connection to ``peer``."""
        link = self._by_peer.get(peer)
        return link is not None and link.outbound

    def connected(self) -> list[PeerId]:
        return sorted(self._by_peer, key=lambda p: p.digest)

    def link_info(self) -> list[LinkInfo]:
        now = time.monotonic()
        return [
            LinkInfo(
                peer,
                link.addr,
                link.outbound,
                (link.conn.rtt_s or 0.0) * 1000,
                int((now - link.conn.last_received) * 1000),
            )
            for peer, link in sorted(self._by_peer.items(), key=lambda kv: kv[0].digest)
        ]
