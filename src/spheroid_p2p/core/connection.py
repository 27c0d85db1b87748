"""One peer connection as a sans-I/O state machine (spec: 01, 03, 04 §4.4, 06).

Theory of operation
-------------------
The h11/aioquic shape: bytes in through :meth:`receive_data` (and :meth:`eof`), events out as
its return value, frames to write collected by :meth:`take_outgoing`, one timer exposed by
:meth:`get_timer` and served by :meth:`handle_timer`. Every input takes ``now`` (monotonic
seconds) and ``wall_ms`` (wall clock, only for envelope timestamps and the skew bound).

States::

    HANDSHAKE --handshake done--> OPEN --Close / error / timeout / eof--> CLOSED
        \\______________________ error / timeout / eof _______________/

It owns: the frame decoder, the handshake (06), the replay guard (04 §4.4), keep-alive pings
and the idle timeout (03 §3.5). After the handshake every frame must be signed by the key the
handshake authenticated. Any ``RemoteProtocolError`` queues a ``Close`` with its code and ends
in CLOSED with a :class:`ConnectionLost` event; unknown message types are dropped and counted,
as errors.md allows.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from spheroid_p2p.core.freshness import SequenceGuard
from spheroid_p2p.core.handshake import Handshake, HandshakeResult
from spheroid_p2p.core.session import Sealer, ephemeral_public, session_keys
from spheroid_p2p.errors import ErrorCode, LocalProtocolError, RemoteProtocolError, code_name
from spheroid_p2p.params import HANDSHAKE_TIMEOUT_S, MAX_CLOCK_SKEW_MS, SUPPORTED_VERSIONS
from spheroid_p2p.wire.codec import Envelope, decode_frame, encode_frame
from spheroid_p2p.wire.control import Close, Hello, HelloAck, Ping, Pong
from spheroid_p2p.wire.framing import BodyPool, Buffer, FrameDecoder
from spheroid_p2p.wire.message import Message, MessageType
from spheroid_p2p.wire.signing import KeyPair, PeerId

__all__ = [
    "ConnectionLost",
    "ConnectionParams",
    "ConnectionState",
    "Event",
    "FrameSigner",
    "HandshakeDone",
    "MessageReceived",
    "PeerConnection",
]


#: Ping interval of a connection kept hot (:meth:`PeerConnection.keep_hot`): below any TCP
#: retransmission timeout (at least 200 ms on Linux), so the connection never counts as idle.
HOT_PING_S = 0.1


@dataclass(frozen=True)
class ConnectionParams:
    """Per-connection timers (they do not affect interoperability)."""

    handshake_timeout_s: float = HANDSHAKE_TIMEOUT_S
    ping_interval_s: float = 5.0
    idle_timeout_s: float = 20.0
    max_skew_ms: int = MAX_CLOCK_SKEW_MS
    #: Hash tensor chunks while decoding (True), or leave that to the receiver, which then
    #: runs ``wire.codec.verify_chunk`` itself (off the event loop) before using a chunk.
    verify_chunks: bool = True


class FrameSigner:
    """A node's key and its single, strictly increasing frame counter (04 §4.4)."""

    def __init__(self, key: KeyPair, first_seq: int) -> None:
        self.key = key
        self._seq = first_seq

    def take_seq(self) -> int:
        """The next sequence number (every frame this node signs takes one)."""
        self._seq += 1
        return self._seq

    def encode(self, message: Message, wall_ms: int) -> list[Buffer]:
        return encode_frame(self.key, message, seq=self.take_seq(), timestamp_ms=wall_ms)


#: What a peer may send before the handshake completes (03 §3.4 step 7a).
_HANDSHAKE_TYPES = frozenset(
    {int(MessageType.HELLO), int(MessageType.HELLO_ACK), int(MessageType.CLOSE)}
)


class ConnectionState(enum.Enum):
    HANDSHAKE = "handshake"
    OPEN = "open"
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class HandshakeDone:
    result: HandshakeResult


