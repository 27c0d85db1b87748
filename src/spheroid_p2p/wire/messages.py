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
from dataclasses import MISSING, Field, dataclass, field, fields
from enum import IntEnum
from typing import Any, ClassVar, TypeVar

from spheroid_p2p.errors import ErrorCode, LocalProtocolError, RemoteProtocolError
from spheroid_p2p.params import (
    CONTENT_HASH_BYTES,
    HANDSHAKE_NONCE_BYTES,
    MAX_RECORDS_PER_MESSAGE,
    MAX_TENSOR_BYTES,
    MAX_TENSOR_CHUNKS,
    MAX_TENSOR_DIMS,
    SESSION_KEY_BYTES,
    TENSOR_CHUNK_BYTES,
)
from spheroid_p2p.wire.addr import check_addrs
from spheroid_p2p.wire.dtypes import DTYPES, Codec, DType

__all__ = [
    "Close",
    "ConnView",
    "DigestEntry",
    "GossipDigest",
    "GossipRecords",
    "GossipRequest",
    "GossipSummary",
    "GossipSuspect",
    "Hello",
    "HelloAck",
    "Message",
    "MessageType",
    "Ping",
    "Pong",
    "RecordView",
    "RelayedRecord",
    "StatusRequest",
    "StatusResponse",
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
    GOSSIP_SUMMARY = 0x40
    GOSSIP_DIGEST = 0x41
    GOSSIP_RECORDS = 0x42
    GOSSIP_REQUEST = 0x43
    STATUS_REQUEST = 0x44
    STATUS_RESPONSE = 0x45
    GOSSIP_SUSPECT = 0x46
    VERSION_GET = 0x50
    VERSION_INFO = 0x51
    CHUNK_GET = 0x52
    TRANSFER_ERROR = 0x53
    DELTA_HEADER = 0x54
    DELTA_ACK = 0x55
    TRAVERSE = 0x60
    TRAVERSE_RESULT = 0x61
    TRAVERSE_ERROR = 0x62
    PIPE_STEP = 0x63
    PIPE_RESULT = 0x64


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


def wire(
    key: str,
    default: Any = MISSING,
    *,
    array: bool = False,
    required: bool | None = None,
    encode: Callable[[Any], Any] | None = None,
    decode: Callable[[Any], Any] | None = None,
    omit_default: bool = False,
) -> Any:
    """A message field and its body key: the field table :class:`Message` encodes from.

    ``array``: a tuple sent as a msgpack array. A field with a default may be absent from a
    received body (then it takes the default) unless ``required``. ``encode``/``decode``
    convert nested values (``decode`` gets the msgpack value, may raise ``LocalProtocolError``).
    ``omit_default``: an optional field added by a later revision is left out of the body
    while it holds its default, so messages that do not use it keep their earlier bytes.
    """
    meta = {
        "wire": key,
        "array": array,
        "required": default is MISSING if required is None else required,
        "encode": encode,
        "decode": decode,
        "omit": omit_default,
    }
    if default is MISSING:
        return field(metadata=meta)
    return field(default=default, metadata=meta)


class Message:
    """Base of every message. Subclasses set ``TYPE`` and declare their body keys with
    :func:`wire`; a type whose body is not one key per field overrides the two methods."""

    __slots__ = ()
    TYPE: ClassVar[MessageType]
    #: Whether the frame's raw payload section may be non-empty for this type.
    HAS_PAYLOAD: ClassVar[bool] = False

    def to_body(self) -> Body:
        """The msgpack map for this message's ``body`` field."""
        body: Body = {}
        for f in _wire_fields(type(self)):
            meta = f.metadata
            value = getattr(self, f.name)
            if meta["omit"] and value == f.default:
                continue
            if meta["encode"] is not None:
                value = meta["encode"](value)
            elif meta["array"]:
                value = list(value)
            body[meta["wire"]] = value
        return body

    @classmethod
    def from_body(cls, body: Mapping[str, Any], payload: memoryview) -> Message:
        """Build the message from a decoded body map (raises ``LocalProtocolError``)."""
        values: dict[str, Any] = {}
        for f in _wire_fields(cls):
            meta = f.metadata
            key = meta["wire"]
            if key not in body and not meta["required"]:
                continue  # the dataclass default
            value = _get(body, key)
            if meta["decode"] is not None:
                value = meta["decode"](value)
            elif meta["array"]:
                value = _as_tuple(value, key)
            values[f.name] = value
        return cls(**values)


def _wire_fields(cls: type[Message]) -> tuple[Field[Any], ...]:
    table = _FIELD_TABLES.get(cls)
    if table is None:
        table = tuple(f for f in fields(cls) if "wire" in f.metadata)  # type: ignore[arg-type]
        if not table:
            raise NotImplementedError(f"{cls.__name__} declares no wire fields")
        _FIELD_TABLES[cls] = table
    return table


_FIELD_TABLES: dict[type[Message], tuple[Field[Any], ...]] = {}


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
    versions: tuple[int, ...] = wire("vs", array=True)
    capabilities: tuple[str, ...] = wire("caps", array=True)
    nonce: bytes = wire("nonce")
    agent: str = wire("agent", "")
    listen_addrs: tuple[str, ...] = wire("addrs", (), array=True)
    #: X25519 public key for an encrypted session (06 §6.7, r7); empty: none offered.
    eph: bytes = wire("eph", b"", omit_default=True)

    def __post_init__(self) -> None:
        if not isinstance(self.versions, tuple) or not self.versions:
            raise _bad("versions must be a non-empty list")
        for v in self.versions:
            _check_uint("version", v, 0xFFFF)
        _check_str_tuple("capabilities", self.capabilities)
        _check_bytes("nonce", self.nonce, HANDSHAKE_NONCE_BYTES)
        _check_str("agent", self.agent)
        _check_str_tuple("listen_addrs", self.listen_addrs)
        check_addrs("listen_addrs", self.listen_addrs)
        if not isinstance(self.eph, bytes) or len(self.eph) not in (0, SESSION_KEY_BYTES):
            raise _bad(f"eph must be empty or {SESSION_KEY_BYTES} bytes")


@_register
@dataclass(frozen=True, slots=True, kw_only=True)
class HelloAck(Message):
    """Answer to the peer's Hello: the chosen version, and the peer's nonce signed back to it."""

    TYPE: ClassVar[MessageType] = MessageType.HELLO_ACK
    version: int = wire("v")
    capabilities: tuple[str, ...] = wire("caps", array=True)
    nonce: bytes = wire("nonce")
    recipient: bytes = wire("to")

    def __post_init__(self) -> None:
        _check_uint("version", self.version, 0xFFFF)
        _check_str_tuple("capabilities", self.capabilities)
        _check_bytes("nonce", self.nonce, HANDSHAKE_NONCE_BYTES)
        _check_bytes("recipient", self.recipient, 32)


@_register
@dataclass(frozen=True, slots=True, kw_only=True)
class Close(Message):
    """Last frame before closing: why (an ``ErrorCode``; unknown codes stay integers)."""

    TYPE: ClassVar[MessageType] = MessageType.CLOSE
    code: int = wire("code")
    reason: str = wire("msg", "")

    def __post_init__(self) -> None:
        _check_uint("code", self.code, 0xFFFF)
        _check_str("reason", self.reason)


@dataclass(frozen=True, slots=True, kw_only=True)
class _Nonce(Message):
    nonce: int = wire("n")

    def __post_init__(self) -> None:
        _check_uint("nonce", self.nonce)


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
    stream_id: int = wire("id")
    name: str = wire("name")
    dtype: int = wire("dt")
    shape: tuple[int, ...] = wire("shape", array=True)
    content_hash: bytes = wire("h")
    chunk_hashes: bytes = wire("hs")

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


# -- ownership gossip (07-ownership-gossip.md) -------------------------------------------------
@dataclass(frozen=True, slots=True)
class DigestEntry:
    """(owner peer id, block, seq) of one record a peer holds."""

    owner: bytes
    block: int
    seq: int


def _pairs(value: object, name: str, width: int) -> tuple[tuple[Any, ...], ...]:
    items = _as_tuple(value, name)
    out = []
    for item in items:
        if not isinstance(item, list | tuple) or len(item) != width:
            raise _bad(f"{name} entries must be arrays of {width}")
        out.append(tuple(item))
    return tuple(out)


@_register
@dataclass(frozen=True, slots=True, kw_only=True)
class GossipSummary(Message):
    """Anti-entropy opener: a hash of the sender's live table and its size (§7.5)."""

    TYPE: ClassVar[MessageType] = MessageType.GOSSIP_SUMMARY
    table_hash: bytes = wire("h")
    count: int = wire("n")

    def __post_init__(self) -> None:
        _check_bytes("table_hash", self.table_hash, 32)
        _check_uint("count", self.count)


@_register
@dataclass(frozen=True, slots=True, kw_only=True)
class GossipDigest(Message):
    """Every (owner, block, seq) the sender holds, answering a summary that differed."""

    TYPE: ClassVar[MessageType] = MessageType.GOSSIP_DIGEST
    entries: tuple[DigestEntry, ...] = wire(
        "d",
        encode=lambda es: [[e.owner, e.block, e.seq] for e in es],
        decode=lambda v: tuple(DigestEntry(*e) for e in _pairs(v, "d", 3)),
    )

    def __post_init__(self) -> None:
        for e in self.entries:
            _check_bytes("owner", e.owner, 32)
            _check_uint("block", e.block, 0xFFFF)
            _check_uint("seq", e.seq)


@dataclass(frozen=True, slots=True)
class RelayedRecord:
    """A signed record as relayed: its exact bytes, the owner's signature, and how long the
    relay still considers it valid (never more than the record's own ttl)."""

    data: bytes
    signature: bytes
    remaining_ms: int


@_register
@dataclass(frozen=True, slots=True, kw_only=True)
class GossipRecords(Message):
    """Signed ownership records, pushed on change or sent to fill a peer's gaps."""

    TYPE: ClassVar[MessageType] = MessageType.GOSSIP_RECORDS
    records: tuple[RelayedRecord, ...] = wire(
        "r",
        encode=lambda rs: [[r.data, r.signature, r.remaining_ms] for r in rs],
        decode=lambda v: tuple(RelayedRecord(*r) for r in _pairs(v, "r", 3)),
    )

    def __post_init__(self) -> None:
        if len(self.records) > MAX_RECORDS_PER_MESSAGE:
            raise _bad(f"more than {MAX_RECORDS_PER_MESSAGE} records in one message")
        for r in self.records:
            _check_bytes("record", r.data)
            _check_bytes("signature", r.signature)
            _check_uint("remaining_ms", r.remaining_ms)


@_register
@dataclass(frozen=True, slots=True, kw_only=True)
class GossipRequest(Message):
    """Keys (owner, block) whose records the sender lacks or holds older."""

    TYPE: ClassVar[MessageType] = MessageType.GOSSIP_REQUEST
    keys: tuple[tuple[bytes, int], ...] = wire(
        "k",
        encode=lambda ks: [[o, b] for o, b in ks],
        decode=lambda v: tuple((o, b) for o, b in _pairs(v, "k", 2)),
    )

    def __post_init__(self) -> None:
        for owner, block in self.keys:
            _check_bytes("owner", owner, 32)
            _check_uint("block", block, 0xFFFF)


@_register
@dataclass(frozen=True, slots=True, kw_only=True)
class GossipSuspect(Message):
    """ "I cannot reach ``peer``; the newest record of it I held had ``seq``" (§7.6)."""

    TYPE: ClassVar[MessageType] = MessageType.GOSSIP_SUSPECT
    peer: bytes = wire("p")
    seq: int = wire("seq")

    def __post_init__(self) -> None:
        _check_bytes("peer", self.peer, 32)
        _check_uint("seq", self.seq)


# -- status (07-ownership-gossip.md §7.8) ------------------------------------------------------
@_register
@dataclass(frozen=True, slots=True, kw_only=True)
class StatusRequest(Message):
    """Ask a peer for its view of the swarm."""

    TYPE: ClassVar[MessageType] = MessageType.STATUS_REQUEST
    request_id: int = wire("rid")
    #: Records to skip: the page starts at this index of the key-ordered table (r7).
    offset: int = wire("off", 0, omit_default=True)

    def __post_init__(self) -> None:
        _check_uint("request_id", self.request_id)
        _check_uint("offset", self.offset, 2**32 - 1)


@dataclass(frozen=True, slots=True)
class RecordView:
    """One ownership record as a peer sees it, for the status command."""

    owner: bytes
    block: int
    role: str
    version: int
    content_hash: bytes
    addrs: tuple[str, ...]
    load: float
    seq: int
    age_ms: int
    expires_in_ms: int
    departed: bool
    n_blocks: int = 0
    config_hash: str = ""


@dataclass(frozen=True, slots=True)
class ConnView:
    """One live connection as a peer sees it, for the status command."""

    peer: bytes
    addr: str
    outbound: bool
    rtt_ms: float
    idle_ms: int


@_register
@dataclass(frozen=True, slots=True, kw_only=True)
class StatusResponse(Message):
    """A peer's view: its own id and uptime, the records it holds, its connections."""

    TYPE: ClassVar[MessageType] = MessageType.STATUS_RESPONSE
    request_id: int
    agent: str
    uptime_ms: int
    records: tuple[RecordView, ...]
    connections: tuple[ConnView, ...]
    dropped: tuple[tuple[str, int], ...] = ()
    #: Records the peer holds in all (r7; the page holds ``records`` from the asked offset).
    total: int = 0

    def __post_init__(self) -> None:
        _check_uint("request_id", self.request_id)
        _check_str("agent", self.agent)
        _check_uint("uptime_ms", self.uptime_ms)
        _check_uint("total", self.total, 2**32 - 1)

    def to_body(self) -> Body:
        return {
            "rid": self.request_id,
            "agent": self.agent,
            "up": self.uptime_ms,
            "recs": [
                [
                    r.owner,
                    r.block,
                    r.role,
                    r.version,
                    r.content_hash,
                    list(r.addrs),
                    float(r.load),
                    r.seq,
                    r.age_ms,
                    r.expires_in_ms,
                    r.departed,
                    r.n_blocks,
                    r.config_hash,
                ]
                for r in self.records
            ],
            "conns": [
                [c.peer, c.addr, c.outbound, float(c.rtt_ms), c.idle_ms] for c in self.connections
            ],
            "drops": [[k, v] for k, v in self.dropped],
            **({"total": self.total} if self.total else {}),
        }

    @classmethod
    def from_body(cls, body: Mapping[str, Any], payload: memoryview) -> StatusResponse:
        records = tuple(
            RecordView(o, b, role, ver, h, tuple(addrs), load, seq, age, exp, dep, nb, cfg)
            for o, b, role, ver, h, addrs, load, seq, age, exp, dep, nb, cfg in _pairs(
                _get(body, "recs"), "recs", 13
            )
        )
        conns = tuple(ConnView(*c) for c in _pairs(_get(body, "conns"), "conns", 5))
        drops = tuple((k, v) for k, v in _pairs(body.get("drops", []), "drops", 2))
        return cls(
            request_id=_get(body, "rid"),
            agent=_get(body, "agent"),
            uptime_ms=_get(body, "up"),
            records=records,
            connections=conns,
            dropped=drops,
            total=body.get("total", len(records)),
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
