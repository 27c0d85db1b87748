"""The connections of one node, by peer id (01, 06): listening, dialling, sending.

:class:`PeerManager` owns the listener and outbound dials (errors say which address failed
and why), one :class:`~spheroid_p2p.net.link.Link` per TCP connection, and the registry of open
connections by peer id with the rule that keeps exactly one connection per pair of peers when
both dial at once (the one dialled by the lower peer id). It applies the connection-level
policies of security.md §S.4: caps on connections and on pending handshakes (extra inbound
connections are refused with ``OVERLOADED``), throttled reads of a peer past its budget, and a
bound on unsent bytes. What a message means is decided above it (``node``).

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
import time
from collections.abc import Callable

from spheroid_p2p.core.connection import (
    ConnectionLost,
    ConnectionParams,
    ConnectionState,
    FrameSigner,
    HandshakeDone,
    MessageReceived,
    PeerConnection,
)
from spheroid_p2p.errors import ErrorCode, code_name
from spheroid_p2p.net.link import THROTTLED_READ_S, Link, LinkInfo
from spheroid_p2p.net.sockets import (
    DialError,
    connected_socket,
    parse_addr,
    set_congestion,
    wall_ms,
)
from spheroid_p2p.params import SUPPORTED_VERSIONS
from spheroid_p2p.wire.codec import Envelope
from spheroid_p2p.wire.framing import BodyPool
from spheroid_p2p.wire.message import Message, MessageType
from spheroid_p2p.wire.signing import PeerId

__all__ = ["PeerManager"]

log = logging.getLogger(__name__)

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


class Traffic:
    """Frames and bytes by message type, each way, and connections we closed by error code.
    Keyed by ``MessageType`` (hashing an int per frame; names are made when read)."""

    def __init__(self) -> None:
        self.frames_in: dict[MessageType, int] = {}
        self.bytes_in: dict[MessageType, int] = {}
        self.frames_out: dict[MessageType, int] = {}
        self.bytes_out: dict[MessageType, int] = {}
        #: connections ended on our side because of what the peer sent, by error code name
        self.rejected: dict[str, int] = {}

    def received(self, kind: MessageType, size: int) -> None:
        self.frames_in[kind] = self.frames_in.get(kind, 0) + 1
        self.bytes_in[kind] = self.bytes_in.get(kind, 0) + size

    def sent(self, kind: MessageType, size: int) -> None:
        self.frames_out[kind] = self.frames_out.get(kind, 0) + 1
        self.bytes_out[kind] = self.bytes_out.get(kind, 0) + size

    def reject(self, code: str) -> None:
        self.rejected[code] = self.rejected.get(code, 0) + 1


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
        self.links: set[Link] = set()
        self._by_peer: dict[PeerId, Link] = {}
        self._server: asyncio.Server | None = None
        self.bytes_out = 0
        self.frames_out = 0
        #: frames and bytes by message type name, each way; connections we ended by error
        #: code (the metrics read these; plain counters, so the net layer needs nothing else)
        self.traffic = Traffic()
        #: inbound connections refused by the caps, and reads paused by throttle()
        self.refused = 0
        self.throttles = 0
        #: receive buffers for large frames, shared by this node's connections
        self.pool = BodyPool()

    @property
    def me(self) -> PeerId:
        return self.signer.key.peer_id

    def admit(self, host: str) -> str | None:
        """Why a new inbound connection from ``host`` is refused, or None (security.md §S.4)."""
        inbound = [lk for lk in self.links if not lk.outbound]
        pending = [lk for lk in inbound if lk.conn.state is ConnectionState.HANDSHAKE]
        if len(self.links) >= self.max_connections:
            return f"{len(self.links)} connections open (the cap)"
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
        self._server = await loop.create_server(lambda: Link(self, None, False), host, port)
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
        links = list(self.links)
        for link in links:
            link.conn.close(code, reason, wall_ms())
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
    def new_machine(self, expected: PeerId | None) -> PeerConnection:
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
        link = Link(self, expected, True)
        link.addr = addr
        try:
            async with asyncio.timeout(self.dial_timeout_s):
                if self.tcp_congestion:
                    sock = await connected_socket(host, port, self.tcp_congestion)
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

    def link_events(self, link: Link, events: list[object]) -> None:
        link.flush_machine()
        for event in events:
            if isinstance(event, HandshakeDone):
                self.link_opened(link, event.result.peer_id)
            elif isinstance(event, MessageReceived):
                peer = link.conn.peer_id
                self.traffic.received(event.envelope.message.TYPE, event.size)
                if peer is not None and self._by_peer.get(peer) is link:
                    self.on_message(peer, event.envelope)
            elif isinstance(event, ConnectionLost):
                self.link_lost(link, event)

    def link_opened(self, link: Link, peer: PeerId) -> None:
        existing = self._by_peer.get(peer)
        if existing is not None and existing is not link:
            # Both dialled: keep the connection dialled by the lower peer id (the same choice
            # on both sides), close the other.
            def dialler(lk: Link) -> tuple[bytes, bytes]:
                result = lk.conn.result
                nonces = (result.local_nonce, result.peer_nonce) if result else (b"", b"")
                if lk.outbound:
                    return self.me.digest, nonces[0]
                return peer.digest, nonces[1]

            # The dialler's id, then the dialler's handshake nonce: both sides see the same.
            keep_new = dialler(link) < dialler(existing)
            loser = existing if keep_new else link
            loser.conn.close(ErrorCode.NO_ERROR, "duplicate connection", wall_ms())
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

    def link_lost(self, link: Link, lost: ConnectionLost) -> None:
        if link.lost is None:
            link.lost = lost
            if lost.code and not lost.by_peer:
                self.traffic.reject(code_name(lost.code))
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
    def _open_link(self, peer: PeerId) -> Link | None:
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
            link.conn.close(ErrorCode.OVERLOADED, "peer not reading", wall_ms())
            self.link_lost(
                link, ConnectionLost(int(ErrorCode.OVERLOADED), "peer not reading", False)
            )
            if link.transport is not None:
                link.transport.abort()
            return False
        buffers = link.conn.send(message, wall_ms())
        link._write(buffers)
        self.traffic.sent(message.TYPE, sum(len(b) for b in buffers))
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
            if not link.held and link.transport is not None and not link.transport.is_closing():
                link.transport.resume_reading()

        asyncio.get_running_loop().call_later(seconds, resume)

    def hold(self, peer: PeerId, held: bool) -> None:
        """Stop reading from ``peer`` (``held``) while what it sent waits to be processed, or
        read again: flow control, TCP's window slows the sender down (its chunks of a shard
        stream wait in the kernel, not in our memory)."""
        link = self._by_peer.get(peer)
        if link is None or link.transport is None or link.held == held:
            return
        link.held = held
        if held:
            link.transport.pause_reading()
        elif not link.throttled and not link.transport.is_closing():
            link.transport.resume_reading()

    def close_peer(self, peer: PeerId, code: ErrorCode, reason: str) -> None:
        """Close the connection to ``peer`` with a coded Close frame."""
        link = self._by_peer.get(peer)
        if link is None:
            return
        link.conn.close(code, reason, wall_ms())
        link.flush_machine()
        self.link_lost(link, ConnectionLost(int(code), reason, False, clean=True))
        link.close_transport()

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