@dataclass(frozen=True, slots=True)
class MessageReceived:
    envelope: Envelope
    #: bytes of the frame's body as it was decoded (after decryption)
    size: int = 0

    @property
    def message(self) -> Message:
        return self.envelope.message


@dataclass(frozen=True, slots=True)
class ConnectionLost:
    """The connection is over. ``by_peer``: the peer closed it (its code), else we did."""

    code: int
    reason: str
    by_peer: bool
    #: True when the peer said goodbye with a Close frame (so it was alive and chose to go).
    clean: bool = False

    def describe(self) -> str:
        if self.by_peer and not self.clean and self.code == 0:
            # no Close frame: a crash, kill -9, a reset or a dead network, not a goodbye
            return f"lost without a goodbye (the peer crashed or the network failed): {self.reason}"
        who = "peer closed the connection" if self.by_peer else "closed the connection"
        return f"{who}: {code_name(self.code)}: {self.reason}"


Event = HandshakeDone | MessageReceived | ConnectionLost


class PeerConnection:
    """Protocol state of one TCP connection to one peer."""

    def __init__(
        self,
        signer: FrameSigner,
        *,
        now: float,
        nonce: bytes,
        params: ConnectionParams | None = None,
        capabilities: tuple[str, ...] = (),
        listen_addrs: tuple[str, ...] = (),
        agent: str = "",
        versions: tuple[int, ...] = SUPPORTED_VERSIONS,
        expected_peer: PeerId | None = None,
        pool: BodyPool | None = None,
        session_key: bytes | None = None,
    ) -> None:
        """``session_key``: 32 random bytes, this connection's X25519 private key: the
        machine offers an encrypted session (06 §6.7). None: it offers none (plaintext)."""
        self.params = params or ConnectionParams()
        self._session_key = session_key
        self._tx: Sealer | None = None
        self._rx: Sealer | None = None
        self._next_rx: Sealer | None = None  # armed at our HELLO_ACK, used after the peer's
        self.state = ConnectionState.HANDSHAKE
        self._signer = signer
        self._decoder = FrameDecoder(pool=pool)
        self._guard = SequenceGuard(self.params.max_skew_ms)
        self._handshake = Handshake(
            local_id=signer.key.peer_id,
            nonce=nonce,
            now=now,
            capabilities=capabilities,
            versions=versions,
            listen_addrs=listen_addrs,
            agent=agent,
            timeout_s=self.params.handshake_timeout_s,
            expected_peer=expected_peer,
            eph=ephemeral_public(session_key) if session_key is not None else b"",
        )
        self._out: list[Buffer] = []
        self.result: HandshakeResult | None = None
        self.last_received = now
        self._next_ping = now + self.params.ping_interval_s
        self._hot_until = 0.0
        self._ping_sent: dict[int, float] = {}
        self._ping_counter = 0
        self.rtt_s: float | None = None
        self.unknown_dropped = 0
        self.bytes_in = 0
        self.frames_in = 0
        self._discard = bytearray(4096)

    @property
    def peer_id(self) -> PeerId | None:
        return self.result.peer_id if self.result else None

    # -- output -----------------------------------------------------------------------------
    def start(self, wall_ms: int) -> None:
        """Queue our Hello; call once, right after the TCP connection opens."""
        for message in self._handshake.start():
            self._queue(message, wall_ms)

    @property
    def encrypted(self) -> bool:
        """Whether frames in both directions are sealed (both sides offered a session)."""
        return self._tx is not None and self._rx is not None

    def send(self, message: Message, wall_ms: int) -> list[Buffer]:
        """Encode ``message`` for the peer (only once OPEN). Returns the frame's buffers."""
        if self.state is not ConnectionState.OPEN:
            raise LocalProtocolError(
                f"cannot send {type(message).__name__} in state {self.state.value}"
            )
        return self._seal(self._signer.encode(message, wall_ms))

    def _seal(self, frame: list[Buffer]) -> list[Buffer]:
        return self._tx.seal(frame) if self._tx is not None else frame

    def close(self, code: ErrorCode, reason: str, wall_ms: int) -> None:
        """Queue a Close frame and move to CLOSED (no-op if already closed)."""
        if self.state is ConnectionState.CLOSED:
            return
        self._queue(Close(code=int(code), reason=reason[:200]), wall_ms)
        self.state = ConnectionState.CLOSED

    def take_outgoing(self) -> list[Buffer]:
        """Frames queued by the state machine itself (handshake, pong, ping, close)."""
        out, self._out = self._out, []
        return out

    def _queue(self, message: Message, wall_ms: int) -> None:
        self._out.extend(self._seal(self._signer.encode(message, wall_ms)))

    # -- input ------------------------------------------------------------------------------
    def receive_data(self, data: Buffer, now: float, wall_ms: int) -> list[Event]:
        """Process received bytes; returns the events they produced."""
        if self.state is ConnectionState.CLOSED:
            return []
        self.bytes_in += len(data)
        try:
            self._decoder.feed(data)
        except RemoteProtocolError as exc:
            return [self._fail(exc, wall_ms)]
        return self._drain_frames(now, wall_ms)

    def get_buffer(self) -> memoryview:
        """Where the transport should put the next received bytes (``BufferedProtocol``):
        straight into a large frame body in progress, else a scratch buffer. After the
        connection closed, a throwaway buffer (what arrives then is ignored)."""
        if self.state is ConnectionState.CLOSED or self._decoder.broken:
            return memoryview(self._discard)
        return self._decoder.get_buffer()

    def buffer_updated(self, nbytes: int, now: float, wall_ms: int) -> list[Event]:
        """``nbytes`` were written into the view from :meth:`get_buffer`; returns events."""
        if self.state is ConnectionState.CLOSED or self._decoder.broken:
            return []
        self.bytes_in += nbytes
        try:
            self._decoder.buffer_updated(nbytes)
        except RemoteProtocolError as exc:
            return [self._fail(exc, wall_ms)]
        return self._drain_frames(now, wall_ms)

    def _drain_frames(self, now: float, wall_ms: int) -> list[Event]:
        events: list[Event] = []
        try:
            while self.state is not ConnectionState.CLOSED:
                body = self._decoder.next_frame()
                if body is None:
                    break
                self.frames_in += 1
                self.last_received = now
                if self._rx is not None:
                    body = self._rx.open(body)
                self._on_frame(body, now, wall_ms, events)
        except RemoteProtocolError as exc:
            events.append(self._fail(exc, wall_ms))
        return events

    def eof(self, now: float, wall_ms: int) -> list[Event]:
        """The peer closed its side of the TCP connection."""
        if self.state is ConnectionState.CLOSED:
            return []
        try:
            self._decoder.eof()
        except RemoteProtocolError as exc:
            return [self._fail(exc, wall_ms)]
        self.state = ConnectionState.CLOSED
        return [ConnectionLost(int(ErrorCode.NO_ERROR), "peer closed the TCP connection", True)]

    def _on_frame(self, body: Buffer, now: float, wall_ms: int, events: list[Event]) -> None:
        only = _HANDSHAKE_TYPES if self.state is ConnectionState.HANDSHAKE else None
        try:
            envelope = decode_frame(body, verify_chunks=self.params.verify_chunks, only=only)
        except RemoteProtocolError as exc:
            if exc.code is ErrorCode.UNKNOWN_MESSAGE_TYPE and self.state is ConnectionState.OPEN:
                self.unknown_dropped += 1
                return
            raise
        if self.result is not None and envelope.sender_key != self.result.peer_key:
            raise RemoteProtocolError(
                "frame signed by a key other than the connection's", ErrorCode.BAD_SIGNATURE
            )
        self._guard.check(envelope, wall_ms)
        message = envelope.message
        if isinstance(message, Close):
            in_handshake = self.result is None
            self.state = ConnectionState.CLOSED
            if in_handshake:
                # The handshake turns the peer's Close into its error (e.g. version mismatch).
                try:
                    self._handshake.handle(envelope, now)
                except RemoteProtocolError as exc:
                    events.append(ConnectionLost(int(exc.code), str(exc.args[0]), True))
                    return
            events.append(ConnectionLost(message.code, message.reason, True, clean=True))
            return
        if self.state is ConnectionState.HANDSHAKE:
            replies = self._handshake.handle(envelope, now)
            for reply in replies:
                self._queue(reply, wall_ms)
            hello = self._handshake.peer_hello
            if replies and hello is not None and self._session_key is not None and hello.eph:
                # our HELLO_ACK was the last plaintext frame we send; the peer's will be the
                # last it sends (§6.7)
                send, receive = session_keys(
                    self._session_key,
                    hello.eph,
                    local_id=self._signer.key.peer_id.digest,
                    peer_id=envelope.sender.digest,
                    local_nonce=self._handshake.nonce,
                    peer_nonce=hello.nonce,
                )
                self._tx, self._next_rx = Sealer(send), Sealer(receive)
            if self._handshake.result is not None:
                self.result = self._handshake.result
                self.state = ConnectionState.OPEN
                self._rx = self._next_rx
                events.append(HandshakeDone(self.result))
            return
        if isinstance(message, Hello | HelloAck):
            raise RemoteProtocolError(
                "handshake message after the handshake", ErrorCode.PROTOCOL_VIOLATION
            )
        if isinstance(message, Ping):
            self._queue(Pong(nonce=message.nonce), wall_ms)
            return
        if isinstance(message, Pong):
            sent = self._ping_sent.pop(message.nonce, None)
            if sent is not None:
                self.rtt_s = now - sent
            return
        events.append(MessageReceived(envelope, len(body)))

    def _fail(self, exc: RemoteProtocolError, wall_ms: int) -> ConnectionLost:
        if self.state is not ConnectionState.CLOSED and exc.code is not ErrorCode.FRAME_TRUNCATED:
            self._queue(Close(code=int(exc.code), reason=str(exc.args[0])[:200]), wall_ms)
        self.state = ConnectionState.CLOSED
        return ConnectionLost(int(exc.code), str(exc.args[0]), False)

    # -- timers -----------------------------------------------------------------------------
    def get_timer(self) -> float | None:
        """The next time :meth:`handle_timer` must run, or None when closed."""
        if self.state is ConnectionState.CLOSED:
            return None
        if self.state is ConnectionState.HANDSHAKE:
            return self._handshake.get_timer()
        return min(self._next_ping, self.last_received + self.params.idle_timeout_s)

    def handle_timer(self, now: float, wall_ms: int) -> list[Event]:
        """Handshake deadline, keep-alive ping, idle timeout."""
        if self.state is ConnectionState.CLOSED:
            return []
        if self.state is ConnectionState.HANDSHAKE:
            try:
                self._handshake.handle_timer(now)
            except RemoteProtocolError as exc:
                return [self._fail(exc, wall_ms)]
            return []
        if now >= self.last_received + self.params.idle_timeout_s:
            idle = now - self.last_received
            return [
                self._fail(
                    RemoteProtocolError(f"nothing received for {idle:.1f} s", ErrorCode.TIMEOUT),
                    wall_ms,
                )
            ]
        if now >= self._next_ping:
            self._ping_counter += 1
            self._ping_sent = {self._ping_counter: now}  # one outstanding ping is enough
            self._queue(Ping(nonce=self._ping_counter), wall_ms)
            hot = now < self._hot_until
            self._next_ping = now + (HOT_PING_S if hot else self.params.ping_interval_s)
        return []

    def keep_hot(self, now: float, seconds: float) -> None:
        """Ping every ``HOT_PING_S`` for the next ``seconds``. A TCP connection left idle
        for longer than its retransmission timeout falls back to slow start (Linux's
        ``tcp_slow_start_after_idle``), so a traversal's burst over a long path would again
        need several round trips; a small frame now and then keeps the window open while
        traversals flow. The caller marks a connection hot each time it sends one."""
        self._hot_until = max(self._hot_until, now + seconds)
        self._next_ping = min(self._next_ping, now + HOT_PING_S)
