"""The msgpack profile (spec: ``protocol/02-encoding.md``).

Allowed: nil, bool, integers within int64/uint64, finite float64, UTF-8 str, bin, arrays, and
maps whose keys are str. Forbidden: ext types (timestamps included), float NaN or infinity,
non-str map keys, nesting deeper than ``MAX_MSGPACK_DEPTH``, and any container, string or
binary longer than the limits in ``params``. Trailing bytes after the value are an error.

Every exception msgpack can raise on hostile input is converted here into
``RemoteProtocolError(MALFORMED_MESSAGE)``; nothing else escapes :func:`unpack`.
"""

from __future__ import annotations

import math
from typing import Any

import msgpack

from spheroid_p2p.errors import ErrorCode, LocalProtocolError, RemoteProtocolError
from spheroid_p2p.params import (
    MAX_ARRAY_LEN,
    MAX_BIN_LEN,
    MAX_MAP_LEN,
    MAX_MSGPACK_DEPTH,
    MAX_STR_LEN,
)

__all__ = ["pack", "unpack"]

# ``Any`` is confined to this boundary module: everything above it works on typed messages.
Value = Any


def pack(value: Value) -> bytes:
    """Encode ``value`` (must itself satisfy the profile) with minimal-width msgpack types."""
    _check(value, 0, local=True)
    return msgpack.packb(value, use_bin_type=True, strict_types=False)  # type: ignore[no-any-return]


def unpack(data: bytes | memoryview) -> Value:
    """Decode one msgpack value under the profile; raises ``RemoteProtocolError`` only."""
    try:
        value = msgpack.unpackb(
            data,
            raw=False,
            use_list=True,
            strict_map_key=True,
            max_str_len=MAX_STR_LEN,
            max_bin_len=MAX_BIN_LEN,
            max_array_len=MAX_ARRAY_LEN,
            max_map_len=MAX_MAP_LEN,
            max_ext_len=0,
        )
    except Exception as exc:  # msgpack raises many types on hostile input; all mean "malformed"
        raise RemoteProtocolError(
            f"not valid msgpack under the profile: {type(exc).__name__}: {exc}",
            ErrorCode.MALFORMED_MESSAGE,
        ) from exc
    _check(value, 0, local=False)
    return value


def _fail(local: bool, message: str) -> None:
    if local:
        raise LocalProtocolError(message, ErrorCode.MALFORMED_MESSAGE)
    raise RemoteProtocolError(message, ErrorCode.MALFORMED_MESSAGE)


def _check(value: Value, depth: int, *, local: bool) -> None:
    """Walk ``value`` and enforce the type rules and the depth limit of §2.2."""
    if depth > MAX_MSGPACK_DEPTH:
        _fail(local, f"nesting deeper than {MAX_MSGPACK_DEPTH}")
    if value is None or isinstance(value, bool):
        return
    if isinstance(value, int):
        if not -(2**63) <= value < 2**64:
            _fail(local, "integer outside int64/uint64")
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            _fail(local, "float is NaN or infinite")
        return
    if isinstance(value, str):
        if len(value.encode("utf-8")) > MAX_STR_LEN:
            _fail(local, f"string longer than {MAX_STR_LEN} bytes")
        return
    if isinstance(value, bytes | bytearray | memoryview):
        if len(value) > MAX_BIN_LEN:
            _fail(local, f"binary longer than {MAX_BIN_LEN} bytes")
        return
    if isinstance(value, list | tuple):
        if len(value) > MAX_ARRAY_LEN:
            _fail(local, f"array longer than {MAX_ARRAY_LEN}")
        for item in value:
            _check(item, depth + 1, local=local)
        return
    if isinstance(value, dict):
        if len(value) > MAX_MAP_LEN:
            _fail(local, f"map larger than {MAX_MAP_LEN}")
        for key, item in value.items():
            if not isinstance(key, str):
                _fail(local, f"map key {key!r} is not a string")
            _check(item, depth + 1, local=local)
        return
    _fail(local, f"type {type(value).__name__} is outside the msgpack profile")
