"""Tensor stream messages (spec: ``protocol/05-tensor-frames.md``): TENSOR_HEADER opens a
stream and lists every chunk's hash; TENSOR_CHUNK carries one chunk, checked by itself."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from spheroid_p2p.errors import ErrorCode
from spheroid_p2p.params import (
    CONTENT_HASH_BYTES,
    MAX_TENSOR_BYTES,
    MAX_TENSOR_CHUNKS,
    MAX_TENSOR_DIMS,
    TENSOR_CHUNK_BYTES,
)
from spheroid_p2p.wire.dtypes import DTYPES, Codec, DType
from spheroid_p2p.wire.message import (
    Body,
    Message,
    MessageType,
    bad,
    check_bytes,
    check_str,
    check_uint,
    get_field,
    register,
    wire,
)

__all__ = ["TensorChunk", "TensorHeader", "tensor_layout"]


def tensor_layout(dtype: DType, shape: tuple[int, ...]) -> tuple[int, int]:
    """Return ``(raw_len, n_chunks)`` for a tensor, enforcing the size limits."""
    numel = 1
    for dim in shape:
        numel *= dim
    raw_len = numel * dtype.itemsize
    if raw_len > MAX_TENSOR_BYTES:
        raise bad(
            f"tensor of {raw_len} bytes exceeds MAX_TENSOR_BYTES={MAX_TENSOR_BYTES}",
            ErrorCode.TENSOR_LIMIT,
        )
    return raw_len, -(-raw_len // TENSOR_CHUNK_BYTES)


def _check_dtype(code: object) -> DType:
    check_uint("dtype", code, 0xFF)
    dtype = DTYPES.get(code) if isinstance(code, int) else None
    if dtype is None:
        raise bad(f"unknown dtype code {code}", ErrorCode.UNKNOWN_DTYPE)
    return dtype


@register
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
        check_uint("stream_id", self.stream_id)
        check_str("name", self.name)
        dtype = _check_dtype(self.dtype)
        if not isinstance(self.shape, tuple) or len(self.shape) > MAX_TENSOR_DIMS:
            raise bad(f"shape must be a list of at most {MAX_TENSOR_DIMS} dimensions")
        for dim in self.shape:
            check_uint("dimension", dim, MAX_TENSOR_BYTES)
        check_bytes("content_hash", self.content_hash, CONTENT_HASH_BYTES)
        check_bytes("chunk_hashes", self.chunk_hashes)
        _, n_chunks = tensor_layout(dtype, self.shape)
        if len(self.chunk_hashes) != n_chunks * CONTENT_HASH_BYTES:
            raise bad(
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


@register
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
        check_uint("stream_id", self.stream_id)
        check_uint("index", self.index, MAX_TENSOR_CHUNKS - 1)
        check_uint("raw_len", self.raw_len, TENSOR_CHUNK_BYTES)
        check_bytes("chunk_hash", self.chunk_hash, CONTENT_HASH_BYTES)
        check_uint("codec", self.codec, 0xFF)
        if self.codec not in {c.value for c in Codec}:
            raise bad(f"unknown codec id {self.codec}", ErrorCode.UNKNOWN_CODEC)
        if self.elem_size not in (1, 2, 4, 8):
            raise bad(f"element size must be 1, 2, 4 or 8, got {self.elem_size!r}")
        if self.raw_len % self.elem_size:
            raise bad(
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
        codec = get_field(body, "c")
        return cls(
            stream_id=get_field(body, "id"),
            index=get_field(body, "i"),
            raw_len=get_field(body, "n"),
            chunk_hash=get_field(body, "h"),
            codec=codec,
            elem_size=get_field(body, "es") if codec == Codec.SHUFFLE_ZSTD else 1,
            payload=payload,
        )
