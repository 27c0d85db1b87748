"""Typed messages (spec: ``protocol/03-messages.md``).

One frozen dataclass per message type, registered under its :class:`MessageType` code. A
message validates itself on construction, so an invalid message cannot exist: building one
from bad local arguments raises :class:`LocalProtocolError`, and :func:`message_from_body`
converts the same checks on peer input into :class:`RemoteProtocolError` with the same code.

Bodies are msgpack maps with short string keys. Unknown keys are ignored (so later revisions
can add optional fields); a missing or mistyped required key is ``MALFORMED_MESSAGE``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, ClassVar, TypeVar

from spheroid_p2p.errors import ErrorCode, LocalProtocolError, RemoteProtocolError
from spheroid_p2p.params import (
    CONTENT_HASH_BYTES,
    HANDSHAKE_NONCE_BYTES,
    MAX_TENSOR_BYTES,
    MAX_TENSOR_CHUNKS,
    MAX_TENSOR_DIMS,
    TENSOR_CHUNK_BYTES,
)
from spheroid_p2p.wire.dtypes import DTYPES, Codec, DType

__all__ = [
    "Close",
    "Hello",
    "HelloAck",
    "Message",
    "MessageType",
    "Ping",
    "Pong",
    "TensorChunk",
    "TensorHeader",
    "message_from_body",
    "registry",
]

_U64 = 2**64 - 1
Body = dict[str, Any]


class MessageType(IntEnum):
    """Registry of message type codes (03-messages.md §3.2)."""

    HELLO = 0x01
    HELLO_ACK = 0x02
    CLOSE = 0x03
    PING = 0x04
    PONG = 0x05
    TENSOR_HEADER = 0x20
    TENSOR_CHUNK = 0x21


def _bad(message: str, code: ErrorCode = ErrorCode.MALFORMED_MESSAGE) -> LocalProtocolError:
    return LocalProtocolError(message, code)


def _check_uint(name: str, value: object, maximum: int = _U64) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= maximum:
        raise _bad(f"{name} must be an integer in 0..{maximum}, got {value!r}")


def _check_bytes(name: str, value: object, length: int | None = None) -> None:
    if not isinstance(value, bytes):
        raise _bad(f"{name} must be bytes, got {type(value).__name__}")
    if length is not None and len(value) != length:
        raise _bad(f"{name} must be {length} bytes, got {len(value)}")


def _check_str(name: str, value: object) -> None:
    if not isinstance(value, str):
        raise _bad(f"{name} must be a string, got {type(value).__name__}")


def _check_str_tuple(name: str, value: object) -> None:
    if not isinstance(value, tuple) or not all(isinstance(v, str) for v in value):
        raise _bad(f"{name} must be a list of strings")


class Message:
    """Base of every message. Subclasses set ``TYPE`` and implement the body mapping."""

    __slots__ = ()
    TYPE: ClassVar[MessageType]
    #: Whether the frame's raw payload section may be non-empty for this type.
    HAS_PAYLOAD: ClassVar[bool] = False

    def to_body(self) -> Body:
        """The msgpack map for this message's ``body`` field."""
        raise NotImplementedError

    @classmethod
    def from_body(cls, body: Mapping[str, Any], payload: memoryview) -> Message:
        """Build the message from a decoded body map (raises ``LocalProtocolError``)."""
        raise NotImplementedError


_M = TypeVar("_M", bound=type[Message])
_REGISTRY: dict[int, type[Message]] = {}


def _register(cls: _M) -> _M:
    code = int(cls.TYPE)
    if code in _REGISTRY:
        raise RuntimeError(f"message type {code:#x} registered twice")
    _REGISTRY[code] = cls
    return cls


def registry() -> Mapping[int, type[Message]]:
    """Read-only view of the message registry (type code -> class)."""
    return dict(_REGISTRY)


def _get(body: Mapping[str, Any], key: str) -> Any:
    if key not in body:
        raise _bad(f"required field {key!r} is missing")
    return body[key]


