"""Inline tensors (10 §10.3): small tensors carried whole in one frame, ``z`` and logits of a
traversal. Dtype, shape, codec and BLAKE3 hash are in the signed body, the encoded bytes in
the frame's payload section (at most ``TENSOR_CHUNK_BYTES`` raw), checked exactly like a
tensor chunk (05 §5.4).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from spheroid_p2p.errors import ErrorCode, LocalProtocolError, RemoteProtocolError
from spheroid_p2p.params import TENSOR_CHUNK_BYTES
from spheroid_p2p.wire.chunks import tensor_layout
from spheroid_p2p.wire.compression import decode_payload
from spheroid_p2p.wire.dtypes import DTYPES, Codec
from spheroid_p2p.wire.framing import Buffer
from spheroid_p2p.wire.message import Body, as_tuple, check_bytes, check_uint, get_field
from spheroid_p2p.wire.tensors import chunk_digest

__all__ = ["InlineTensor", "verify_inline"]


def _bad(msg: str, code: ErrorCode = ErrorCode.MALFORMED_MESSAGE) -> LocalProtocolError:
    return LocalProtocolError(msg, code)


@dataclass(frozen=True, slots=True)
class InlineTensor:
    """A small tensor carried in one frame: metadata signed, bytes in the payload section."""

    dtype: int
    shape: tuple[int, ...]
    codec: int
    digest: bytes  # BLAKE3 of the raw (decoded) bytes
    payload: Buffer = b""  # encoded bytes, as sent
    data: Buffer = b""  # raw bytes, once verified

    def check(self) -> int:
        """Validate the metadata; returns the raw length."""
        if self.dtype not in DTYPES:
            raise _bad(f"unknown dtype code {self.dtype}", ErrorCode.UNKNOWN_DTYPE)
        if self.codec not in {c.value for c in Codec}:
            raise _bad(f"unknown codec id {self.codec}", ErrorCode.UNKNOWN_CODEC)
        check_bytes("tensor hash", self.digest, 32)
        raw_len, _ = tensor_layout(DTYPES[self.dtype], self.shape)
        if raw_len > TENSOR_CHUNK_BYTES:
            raise _bad(
                f"inline tensor of {raw_len} bytes exceeds {TENSOR_CHUNK_BYTES}",
                ErrorCode.TENSOR_LIMIT,
            )
        return raw_len

    def to_body(self) -> Body:
        return {"dt": self.dtype, "shape": list(self.shape), "c": self.codec, "h": self.digest}

    @classmethod
    def from_body(cls, body: Any, payload: Buffer) -> InlineTensor:
        if not isinstance(body, dict):
            raise _bad("inline tensor must be a map")
        shape = as_tuple(get_field(body, "shape"), "shape")
        for dim in shape:
            check_uint("dimension", dim, TENSOR_CHUNK_BYTES)
        return cls(
            dtype=get_field(body, "dt"),
            shape=shape,
            codec=get_field(body, "c"),
            digest=get_field(body, "h"),
            payload=payload,
        )


def verify_inline(tensor: InlineTensor) -> InlineTensor:
    """Decode the payload (bounded) and check its hash; raises ``RemoteProtocolError``."""
    raw_len = tensor.check()
    elem = DTYPES[tensor.dtype].itemsize if tensor.codec == Codec.SHUFFLE_ZSTD else 1
    raw = decode_payload(tensor.payload, tensor.codec, raw_len, elem)
    if chunk_digest(raw) != tensor.digest:
        raise RemoteProtocolError("inline tensor does not match its hash", ErrorCode.HASH_MISMATCH)
    return InlineTensor(
        tensor.dtype, tensor.shape, tensor.codec, tensor.digest, tensor.payload, raw
    )
