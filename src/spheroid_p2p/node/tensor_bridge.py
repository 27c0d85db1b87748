"""Where torch meets the wire: dtypes, raw views and copies (05 §5.2's dtype table).

The one place that knows both a ``torch.dtype`` and a wire dtype code; everything else in the
node converts through these functions. bfloat16 travels as its raw 16 bits (05 §5.2), which
numpy cannot hold, so its bytes are taken through an int16 view.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from spheroid_p2p.wire.dtypes import DTYPES, dtype_by_name
from spheroid_p2p.wire.manifests import TensorEntry
from spheroid_p2p.wire.tensors import RawTensor

__all__ = [
    "flat_bytes",
    "raw_of",
    "tensor_from_bytes",
    "tensor_of",
    "torch_dtype",
    "wire_dtype",
    "wire_dtype_name",
]

_TORCH_TO_WIRE: Mapping[torch.dtype, str] = {
    torch.float32: "float32",
    torch.float16: "float16",
    torch.bfloat16: "bfloat16",
    torch.float64: "float64",
    torch.int8: "int8",
    torch.uint8: "uint8",
    torch.int16: "int16",
    torch.int32: "int32",
    torch.int64: "int64",
    torch.bool: "bool",
}
_WIRE_TO_TORCH: Mapping[str, torch.dtype] = {v: k for k, v in _TORCH_TO_WIRE.items()}


def wire_dtype_name(dtype: torch.dtype) -> str:
    """The wire name (05 §5.2) of a torch dtype."""
    return _TORCH_TO_WIRE[dtype]


def wire_dtype(dtype: torch.dtype) -> int:
    """The wire dtype code (05 §5.2) of a torch dtype."""
    return dtype_by_name(_TORCH_TO_WIRE[dtype]).code


def torch_dtype(code: int) -> torch.dtype:
    """The torch dtype of a wire dtype code."""
    return _WIRE_TO_TORCH[DTYPES[code].name]


def raw_of(t: torch.Tensor) -> RawTensor:
    """The wire view of a CPU tensor (no copy when it is contiguous)."""
    t = t.detach().contiguous()
    data = t.reshape(-1).view(torch.uint8).numpy() if t.numel() else b""
    return RawTensor(dtype_by_name(_TORCH_TO_WIRE[t.dtype]), tuple(t.shape), memoryview(data))


def flat_bytes(t: torch.Tensor) -> memoryview:
    """The little-endian bytes of a CPU tensor, as a view (a copy only if not contiguous)."""
    t = t.detach().contiguous()
    if not t.numel():
        return memoryview(b"")
    return memoryview(t.reshape(-1).view(torch.uint8).numpy())


def tensor_from_bytes(
    data: memoryview | bytes | bytearray, code: int, shape: tuple[int, ...], *, copy: bool = True
) -> torch.Tensor:
    """A tensor of wire dtype ``code`` and ``shape`` over ``data``; a copy unless ``copy`` is
    False (then ``data`` must be writable and outlive the tensor)."""
    dtype = torch_dtype(code)
    if not len(data):
        return torch.empty(shape, dtype=dtype)
    buffer = bytearray(data) if copy or isinstance(data, bytes) else data
    return torch.frombuffer(buffer, dtype=torch.uint8).view(dtype).reshape(shape)


def tensor_of(entry: TensorEntry, data: memoryview | bytes) -> torch.Tensor:
    """A torch tensor (a copy) of ``entry``'s bytes."""
    if entry.raw_len == 0:
        return torch.empty(entry.shape, dtype=torch_dtype(entry.dtype))
    return tensor_from_bytes(data, entry.dtype, entry.shape)
