"""Connection control messages (spec: ``protocol/06-handshake.md``, ``01-framing.md`` §1.3):
HELLO and HELLO_ACK open a connection, PING and PONG keep it alive, CLOSE ends it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from spheroid_p2p.params import HANDSHAKE_NONCE_BYTES, SESSION_KEY_BYTES
from spheroid_p2p.wire.addr import check_addrs
from spheroid_p2p.wire.message import (
    Message,
    MessageType,
    bad,
    check_bytes,
    check_str,
    check_str_tuple,
    check_uint,
    register,
    wire,
)

__all__ = ["Close", "Hello", "HelloAck", "Ping", "Pong"]


@register
@dataclass(frozen=True, slots=True, kw_only=True)
class Hello(Message):
    """First frame each side sends: what it speaks, and a fresh challenge for the other side."""

    TYPE: ClassVar[MessageType] = MessageType.HELLO
    versions: tuple[int, ...] = wire("vs", array=True)
    capabilities: tuple[str, ...] = wire("caps", array=True)
    nonce: bytes = wire("nonce")
    agent: str = wire("agent", "")
    listen_addrs: tuple[str, ...] = wire("addrs", (), array=True)
    #: X25519 public key for an encrypted session (06 §6.7, r7); empty: none offered.
    eph: bytes = wire("eph", b"", omit_default=True)

    def __post_init__(self) -> None:
        if not isinstance(self.versions, tuple) or not self.versions:
            raise bad("versions must be a non-empty list")
        for v in self.versions:
            check_uint("version", v, 0xFFFF)
        check_str_tuple("capabilities", self.capabilities)
        check_bytes("nonce", self.nonce, HANDSHAKE_NONCE_BYTES)
        check_str("agent", self.agent)
        check_str_tuple("listen_addrs", self.listen_addrs)
        check_addrs("listen_addrs", self.listen_addrs)
        if not isinstance(self.eph, bytes) or len(self.eph) not in (0, SESSION_KEY_BYTES):
            raise bad(f"eph must be empty or {SESSION_KEY_BYTES} bytes")


@register
@dataclass(frozen=True, slots=True, kw_only=True)
class HelloAck(Message):
    """Answer to the peer's Hello: the chosen version, and the peer's nonce signed back to it."""

    TYPE: ClassVar[MessageType] = MessageType.HELLO_ACK
    version: int = wire("v")
    capabilities: tuple[str, ...] = wire("caps", array=True)
    nonce: bytes = wire("nonce")
    recipient: bytes = wire("to")

    def __post_init__(self) -> None:
        check_uint("version", self.version, 0xFFFF)
        check_str_tuple("capabilities", self.capabilities)
        check_bytes("nonce", self.nonce, HANDSHAKE_NONCE_BYTES)
        check_bytes("recipient", self.recipient, 32)


@register
@dataclass(frozen=True, slots=True, kw_only=True)
class Close(Message):
    """Last frame before closing: why (an ``ErrorCode``; unknown codes stay integers)."""

    TYPE: ClassVar[MessageType] = MessageType.CLOSE
    code: int = wire("code")
    reason: str = wire("msg", "")

    def __post_init__(self) -> None:
        check_uint("code", self.code, 0xFFFF)
        check_str("reason", self.reason)


@dataclass(frozen=True, slots=True, kw_only=True)
class _Nonce(Message):
    nonce: int = wire("n")

    def __post_init__(self) -> None:
        check_uint("nonce", self.nonce)


@register
@dataclass(frozen=True, slots=True, kw_only=True)
class Ping(_Nonce):
    """Keep-alive probe; the peer answers with a Pong carrying the same nonce."""

    TYPE: ClassVar[MessageType] = MessageType.PING


@register
@dataclass(frozen=True, slots=True, kw_only=True)
class Pong(_Nonce):
    """Answer to a Ping."""

    TYPE: ClassVar[MessageType] = MessageType.PONG
