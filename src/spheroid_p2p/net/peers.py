"""Thin asyncio glue: TCP connections driven by :class:`PeerConnection` state machines.

This module moves bytes and arms timers; it decides nothing about the protocol. It owns:

* the listener and outbound dials (with errors that say which address failed and why);
* one :class:`_Link` per TCP connection: an ``asyncio.BufferedProtocol`` whose transport
  receives straight into the state machine's frame buffer (a megabyte tensor chunk is never
  copied on its way in), the machine's one timer, and the transport's write side;
* the registry of open connections by peer id, with the rule that keeps exactly one
  connection per pair of peers when both dial at once (the one dialled by the lower peer id);
* a cap on connections (extra inbound connections are refused with ``OVERLOADED``).

Writing (01 §1.4): control messages (:meth:`PeerManager.send`) go to the transport at once;
bulk messages (:meth:`PeerManager.send_bulk`, tensor chunks) wait until the transport holds
less than ``WRITE_HIGH_BYTES`` unsent, so a control frame queues behind at most about one
chunk. A connection holding more than ``MAX_UNSENT_BYTES`` unsent has a peer that stopped
reading; it is closed with ``OVERLOADED``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

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
from spheroid_p2p.params import SUPPORTED_VERSIONS, TENSOR_CHUNK_BYTES
from spheroid_p2p.wire.addr import BadAddressError
from spheroid_p2p.wire.addr import parse_addr as wire_parse_addr
from spheroid_p2p.wire.codec import Envelope
from spheroid_p2p.wire.control import Close
from spheroid_p2p.wire.framing import BodyPool, Buffer
from spheroid_p2p.wire.message import Message
from spheroid_p2p.wire.signing import PeerId

__all__ = [
    "DialError",
    "LinkInfo",
    "PeerManager",
    "available_congestion",
    "parse_addr",
    "set_congestion",
    "source_address",
]

log = logging.getLogger(__name__)

#: Bulk senders wait while the transport holds more than this unsent (about one chunk) ...
WRITE_HIGH_BYTES = 2 * TENSOR_CHUNK_BYTES
#: ... until it is back under this.
WRITE_LOW_BYTES = TENSOR_CHUNK_BYTES
#: A connection with this much unsent has a peer that is not reading: closed (OVERLOADED).
MAX_UNSENT_BYTES = 64 * 1024 * 1024
#: Inbound sockets still in their handshake, in all and from one source address: more are
#: refused at once (OVERLOADED), so sockets that never handshake (slow loris) cannot take
#: the connection slots honest peers need (security.md §S.4). The handshake deadline
#: (HANDSHAKE_TIMEOUT_S) frees a slot held by a silent socket.
MAX_PENDING_HANDSHAKES = 32
MAX_PENDING_PER_ADDRESS = 4
#: Inbound connections from one source address (handshaken or not).
MAX_CONNECTIONS_PER_ADDRESS = 32
#: After a peer was throttled (it exceeded a rate limit), its connection is read this many
#: bytes at a time for THROTTLED_READ_S: each resume then decodes a few of its frames, not a
#: socket buffer full of them in one go (which would stall everyone else).
THROTTLED_READ_BYTES = 4096
THROTTLED_READ_S = 5.0


class DialError(TransportError):
    """A dial failed; the message names the address and the reason, and ``code`` the error
    code the peer refused the handshake with (None: no answer, or no handshake at all)."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


def parse_addr(addr: str, allow_any_port: bool = False) -> tuple[str, int]:
    """``host:port`` -> (host, port) by the grammar of 02 §2.4 (``wire.addr``); raises
    ``ValueError`` with the offending text. Port 0 ("any free port") is only valid where we
    listen (``allow_any_port``)."""
    try:
        parsed = wire_parse_addr(addr, allow_any_port)
    except BadAddressError as exc:
        raise ValueError(str(exc.args[0])) from None
    return parsed.host, parsed.port


def available_congestion() -> tuple[str, ...]:
    """The TCP congestion controls this host offers (empty where it cannot say)."""
    try:
        with open("/proc/sys/net/ipv4/tcp_available_congestion_control") as f:
            return tuple(f.read().split())
    except OSError:
        return ()


def set_congestion(sock: socket.socket | None, name: str) -> bool:
    """Set ``TCP_CONGESTION`` on ``sock``; False (and logged once) where the host refuses."""
    option = getattr(socket, "TCP_CONGESTION", None)
    if sock is None or option is None:
        return False
    try:
        sock.setsockopt(socket.IPPROTO_TCP, option, name.encode())
    except OSError as exc:
        if name not in _refused_congestion:
            _refused_congestion.add(name)
            log.warning("cannot set TCP congestion control %r: %s", name, exc.strerror or exc)
        return False
    return True


_refused_congestion: set[str] = set()


