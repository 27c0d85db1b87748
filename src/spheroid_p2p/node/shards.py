"""A shard's bytes on the wire (09 §9.3): the payload of a shard delta or update.

A shard of ``L`` elements in encoding ``enc`` is its values in the encoding's dtype,
little-endian, followed (int8 only) by one float32 scale per ``INT8_BLOCK_ELEMS`` elements;
it travels as ``TENSOR_CHUNK_BYTES`` chunks. The receiver computes every length here from its
own base, so nothing a peer declares sizes a buffer.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from spheroid_p2p.ml.averaging import ENCODING_DTYPES, Encoded, decode_slice
from spheroid_p2p.node.tensor_bridge import flat_bytes
from spheroid_p2p.params import INT8_BLOCK_ELEMS, TENSOR_CHUNK_BYTES

__all__ = [
    "ChunkDecoder",
    "chunk_lengths",
    "decode_payload",
    "from_payload",
    "payload_len",
    "to_payload",
]


def _scales(n: int) -> int:
    return -(-n // INT8_BLOCK_ELEMS)


def payload_len(n: int, encoding: str) -> int:
    """Bytes of a shard of ``n`` elements in ``encoding``."""
    itemsize = torch.empty((), dtype=ENCODING_DTYPES[encoding]).element_size()
    return n * itemsize + (4 * _scales(n) if encoding == "int8" else 0)


def chunk_lengths(total: int) -> list[int]:
    """The raw lengths of the chunks of a ``total``-byte payload."""
    return [min(TENSOR_CHUNK_BYTES, total - start) for start in range(0, total, TENSOR_CHUNK_BYTES)]


def to_payload(encoded: Encoded) -> memoryview:
    """The payload bytes of an encoded slice (a view when there is one part)."""
    values = flat_bytes(encoded.values)
    if encoded.scales is None:
        return values
    scales = flat_bytes(encoded.scales.float())
    out = bytearray(len(values) + len(scales))
    out[: len(values)] = values
    out[len(values) :] = scales
    return memoryview(out)


def from_payload(
    payload: memoryview | bytearray, n: int, encoding: str
) -> tuple[Encoded | None, str | None]:
    """The encoded slice in a received payload, as views of it (no copy: decode it before
    the buffer is reused), or the problem with it."""
    dtype = ENCODING_DTYPES[encoding]
    itemsize = torch.empty((), dtype=dtype).element_size()
    if len(payload) != payload_len(n, encoding):
        return None, f"payload of {len(payload)} bytes, not {payload_len(n, encoding)}"
    buffer = payload if isinstance(payload, bytearray) else payload.cast("B")
    if not n:
        return Encoded(torch.empty(0, dtype=dtype)), None
    raw = torch.frombuffer(buffer, dtype=torch.uint8)
    values = raw[: n * itemsize].view(dtype)
    if encoding != "int8":
        return Encoded(values), None
    scales = raw[n * itemsize :].view(torch.float32)
    if not bool(torch.isfinite(scales).all()) or bool((scales < 0).any()):
        return None, "int8 scales must be finite and >= 0"
    return Encoded(values, scales), None


def decode_payload(
    payload: memoryview | bytearray, n: int, encoding: str, out: torch.Tensor | None = None
) -> tuple[torch.Tensor | None, str | None]:
    """The float32 values of a received payload in ``out`` (or a new tensor): the buffer may
    then be reused. Or the problem with it."""
    encoded, problem = from_payload(payload, n, encoding)
    if encoded is None:
        return None, problem
    if out is None:
        out = torch.empty(n, dtype=torch.float32)
    if encoded.scales is None:
        out.copy_(encoded.values)  # the conversion to float32, into place
    else:
        out.copy_(decode_slice(encoded))
    return out, None


class ChunkDecoder:
    """Decodes a shard's payload chunk by chunk as the chunks land (on the transfer worker
    thread, while the data is in cache), into ``out``, adding up its squared norm: when the
    last chunk is in, judging the shard costs nothing more. int8 (whose scales come last)
    is decoded whole at the end instead."""

    def __init__(
        self,
        n: int,
        encoding: str,
        out: torch.Tensor,
        sink: Callable[[int, torch.Tensor], None] | None = None,
    ) -> None:
        self.n = n
        self.encoding = encoding
        self.out = out
        #: sees each decoded block (its first element's index, its values) as it is decoded
        self.sink = sink
        self.dtype = ENCODING_DTYPES[encoding]
        self.itemsize = torch.empty((), dtype=self.dtype).element_size()
        self.sumsq = 0.0
        self.chunked = encoding != "int8"

    def tap(self, offset: int, view: memoryview) -> None:
        """Chunk bytes ``view`` landed at byte ``offset`` of the payload (worker thread)."""
        if not self.chunked or not len(view):
            return
        start = offset // self.itemsize
        raw = torch.frombuffer(view, dtype=torch.uint8).view(self.dtype)
        block = self.out[start : start + raw.numel()]
        block.copy_(raw)
        self.sumsq += float(torch.linalg.vector_norm(block, dtype=torch.float64)) ** 2
        if self.sink is not None:
            self.sink(start, block)

    def finish(self, payload: memoryview) -> tuple[torch.Tensor | None, float, str | None]:
        """(values, norm, problem) once every chunk landed."""
        if not self.chunked:
            values, problem = decode_payload(payload, self.n, self.encoding, self.out)
            if values is None:
                return None, 0.0, problem
            self.sumsq = float(torch.linalg.vector_norm(values, dtype=torch.float64)) ** 2
            if self.sink is not None:
                self.sink(0, values)
        norm = math.sqrt(self.sumsq) if math.isfinite(self.sumsq) else math.inf
        if not math.isfinite(norm):
            return self.out, norm, "non-finite values (NaN or Inf)"
        return self.out, norm, None
