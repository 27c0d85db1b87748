"""Replica averaging, model-agnostic: a block as one flat float32 vector (design §10.2).

A replica's delta is Δ = θ_local − θ_base over the block's *flat vector* (its tensors in a
fixed order, flattened and laid end to end). Averaging works on slices of that vector (the
shards of a round): each aggregator checks every delta slice (finite, norm bound), weighs
them, and every replica sets θ_new[slice] = θ_base[slice] + Σ w_k Δ_k[slice]. A slice travels
in one of four encodings; the lossy ones keep an error-feedback residual over the whole
vector, so what one round's quantisation drops is sent in the next round instead of lost:

* ``float32``: exact;
* ``float16`` / ``bfloat16``: half the bytes;
* ``int8``: a quarter of the bytes, plus one float32 scale per ``INT8_BLOCK_ELEMS`` elements
  of the slice (blockwise absmax quantisation).

Nothing here knows about the network; the byte layout belongs to the transport.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from spheroid_p2p.params import INT8_BLOCK_ELEMS

__all__ = [
    "ENCODING_DTYPES",
    "DeltaCheck",
    "Encoded",
    "FlatLayout",
    "SliceEncoder",
    "check_values",
    "decode_slice",
    "delta_of",
    "dequantize_int8",
    "quantize_int8",
    "tensors_norm",
    "weighted_sum",
]

#: Encoding name -> dtype of the values on the wire.
ENCODING_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "int8": torch.int8,
}


class FlatLayout:
    """The order and shapes of a block's float32 tensors: how they map onto one flat vector."""

    def __init__(self, like: Mapping[str, torch.Tensor]) -> None:
        self.names = list(like)
        self.shapes = [tuple(t.shape) for t in like.values()]
        self.dtypes = [t.dtype for t in like.values()]
        if any(d != torch.float32 for d in self.dtypes):
            raise ValueError("averaging works on blocks of float32 tensors")
        sizes = [math.prod(s) for s in self.shapes]
        self.offsets = [sum(sizes[:i]) for i in range(len(sizes))]
        self.numel = sum(sizes)

    def flatten(
        self, tensors: Mapping[str, torch.Tensor], out: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``tensors`` in this layout's order, in ``out`` (or a new float32 vector)."""
        if out is None:
            out = torch.empty(self.numel, dtype=torch.float32)
        for name, offset, shape in zip(self.names, self.offsets, self.shapes, strict=True):
            t = tensors[name]
            if tuple(t.shape) != shape:
                raise ValueError(f"{name}: shape {list(t.shape)} is not {list(shape)}")
            out[offset : offset + t.numel()] = t.detach().reshape(-1)
        return out

    def views(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """The tensors of a flat vector as views of it (no copy)."""
        return {
            name: flat[offset : offset + math.prod(shape)].view(shape)
            for name, offset, shape in zip(self.names, self.offsets, self.shapes, strict=True)
        }

    def unflatten(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """The tensors of a flat vector, in their own dtypes (copies)."""
        out = {}
        for name, offset, shape, dtype in zip(
            self.names, self.offsets, self.shapes, self.dtypes, strict=True
        ):
            n = math.prod(shape)
            out[name] = flat[offset : offset + n].reshape(shape).to(dtype, copy=True)
        return out


def delta_of(
    local: Mapping[str, torch.Tensor], base: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """θ_local − θ_base in float32, for the tensors of ``base``."""
    if set(local) != set(base):
        raise ValueError(f"local and base name different tensors: {sorted(set(local) ^ set(base))}")
    return {name: local[name].detach().float() - base[name].float() for name in base}


def tensors_norm(tensors: Mapping[str, torch.Tensor] | torch.Tensor) -> float:
    """The L2 norm of all tensors together: NaN if any value is NaN, inf if any is infinite.

    Each tensor's norm is one float32 pass (no copy; the relative error, about 1e-6 per
    element summed pairwise, is far below what the norm checks care about); a float32
    overflow of finite values is redone in float64, and tensors combine in float64.
    """
    values = [tensors] if isinstance(tensors, torch.Tensor) else list(tensors.values())
    total = 0.0
    for t in values:
        x = t.detach()
        norm = float(torch.linalg.vector_norm(x.float()))
        if math.isinf(norm) and bool(torch.isfinite(x).all()):
            norm = float(torch.linalg.vector_norm(x, dtype=torch.float64))
        total += norm * norm
    return math.sqrt(total)


def quantize_int8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Blockwise absmax int8 of a 1-D float32 slice: (q, one scale per block; 0 for a block
    of zeros)."""
    n = x.numel()
    blocks = -(-n // INT8_BLOCK_ELEMS)
    padded = torch.zeros(blocks * INT8_BLOCK_ELEMS, dtype=torch.float32)
    padded[:n] = x.reshape(-1)
    grid = padded.view(blocks, INT8_BLOCK_ELEMS)
    scale = grid.abs().amax(dim=1) / 127.0
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    q = torch.round(grid / safe[:, None]).clamp_(-127, 127).to(torch.int8)
    return q.reshape(-1)[:n].contiguous(), scale


def dequantize_int8(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``q × scale`` per block of ``INT8_BLOCK_ELEMS`` elements, in float32 (1-D)."""
    flat = q.reshape(-1).float()
    n = flat.numel()
    blocks = scale.numel()
    padded = torch.zeros(blocks * INT8_BLOCK_ELEMS, dtype=torch.float32)
    padded[:n] = flat
    return (padded.view(blocks, INT8_BLOCK_ELEMS) * scale.float()[:, None]).reshape(-1)[:n]


@dataclass(frozen=True)
class Encoded:
    """A slice in a wire encoding: the values, and the int8 scales (None otherwise)."""

    values: torch.Tensor
    scales: torch.Tensor | None = None


def decode_slice(encoded: Encoded) -> torch.Tensor:
    """The float32 values of an encoded slice."""
    if encoded.scales is not None:
        return dequantize_int8(encoded.values, encoded.scales)
    return encoded.values.float()


class SliceEncoder:
    """Encode float32 slices of a flat vector, with error feedback over the whole vector for
    the lossy encodings (what a slice's quantisation dropped goes out with its next delta)."""

    def __init__(self, encoding: str, error_feedback: bool = True) -> None:
        if encoding not in ENCODING_DTYPES:
            raise ValueError(f"unknown delta encoding {encoding!r}; known: {list(ENCODING_DTYPES)}")
        self.encoding = encoding
        self.error_feedback = error_feedback and encoding != "float32"
        self.residual: torch.Tensor | None = None

    def encode(
        self, x: torch.Tensor, start: int, numel: int, out: torch.Tensor | None = None
    ) -> Encoded:
        """Encode ``x`` (a 1-D float32 slice starting at element ``start`` of a vector of
        ``numel`` elements); updates the residual of that slice. ``out``: where the values go
        (a tensor of the encoding's dtype and ``x``'s length; new when None)."""
        if self.error_feedback:
            if self.residual is None or self.residual.numel() != numel:
                self.residual = torch.zeros(numel, dtype=torch.float32)
            r = self.residual[start : start + x.numel()]
            x = r.add_(x)  # the residual slice becomes x, then (in place) the new residual
        if self.encoding == "int8":
            q, scale = quantize_int8(x)
            if self.error_feedback:
                x.sub_(dequantize_int8(q, scale))
            return Encoded(q, scale)
        if out is None:
            out = torch.empty(x.numel(), dtype=ENCODING_DTYPES[self.encoding])
        out.copy_(x)
        if self.error_feedback:
            x.sub_(out)  # x - float(wire), without a copy
        return Encoded(out)

    def forget(self, start: int, end: int) -> None:
        """Drop the residual of a slice (its encoded delta was refused and re-based)."""
        if self.residual is not None:
            self.residual[start:end] = 0


@dataclass(frozen=True)
class DeltaCheck:
    """The reading of one decoded delta (or slice). ``problem`` is None when usable."""

    norm: float
    problem: str | None = None


def check_values(
    delta: Mapping[str, torch.Tensor] | torch.Tensor, base_norm: float, max_relative: float
) -> DeltaCheck:
    """Finite, and ``‖Δ‖ <= max_relative · ‖θ_base‖``? (The comparison with the other
    deltas of the shard is the round's job: it needs all of them.)"""
    norm = tensors_norm(delta)
    if not math.isfinite(norm):
        if isinstance(delta, torch.Tensor):
            return DeltaCheck(norm, "non-finite values (NaN or Inf)")
        bad = next((n for n, t in delta.items() if not bool(torch.isfinite(t).all())), None)
        if bad is None:
            return DeltaCheck(norm, "norm overflows float64")
        return DeltaCheck(norm, f"non-finite values (NaN or Inf) in {bad}")
    if base_norm > 0 and norm > max_relative * base_norm:
        return DeltaCheck(
            norm,
            f"norm {norm:.4g} exceeds {max_relative:g} x the base's norm {base_norm:.4g}",
        )
    return DeltaCheck(norm)


def weighted_sum(slices: list[tuple[torch.Tensor, float]], numel: int) -> torch.Tensor:
    """Σ w_k x_k in float32 (zeros when empty)."""
    out = torch.zeros(numel, dtype=torch.float32)
    for x, weight in slices:
        out.add_(x, alpha=weight)
    return out