async def _connected_socket(host: str, port: int, congestion: str) -> socket.socket:
    """A TCP socket connected to ``host:port`` with ``congestion`` set *before* it connects:
    set afterwards, a switch away from BBR keeps BBR's pacing (the kernel leaves the socket
    marked as needing it), and every burst is paced at a rate meant for BBR."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setblocking(False)
        set_congestion(sock, congestion)
        await loop.sock_connect(sock, address)
    except BaseException:
        sock.close()
        raise
    return sock


def source_address(addr: str) -> str:
    """The local address this host would send from to reach ``addr`` (``host:port``): the
    interface a peer there can dial us back on. Found by connecting a UDP socket, which sends
    nothing; "127.0.0.1" where there is no route."""
    host, port = parse_addr(addr)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.connect((host, port))
            return str(probe.getsockname()[0])
    except OSError:
        return "127.0.0.1"


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


class _Link(asyncio.BufferedProtocol):
    """One TCP connection: its state machine, transport and timer."""

    def __init__(self, manager: PeerManager, expected: PeerId | None, outbound: bool) -> None:
        self.manager = manager
        self.conn = manager._new_machine(expected)
        self.outbound = outbound
        self.addr = "?"
        self.host = "?"  # the source address of an inbound connection
        self.throttled = False
        self.small_reads_until = 0.0
        self.transport: asyncio.Transport | None = None
        loop = asyncio.get_running_loop()
        self.opened: asyncio.Future[PeerId] = loop.create_future()
        self.closed = asyncio.Event()
        self.writable = asyncio.Event()
        self.writable.set()
        self.lost: ConnectionLost | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._refused = False

    # -- asyncio.BufferedProtocol --------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport, but have its methods
        transport = cast(asyncio.Transport, transport)
        self.transport = transport
        peer = transport.get_extra_info("peername")
        if not self.outbound:
            self.addr = f"{peer[0]}:{peer[1]}" if peer else "?"
            self.host = str(peer[0]) if peer else "?"
        transport.set_write_buffer_limits(high=WRITE_HIGH_BYTES, low=WRITE_LOW_BYTES)
        manager = self.manager
        why = None if self.outbound else manager._admit(self.host)
        if why is not None:
            manager.refused += 1
            log.log(
                logging.WARNING if manager.refused % 100 == 1 else logging.DEBUG,
                "refusing connection from %s: %s (%d refused so far)",
                self.addr,
                why,
                manager.refused,
            )
            self._refused = True
            frames = manager.signer.encode(
                Close(code=int(ErrorCode.OVERLOADED), reason=why), _wall_ms()
            )
            self._write(frames)
            transport.close()
            return
        manager._links.add(self)
        self.conn.start(_wall_ms())
        self.flush_machine()
        self._arm_timer()

    def get_buffer(self, sizehint: int) -> memoryview:
        buf = self.conn.get_buffer()
        if self.small_reads_until and time.monotonic() < self.small_reads_until:
            return buf[:THROTTLED_READ_BYTES]  # a peer that flooded us: small bites
        return buf

    def buffer_updated(self, nbytes: int) -> None:
        self._handle(self.conn.buffer_updated(nbytes, time.monotonic(), _wall_ms()))

    def eof_received(self) -> bool:
        self._handle(self.conn.eof(time.monotonic(), _wall_ms()))
        return False  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        if self._refused:
            return
        if exc is not None:
            lost = ConnectionLost(int(ErrorCode.NO_ERROR), f"socket error: {exc}", True)
        else:
            lost = ConnectionLost(int(ErrorCode.NO_ERROR), "peer closed the TCP connection", True)
        self.manager._lost(self, lost)
        if self._timer is not None:
            self._timer.cancel()
        self.manager._links.discard(self)
        self.writable.set()  # wake bulk senders: they see the link is gone
        if not self.opened.done():
            lost = self.lost or lost
            verb = "rejected" if lost.code else "closed"
            self.opened.set_exception(
                DialError(
                    f"dial {self.addr} failed: handshake {verb}: {lost.describe()}",
                    lost.code if lost.code else None,
                )
            )
            self.opened.exception()  # mark retrieved; the dialler re-raises it
        self.closed.set()

    def pause_writing(self) -> None:
        self.writable.clear()

    def resume_writing(self) -> None:
        self.writable.set()

    # -- helpers -------------------------------------------------------------------------------
    def _handle(self, events: list[object]) -> None:
        try:
            self.manager._events(self, events)
        except Exception:  # a bug: close this connection only, never the whole node
            log.exception(
                "[%s] internal error on the connection with %s", self.manager.me.short(), self.addr
            )
            self.conn.close(ErrorCode.INTERNAL_ERROR, "internal error", _wall_ms())
            self.flush_machine()
            self.manager._lost(
                self, ConnectionLost(int(ErrorCode.INTERNAL_ERROR), "internal error", False)
            )
        if self.conn.state is ConnectionState.CLOSED:
            self.close_transport()
        else:
            self._arm_timer()

    def _arm_timer(self) -> None:
        """Keep one timer at or before the machine's deadline (re-armed lazily when it fires
        early, so a busy connection does not reschedule it on every read)."""
        deadline = self.conn.get_timer()
        if deadline is None:
            return
        if self._timer is not None and self._timer_at <= deadline:
            return
        if self._timer is not None:
            self._timer.cancel()
        loop = asyncio.get_running_loop()
        self._timer_at = deadline
        self._timer = loop.call_at(loop.time() + max(0.0, deadline - time.monotonic()), self._fire)

    def _fire(self) -> None:
        self._timer = None
        deadline = self.conn.get_timer()
        if deadline is None:
            return
        now = time.monotonic()
        if now < deadline:
            self._arm_timer()
            return
        self._handle(self.conn.handle_timer(now, _wall_ms()))

    def _write(self, buffers: list[Buffer]) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        for buf in buffers:  # one write per buffer: the payload is never joined (copied)
            transport.write(buf)
        self.manager.frames_out += 1
        self.manager.bytes_out += sum(len(b) for b in buffers)

    def flush_machine(self) -> None:
        out = self.conn.take_outgoing()
        if out:
            self._write(out)

    def unsent(self) -> int:
        return self.transport.get_write_buffer_size() if self.transport is not None else 0

    def close_transport(self) -> None:
        """Close once what is queued (a Close frame included) is written."""
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()


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
        encrypt: bool = True,
        tcp_congestion: str | None = None,
    ) -> None:
        self.signer = signer
        #: TCP congestion control set on every connection (None: the host's default)
        self.tcp_congestion = tcp_congestion
        #: offer an encrypted session on every connection (06 §6.7)
        self.encrypt = encrypt
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
        self._server: asyncio.Server | None = None
        self.bytes_out = 0
        self.frames_out = 0
        #: inbound connections refused by the caps, and reads paused by throttle()
        self.refused = 0
        self.throttles = 0
        #: receive buffers for large frames, shared by this node's connections
        self.pool = BodyPool()

    @property
    def me(self) -> PeerId:
        return self.signer.key.peer_id

    def _admit(self, host: str) -> str | None:
        """Why a new inbound connection from ``host`` is refused, or None (security.md §S.4)."""
        inbound = [lk for lk in self._links if not lk.outbound]
        pending = [lk for lk in inbound if lk.conn.state is ConnectionState.HANDSHAKE]
        if len(self._links) >= self.max_connections:
            return f"{len(self._links)} connections open (the cap)"
        if len(pending) >= MAX_PENDING_HANDSHAKES:
            return f"{len(pending)} handshakes pending (the cap)"
        if sum(1 for lk in pending if lk.host == host) >= MAX_PENDING_PER_ADDRESS:
            return f"{MAX_PENDING_PER_ADDRESS} handshakes pending from {host}"
        if sum(1 for lk in inbound if lk.host == host) >= MAX_CONNECTIONS_PER_ADDRESS:
            return f"{MAX_CONNECTIONS_PER_ADDRESS} connections from {host}"
        return None

    # -- lifecycle --------------------------------------------------------------------------
    async def listen(self, host: str, port: int) -> tuple[str, int]:
        """Start accepting connections; returns the bound (host, port) (port 0 = any)."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _Link(self, None, False), host, port)
        if self.tcp_congestion:
            for sock in self._server.sockets:  # accepted connections inherit it
                set_congestion(sock, self.tcp_congestion)  # type: ignore[arg-type]
        sockname = self._server.sockets[0].getsockname()
        return sockname[0], sockname[1]

    async def close(
        self,
        code: ErrorCode = ErrorCode.NO_ERROR,
        reason: str = "shutting down",
        flush_s: float = 1.0,
    ) -> None:
        """Send Close on every connection, give the transports ``flush_s`` to drain, close all."""
        if self._server is not None:
            self._server.close()
        links = list(self._links)
        for link in links:
            link.conn.close(code, reason, _wall_ms())
            link.flush_machine()
            link.close_transport()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(flush_s):
                for link in links:
                    await link.closed.wait()
        for link in links:
            if link.transport is not None:
                link.transport.abort()

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
            pool=self.pool,
            session_key=os.urandom(32) if self.encrypt else None,
        )

    async def dial(self, addr: str, expected: PeerId | None = None) -> PeerId:
        """Connect to ``addr`` and complete the handshake; returns the peer's id.

        Raises:
            DialError: naming ``addr`` and why: refused, timed out, unreachable, or the
                handshake's error code and reason (e.g. UNSUPPORTED_VERSION).
        """
        if expected is not None and expected in self._by_peer:
            return expected
        try:
            host, port = parse_addr(addr)
        except ValueError as exc:
            raise DialError(f"dial {addr[:64]!r} failed: {exc}") from None
        loop = asyncio.get_running_loop()
        link = _Link(self, expected, True)
        link.addr = addr
        try:
            async with asyncio.timeout(self.dial_timeout_s):
                if self.tcp_congestion:
                    sock = await _connected_socket(host, port, self.tcp_congestion)
                    await loop.create_connection(lambda: link, sock=sock)
                else:
                    await loop.create_connection(lambda: link, host, port)
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
        try:
            async with asyncio.timeout(self.params.handshake_timeout_s + 1):
                return await link.opened
        except TimeoutError:
            link.close_transport()
            raise DialError(f"dial {addr} failed: handshake did not finish") from None

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
            loser.close_transport()
            if not keep_new:
                if not link.opened.done():
                    link.opened.set_result(peer)
                return
        self._by_peer[peer] = link
        if not link.opened.done():
            link.opened.set_result(peer)
        log.info(
            "[%s] connected to %s (%s, %s, %s)",
            self.me.short(),
            peer.short(),
            link.addr,
            "outbound" if link.outbound else "inbound",
            "encrypted" if link.conn.encrypted else "PLAINTEXT: the peer offered no session",
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
    def _open_link(self, peer: PeerId) -> _Link | None:
        link = self._by_peer.get(peer)
        if link is None or link.lost is not None or link.conn.state is not ConnectionState.OPEN:
            return None
        return link

    def send(self, peer: PeerId, message: Message) -> bool:
        """Write ``message`` to ``peer`` now; False if not connected. A peer with more than
        ``MAX_UNSENT_BYTES`` waiting (it stopped reading) is disconnected with OVERLOADED."""
        link = self._open_link(peer)
        if link is None:
            return False
        if link.unsent() > MAX_UNSENT_BYTES:
            log.warning(
                "[%s] %s is not reading (%d MiB unsent); disconnecting",
                self.me.short(),
                peer.short(),
                link.unsent() >> 20,
            )
            link.conn.close(ErrorCode.OVERLOADED, "peer not reading", _wall_ms())
            self._lost(link, ConnectionLost(int(ErrorCode.OVERLOADED), "peer not reading", False))
            if link.transport is not None:
                link.transport.abort()
            return False
        link._write(link.conn.send(message, _wall_ms()))
        return True

    async def send_bulk(self, peer: PeerId, message: Message) -> bool:
        """Write a bulk message (a tensor chunk) once the connection has room, so control
        messages never queue behind more than about one chunk (01 §1.4)."""
        link = self._open_link(peer)
        while link is not None and not link.writable.is_set():
            await link.writable.wait()
            link = self._open_link(peer)
        return link is not None and self.send(peer, message)

    def throttle(self, peer: PeerId, seconds: float) -> None:
        """Stop reading from ``peer`` for ``seconds`` (it exceeded a rate limit): what it
        sends meanwhile waits in the TCP buffers, so TCP's flow control slows it down and
        the node spends no more on its frames than its budget (security.md §S.4)."""
        link = self._by_peer.get(peer)
        if link is None or link.transport is None or link.throttled:
            return
        link.throttled = True
        link.small_reads_until = time.monotonic() + THROTTLED_READ_S
        link.transport.pause_reading()
        self.throttles += 1

        def resume() -> None:
            link.throttled = False
            if link.transport is not None and not link.transport.is_closing():
                link.transport.resume_reading()

        asyncio.get_running_loop().call_later(seconds, resume)

    def close_peer(self, peer: PeerId, code: ErrorCode, reason: str) -> None:
        """Close the connection to ``peer`` with a coded Close frame."""
        link = self._by_peer.get(peer)
        if link is None:
            return
        link.conn.close(code, reason, _wall_ms())
        link.flush_machine()
        self._lost(link, ConnectionLost(int(code), reason, False, clean=True))
        link.close_transport()

    def is_outbound(self, peer: PeerId) -> bool:
        """Whether we dialled the connection to ``peer``."""
        link = self._by_peer.get(peer)
        return link is not None and link.outbound

    def keep_hot(self, peer: PeerId, seconds: float) -> None:
        """Keep the connection to ``peer`` out of TCP's idle restart for ``seconds``
        (``PeerConnection.keep_hot``): the node calls it each time it forwards a traversal."""
        link = self._by_peer.get(peer)
        if link is not None and seconds > 0:
            link.conn.keep_hot(time.monotonic(), seconds)
            link._arm_timer()

    def local_host(self, peer: PeerId) -> str | None:
        """Our own address on the connection to ``peer`` (the interface that reaches it)."""
        link = self._by_peer.get(peer)
        if link is None or link.transport is None:
            return None
        sockname = link.transport.get_extra_info("sockname")
        return str(sockname[0]) if sockname else None

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
