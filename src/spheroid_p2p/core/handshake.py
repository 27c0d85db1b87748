"""The connection handshake as a sans-I/O state machine (spec: ``protocol/06-handshake.md``).

Theory of operation
-------------------
Both sides run the same machine; there is no client or server role. On start each side
sends ``Hello`` (the versions and capabilities it speaks, its listen addresses and a fresh
32-byte nonce). On the peer's ``Hello`` a side picks the highest common version, or fails
with ``UNSUPPORTED_VERSION``, and answers ``HelloAck`` echoing the peer's nonce and naming the
peer's id as recipient. Because every frame is signed, a ``HelloAck`` that echoes *our* fresh
nonce, names *us*, and is signed by the key that signed the peer's ``Hello`` proves the peer
holds that key now (not a replay). The handshake completes when both our ``Hello`` has been
acknowledged and the peer's ``Hello`` has been answered.

States::

    AWAIT_HELLO --Hello--> AWAIT_ACK --HelloAck--> DONE
          \\________________ any error, timeout, Close _________________> FAILED

Time comes in as ``now`` (monotonic seconds) and randomness as the nonce argument; this
module reads no clock and draws no random numbers.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from spheroid_p2p.errors import ErrorCode, LocalProtocolError, RemoteProtocolError, code_name
from spheroid_p2p.params import HANDSHAKE_NONCE_BYTES, HANDSHAKE_TIMEOUT_S, SUPPORTED_VERSIONS
from spheroid_p2p.wire.codec import Envelope
from spheroid_p2p.wire.control import Close, Hello, HelloAck
from spheroid_p2p.wire.message import Message
from spheroid_p2p.wire.signing import PeerId

__all__ = ["Handshake", "HandshakeResult", "HandshakeState", "choose_version"]


class HandshakeState(enum.Enum):
    AWAIT_HELLO = "await-hello"
    AWAIT_ACK = "await-ack"
    DONE = "done"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class HandshakeResult:
    """What a completed handshake established about the peer."""

    peer_key: bytes
    peer_id: PeerId
    version: int
    capabilities: tuple[str, ...]
    listen_addrs: tuple[str, ...]
    agent: str
    local_nonce: bytes = b""
    peer_nonce: bytes = b""
    #: The peer's X25519 key for an encrypted session (§6.7); empty: it offered none.
    peer_eph: bytes = b""


def choose_version(ours: tuple[int, ...], theirs: tuple[int, ...]) -> int:
    """The highest version both sides speak; raises ``UNSUPPORTED_VERSION`` if none."""
    common = set(ours) & set(theirs)
    if not common:
        raise RemoteProtocolError(
            f"no common protocol version: peer speaks {sorted(theirs)}, we speak {sorted(ours)}",
            ErrorCode.UNSUPPORTED_VERSION,
        )
    return max(common)


class Handshake:
    """One side of the handshake. Feed it decoded envelopes; send what it returns."""

    def __init__(
        self,
        *,
        local_id: PeerId,
        nonce: bytes,
        now: float,
        capabilities: tuple[str, ...] = (),
        versions: tuple[int, ...] = SUPPORTED_VERSIONS,
        listen_addrs: tuple[str, ...] = (),
        agent: str = "",
        timeout_s: float = HANDSHAKE_TIMEOUT_S,
        expected_peer: PeerId | None = None,
        eph: bytes = b"",
    ) -> None:
        if len(nonce) != HANDSHAKE_NONCE_BYTES:
            raise LocalProtocolError(f"nonce must be {HANDSHAKE_NONCE_BYTES} random bytes")
        self.state = HandshakeState.AWAIT_HELLO
        self._local_id = local_id
        self._nonce = nonce
        self._caps = capabilities
        self._versions = versions
        self._listen_addrs = listen_addrs
        self._agent = agent
        self._deadline = now + timeout_s
        self._expected_peer = expected_peer
        self._eph = eph
        self._peer_hello: Hello | None = None
        self._peer_key: bytes | None = None
        self._version: int | None = None
        self.result: HandshakeResult | None = None

    def start(self) -> list[Message]:
        """The messages to send as soon as the connection is open."""
        return [
            Hello(
                versions=self._versions,
                capabilities=self._caps,
                nonce=self._nonce,
                agent=self._agent,
                listen_addrs=self._listen_addrs,
                eph=self._eph,
            )
        ]

    def get_timer(self) -> float | None:
        """When :meth:`handle_timer` must be called, or None once finished."""
        if self.state in (HandshakeState.DONE, HandshakeState.FAILED):
            return None
        return self._deadline

    def handle_timer(self, now: float) -> None:
        """Fail with ``TIMEOUT`` if the deadline has passed."""
        if self.get_timer() is not None and now >= self._deadline:
            self._fail(RemoteProtocolError("handshake did not complete in time", ErrorCode.TIMEOUT))

    def handle(self, envelope: Envelope, now: float) -> list[Message]:
        """Process one decoded envelope from the peer; returns messages to send.

        Raises:
            RemoteProtocolError: the peer broke the handshake, rejected us (its ``Close``
                code is re-raised, e.g. ``UNSUPPORTED_VERSION``), or the deadline passed.
        """
        self.handle_timer(now)
        message = envelope.message
        try:
            if isinstance(message, Close):
                known = message.code in ErrorCode._value2member_map_
                raise RemoteProtocolError(
                    f"peer rejected the handshake: {code_name(message.code)}: {message.reason}",
                    ErrorCode(message.code) if known else ErrorCode.HANDSHAKE_FAILED,
                )
            if self.state is HandshakeState.AWAIT_HELLO and isinstance(message, Hello):
                return self._on_hello(envelope, message)
            if self.state is HandshakeState.AWAIT_ACK and isinstance(message, HelloAck):
                self._on_ack(envelope, message)
                return []
            raise RemoteProtocolError(
                f"{type(message).__name__} is not allowed in handshake state {self.state.value}",
                ErrorCode.PROTOCOL_VIOLATION,
            )
        except RemoteProtocolError as exc:
            self._fail(exc)
            raise  # pragma: no cover - _fail always raises

    # -- transitions ----------------------------------------------------------------------
    def _on_hello(self, envelope: Envelope, hello: Hello) -> list[Message]:
        peer_id = envelope.sender
        if self._expected_peer is not None and peer_id != self._expected_peer:
            raise RemoteProtocolError(
                f"dialled {self._expected_peer.short()} but {peer_id.short()} answered",
                ErrorCode.HANDSHAKE_FAILED,
            )
        if peer_id == self._local_id:
            raise RemoteProtocolError("connected to ourselves", ErrorCode.HANDSHAKE_FAILED)
        self._version = choose_version(self._versions, hello.versions)
        self._peer_hello = hello
        self._peer_key = envelope.sender_key
        self.state = HandshakeState.AWAIT_ACK
        caps = tuple(c for c in self._caps if c in hello.capabilities)
        return [
            HelloAck(
                version=self._version,
                capabilities=caps,
                nonce=hello.nonce,
                recipient=peer_id.digest,
            )
        ]

    def _on_ack(self, envelope: Envelope, ack: HelloAck) -> None:
        if envelope.sender_key != self._peer_key:
            raise RemoteProtocolError(
                "HelloAck signed by a different key than the Hello", ErrorCode.HANDSHAKE_FAILED
            )
        if ack.nonce != self._nonce or ack.recipient != self._local_id.digest:
            raise RemoteProtocolError(
                "HelloAck does not answer our challenge (nonce or recipient differs)",
                ErrorCode.HANDSHAKE_FAILED,
            )
        if ack.version != self._version:
            raise RemoteProtocolError(
                f"peer chose version {ack.version}, the rule gives {self._version}",
                ErrorCode.UNSUPPORTED_VERSION,
            )
        hello = self._peer_hello
        if hello is None:  # unreachable: AWAIT_ACK is entered only with a Hello
            raise RemoteProtocolError("HelloAck before Hello", ErrorCode.PROTOCOL_VIOLATION)
        self.state = HandshakeState.DONE
        self.result = HandshakeResult(
            peer_key=envelope.sender_key,
            peer_id=envelope.sender,
            version=ack.version,
            capabilities=tuple(c for c in self._caps if c in hello.capabilities),
            listen_addrs=hello.listen_addrs,
            agent=hello.agent,
            local_nonce=self._nonce,
            peer_nonce=hello.nonce,
            peer_eph=hello.eph,
        )

    @property
    def nonce(self) -> bytes:
        """The nonce we put in our Hello."""
        return self._nonce

    @property
    def peer_hello(self) -> Hello | None:
        """The peer's Hello, once received."""
        return self._peer_hello

    def _fail(self, exc: RemoteProtocolError) -> None:
        self.state = HandshakeState.FAILED
        raise exc
