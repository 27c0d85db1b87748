"""Tensor element types and compression codecs (spec: ``protocol/05-tensor-frames.md`` §5.2).

Codes are part of the wire format and never change meaning. Element bytes are always
little-endian; bfloat16 travels as its raw 16 bits (the upper half of the float32 pattern).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

__all__ = ["DTYPES", "Codec", "DType", "dtype_by_name"]


@dataclass(frozen=True, slots=True)
class DType:
    """One row of the dtype table: wire code, canonical name, element size in bytes."""

    code: int
    name: str
    itemsize: int


DTYPES: dict[int, DType] = {
    d.code: d
    for d in (
        DType(1, "float32", 4),
        DType(2, "float16", 2),
        DType(3, "bfloat16", 2),
        DType(4, "float64", 8),
        DType(5, "int8", 1),
        DType(6, "uint8", 1),
        DType(7, "int16", 2),
        DType(8, "int32", 4),
        DType(9, "int64", 8),
        DType(10, "bool", 1),
    )
}

_BY_NAME = {d.name: d for d in DTYPES.values()}


def dtype_by_name(name: str) -> DType:
    """Look a dtype up by its canonical name (``float32``, ``bfloat16``, ...)."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise ValueError(f"no wire dtype named {name!r}; known: {sorted(_BY_NAME)}") from None


class Codec(IntEnum):
    """How a chunk's payload encodes its raw bytes (§5.3)."""

    NONE = 0
    ZSTD = 1
    #: Byte-shuffle by element size (all first bytes, then all second bytes, ...), then zstd.
    SHUFFLE_ZSTD = 2