def _as_tuple(value: object, name: str) -> tuple[Any, ...]:
    if not isinstance(value, list | tuple):
        raise _bad(f"{name} must be an array")
    return tuple(value)


# -- handshake (06-handshake.md) --------------------------------------------------------------
@_register
@dataclass(frozen=True, slots=True, kw_only=True)
class Hello(Message):
    """First frame each side sends: what it speaks, and a fresh challenge for the other side."""

    TYPE: ClassVar[MessageType] = MessageType.HELLO
    versions: tuple[int, ...]
    capabilities: tuple[str, ...]
    nonce: bytes
    agent: str = ""
    listen_addrs: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.versions, tuple) or not self.versions:
            raise _bad("versions must be a non-empty list")
        for v in self.versions:
            _check_uint("version", v, 0xFFFF)
        _check_str_tuple("capabilities", self.capabilities)
        _check_bytes("nonce", self.nonce, HANDSHAKE_NONCE_BYTES)
        _check_str("agent", self.agent)
        _check_str_tuple("listen_addrs", self.listen_addrs)

    def to_body(self) -> Body:
        return {
            "vs": list(self.versions),
            "caps": list(self.capabilities),
            "nonce": self.nonce,
            "agent": self.agent,
            "addrs": list(self.listen_addrs),
        }

    @classmethod
    def from_body(cls, body: Mapping[str, Any], payload: memoryview) -> Hello:
        return cls(
            versions=_as_tuple(_get(body, "vs"), "vs"),
            capabilities=_as_tuple(_get(body, "caps"), "caps"),
            nonce=_get(body, "nonce"),
            agent=body.get("agent", ""),
            listen_addrs=_as_tuple(body.get("addrs", []), "addrs"),
        )


@_register
@dataclass(frozen=True, slots=True, kw_only=True)
class HelloAck(Message):
    """Answer to the peer's Hello: the chosen version, and the peer's nonce signed back to it."""

    TYPE: ClassVar[MessageType] = MessageType.HELLO_ACK
    version: int
    capabilities: tuple[str, ...]
    nonce: bytes
    recipient: bytes

    def __post_init__(self) -> None:
        _check_uint("version", self.version, 0xFFFF)
        _check_str_tuple("capabilities", self.capabilities)
        _check_bytes("nonce", self.nonce, HANDSHAKE_NONCE_BYTES)
        _check_bytes("recipient", self.recipient, 32)

    def to_body(self) -> Body:
        return {
            "v": self.version,
            "caps": list(self.capabilities),
            "nonce": self.nonce,
            "to": self.recipient,
        }

    @classmethod
    def from_body(cls, body: Mapping[str, Any], payload: memoryview) -> HelloAck:
        return cls(
            version=_get(body, "v"),
            capabilities=_as_tuple(_get(body, "caps"), "caps"),
            nonce=_get(body, "nonce"),
            recipient=_get(body, "to"),
        )


@_register
@dataclass(frozen=True, slots=True, kw_only=True)
class Close(Message):
    """Last frame before closing: why (an ``ErrorCode``; unknown codes stay integers)."""

    TYPE: ClassVar[MessageType] = MessageType.CLOSE
    code: int
    reason: str = ""

    def __post_init__(self) -> None:
        _check_uint("code", self.code, 0xFFFF)
        _check_str("reason", self.reason)

    def to_body(self) -> Body:
        return {"code": self.code, "msg": self.reason}

    @classmethod
    def from_body(cls, body: Mapping[str, Any], payload: memoryview) -> Close:
        return cls(code=_get(body, "code"), reason=body.get("msg", ""))


@dataclass(frozen=True, slots=True, kw_only=True)
class _Nonce(Message):
    nonce: int

    def __post_init__(self) -> None:
        _check_uint("nonce", self.nonce)

    def to_body(self) -> Body:
        return {"n": self.nonce}

    @classmethod
    def from_body(cls, body: Mapping[str, Any], payload: memoryview) -> _Nonce:
        return cls(nonce=_get(body, "n"))


