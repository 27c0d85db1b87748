"""A shard's bytes on the wire (09 §9.3): the payload of a shard delta or update.

A shard of ``L`` elements in encoding ``enc`` is its values in the encoding's dtype,
little-endian, followed (int8 only) by one float32 scale per ``INT8_BLOCK_ELEMS`` elements;
it travels as ``TENSOR_CHUNK_BYTES`` chunks. The receiver computes every length here from its
own base, so nothing a peer declares sizes a buffer.
"""

from __future__ import annotations

import torch

from spheroid_p2p.ml.averaging import ENCODING_DTYPES, Encoded
from spheroid_p2p.node.tensor_bridge import flat_bytes
from spheroid_p2p.params import INT8_BLOCK_ELEMS, TENSOR_CHUNK_BYTES

__all__ = ["chunk_lengths", "from_payload", "payload_len", "to_payload"]


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
    """The encoded slice in a received payload (tensors copied out of it, so the buffer can
    be reused), or the problem with it."""
    dtype = ENCODING_DTYPES[encoding]
    itemsize = torch.empty((), dtype=dtype).element_size()
    if len(payload) != payload_len(n, encoding):
        return None, f"payload of {len(payload)} bytes, not {payload_len(n, encoding)}"
    raw = torch.frombuffer(bytearray(payload[: n * itemsize]), dtype=torch.uint8) if n else None
    values = raw.view(dtype) if raw is not None else torch.empty(0, dtype=dtype)
    if encoding != "int8":
        return Encoded(values), None
    tail = payload[n * itemsize :]
    scales = torch.frombuffer(bytearray(tail), dtype=torch.float32) if len(tail) else None
    if scales is None:
        scales = torch.empty(0, dtype=torch.float32)
    if not bool(torch.isfinite(scales).all()) or bool((scales < 0).any()):
        return None, "int8 scales must be finite and >= 0"
    return Encoded(values, scales), None
