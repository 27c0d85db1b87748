"""The message base (spec: ``protocol/03-messages.md``): the type registry, field tables and checks.

One frozen dataclass per message type (in the modules named by ``wire.messages``), registered
under its :class:`MessageType` code. A message validates itself on construction, so an invalid
message cannot exist: building one from bad local arguments raises :class:`LocalProtocolError`,
and :func:`message_from_body` converts the same checks on peer input into
:class:`RemoteProtocolError` with the same code.

Bodies are msgpack maps with short string keys. A receiver ignores keys it does not know (02
§2.2: later revisions add optional fields); a missing or mistyped required key is
``MALFORMED_MESSAGE``. Rows inside a body (records, connections, report entries) are maps too,
for the same reason.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import MISSING, Field, field, fields
from enum import IntEnum
from typing import Any, ClassVar, TypeVar

from spheroid_p2p.errors import ErrorCode, LocalProtocolError, RemoteProtocolError
from spheroid_p2p.params import MAX_QUALITY

__all__ = [
    "Body",
    "Message",
    "MessageType",
    "as_tuple",
    "bad",
    "check_bytes",
    "check_quality",
    "check_str",
    "check_str_tuple",
    "check_uint",
    "get_field",
    "message_from_body",
    "pairs",
    "register",
    "registry",
    "wire",
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
    DELTA_ACK = 0x55
    SHARD_DELTA = 0x56
    SHARD_UPDATE = 0x57
    TRAVERSE = 0x60
    TRAVERSE_RESULT = 0x61
    TRAVERSE_ERROR = 0x62
    PIPE_STEP = 0x63
    PIPE_RESULT = 0x64


def bad(message: str, code: ErrorCode = ErrorCode.MALFORMED_MESSAGE) -> LocalProtocolError:
    return LocalProtocolError(message, code)


def check_uint(name: str, value: object, maximum: int = _U64) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= maximum:
        raise bad(f"{name} must be an integer in 0..{maximum}, got {value!r}")


def check_quality(name: str, value: object) -> None:
    """A block's quality (r14: 08 §8.2 ``q``, 10 §10.9 ``lq``): a number in [0, MAX_QUALITY]."""
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not 0 <= value <= MAX_QUALITY
    ):
        raise bad(f"{name} must be a number in [0, {MAX_QUALITY:g}] nats/byte, got {value!r}")


def check_bytes(name: str, value: object, length: int | None = None) -> None:
    if not isinstance(value, bytes):
        raise bad(f"{name} must be bytes, got {type(value).__name__}")
    if length is not None and len(value) != length:
        raise bad(f"{name} must be {length} bytes, got {len(value)}")


def check_str(name: str, value: object) -> None:
    if not isinstance(value, str):
        raise bad(f"{name} must be a string, got {type(value).__name__}")


def check_str_tuple(name: str, value: object) -> None:
    if not isinstance(value, tuple) or not all(isinstance(v, str) for v in value):
        raise bad(f"{name} must be a list of strings")


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
            value = get_field(body, key)
            if meta["decode"] is not None:
                value = meta["decode"](value)
            elif meta["array"]:
                value = as_tuple(value, key)
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


def register(cls: _M) -> _M:
    code = int(cls.TYPE)
    if code in _REGISTRY:
        raise RuntimeError(f"message type {code:#x} registered twice")
    _REGISTRY[code] = cls
    return cls


def registry() -> Mapping[int, type[Message]]:
    """Read-only view of the message registry (type code -> class)."""
    return dict(_REGISTRY)


def get_field(body: Mapping[str, Any], key: str) -> Any:
    if key not in body:
        raise bad(f"required field {key!r} is missing")
    return body[key]


def as_tuple(value: object, name: str) -> tuple[Any, ...]:
    if not isinstance(value, list | tuple):
        raise bad(f"{name} must be an array")
    return tuple(value)


def pairs(value: object, name: str, width: int) -> tuple[tuple[Any, ...], ...]:
    """An array of ``width``-element arrays (``MALFORMED_MESSAGE`` otherwise)."""
    items = as_tuple(value, name)
    out = []
    for item in items:
        if not isinstance(item, list | tuple) or len(item) != width:
            raise bad(f"{name} entries must be arrays of {width}")
        out.append(tuple(item))
    return tuple(out)


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