@_register
@dataclass(frozen=True, slots=True, kw_only=True)
class Ping(_Nonce):
    """Keep-alive probe; the peer answers with a Pong carrying the same nonce."""

    TYPE: ClassVar[MessageType] = MessageType.PING


@_register
@dataclass(frozen=True, slots=True, kw_only=True)
class Pong(_Nonce):
    """Answer to a Ping."""

    TYPE: ClassVar[MessageType] = MessageType.PONG


# -- tensor frames (05-tensor-frames.md) ------------------------------------------------------
def tensor_layout(dtype: DType, shape: tuple[int, ...]) -> tuple[int, int]:
    """Return ``(raw_len, n_chunks)`` for a tensor, enforcing the size limits."""
    numel = 1
    for dim in shape:
        numel *= dim
    raw_len = numel * dtype.itemsize
    if raw_len > MAX_TENSOR_BYTES:
        raise _bad(
            f"tensor of {raw_len} bytes exceeds MAX_TENSOR_BYTES={MAX_TENSOR_BYTES}",
            ErrorCode.TENSOR_LIMIT,
        )
    return raw_len, -(-raw_len // TENSOR_CHUNK_BYTES)


def _check_dtype(code: object) -> DType:
    _check_uint("dtype", code, 0xFF)
    dtype = DTYPES.get(code) if isinstance(code, int) else None
    if dtype is None:
        raise _bad(f"unknown dtype code {code}", ErrorCode.UNKNOWN_DTYPE)
    return dtype


@_register
@dataclass(frozen=True, slots=True, kw_only=True)
class TensorHeader(Message):
    """Opens a tensor stream: what the tensor is and the hash of every chunk to come."""

    TYPE: ClassVar[MessageType] = MessageType.TENSOR_HEADER
    stream_id: int
    name: str
    dtype: int
    shape: tuple[int, ...]
    content_hash: bytes
    chunk_hashes: bytes

    def __post_init__(self) -> None:
        _check_uint("stream_id", self.stream_id)
        _check_str("name", self.name)
        dtype = _check_dtype(self.dtype)
        if not isinstance(self.shape, tuple) or len(self.shape) > MAX_TENSOR_DIMS:
            raise _bad(f"shape must be a list of at most {MAX_TENSOR_DIMS} dimensions")
        for dim in self.shape:
            _check_uint("dimension", dim, MAX_TENSOR_BYTES)
        _check_bytes("content_hash", self.content_hash, CONTENT_HASH_BYTES)
        _check_bytes("chunk_hashes", self.chunk_hashes)
        _, n_chunks = tensor_layout(dtype, self.shape)
        if len(self.chunk_hashes) != n_chunks * CONTENT_HASH_BYTES:
            raise _bad(
                f"{n_chunks} chunks need {n_chunks * CONTENT_HASH_BYTES} bytes of chunk hashes, "
                f"got {len(self.chunk_hashes)}",
                ErrorCode.TENSOR_SHAPE_MISMATCH,
            )

    @property
    def itemsize(self) -> int:
        return DTYPES[self.dtype].itemsize

    @property
    def raw_len(self) -> int:
        return tensor_layout(DTYPES[self.dtype], self.shape)[0]

    @property
    def n_chunks(self) -> int:
        return len(self.chunk_hashes) // CONTENT_HASH_BYTES

    def chunk_hash(self, index: int) -> bytes:
        return self.chunk_hashes[index * CONTENT_HASH_BYTES : (index + 1) * CONTENT_HASH_BYTES]

    def to_body(self) -> Body:
        return {
            "id": self.stream_id,
            "name": self.name,
            "dt": self.dtype,
            "shape": list(self.shape),
            "h": self.content_hash,
            "hs": self.chunk_hashes,
        }

    @classmethod
    def from_body(cls, body: Mapping[str, Any], payload: memoryview) -> TensorHeader:
        return cls(
            stream_id=_get(body, "id"),
            name=_get(body, "name"),
            dtype=_get(body, "dt"),
            shape=_as_tuple(_get(body, "shape"), "shape"),
            content_hash=_get(body, "h"),
            chunk_hashes=_get(body, "hs"),
        )


@_register
@dataclass(frozen=True, slots=True, kw_only=True)
class TensorChunk(Message):
    """One chunk of a tensor stream. ``payload`` is the encoded bytes in the raw section.

    Decoding checks the chunk by itself (§5.4): the payload is decoded with its codec, bounded
    by the declared raw length, and the result must hash to ``chunk_hash``. The verified raw
    bytes are then in ``data``. Building one locally, ``data`` is left empty.
    """

    TYPE: ClassVar[MessageType] = MessageType.TENSOR_CHUNK
    HAS_PAYLOAD: ClassVar[bool] = True
    stream_id: int
    index: int
    raw_len: int
    chunk_hash: bytes
    codec: int
    elem_size: int = 1
    payload: bytes | bytearray | memoryview = field(default=b"", repr=False, compare=False)
    data: bytes | bytearray | memoryview = field(default=b"", repr=False, compare=False)

    def __post_init__(self) -> None:
        _check_uint("stream_id", self.stream_id)
        _check_uint("index", self.index, MAX_TENSOR_CHUNKS - 1)
        _check_uint("raw_len", self.raw_len, TENSOR_CHUNK_BYTES)
        _check_bytes("chunk_hash", self.chunk_hash, CONTENT_HASH_BYTES)
        _check_uint("codec", self.codec, 0xFF)
        if self.codec not in {c.value for c in Codec}:
            raise _bad(f"unknown codec id {self.codec}", ErrorCode.UNKNOWN_CODEC)
        if self.elem_size not in (1, 2, 4, 8):
            raise _bad(f"element size must be 1, 2, 4 or 8, got {self.elem_size!r}")
        if self.raw_len % self.elem_size:
            raise _bad(
                f"raw length {self.raw_len} is not a multiple of element size {self.elem_size}",
                ErrorCode.TENSOR_SHAPE_MISMATCH,
            )

    def to_body(self) -> Body:
        body: Body = {
            "id": self.stream_id,
            "i": self.index,
            "n": self.raw_len,
            "h": self.chunk_hash,
            "c": self.codec,
        }
        if self.codec == Codec.SHUFFLE_ZSTD:
            body["es"] = self.elem_size
        return body

    @classmethod
    def from_body(cls, body: Mapping[str, Any], payload: memoryview) -> TensorChunk:
        codec = _get(body, "c")
        return cls(
            stream_id=_get(body, "id"),
            index=_get(body, "i"),
            raw_len=_get(body, "n"),
            chunk_hash=_get(body, "h"),
            codec=codec,
            elem_size=_get(body, "es") if codec == Codec.SHUFFLE_ZSTD else 1,
            payload=payload,
        )


def message_from_body(
    type_code: int,
    body: Mapping[str, Any],
    payload: memoryview,
    post: Callable[[Message], Message] | None = None,
) -> Message:
    """Decode a body map of peer input into its typed message; raises ``RemoteProtocolError``."""
    cls = _REGISTRY.get(type_code)
    if cls is None:
        raise RemoteProtocolError(
            f"unknown message type {type_code:#x}", ErrorCode.UNKNOWN_MESSAGE_TYPE
        )
    if len(payload) and not cls.HAS_PAYLOAD:
        raise RemoteProtocolError(
            f"{cls.__name__} carries no payload, got {len(payload)} bytes",
            ErrorCode.MALFORMED_FRAME,
        )
    try:
        message = cls.from_body(body, payload)
        return post(message) if post is not None else message
    except LocalProtocolError as exc:
        raise RemoteProtocolError(str(exc.args[0]), exc.code) from exc
    except (TypeError, ValueError) as exc:  # a field of the wrong msgpack type
        raise RemoteProtocolError(f"{cls.__name__}: {exc}", ErrorCode.MALFORMED_MESSAGE) from exc
