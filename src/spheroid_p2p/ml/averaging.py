"""Replica averaging, model-agnostic: named tensors in, named tensors out (design §10.2).

A replica sends Δ = θ_local − θ_base; the aggregator checks every delta against the base
(names, shapes, finiteness, norm), then sets θ_new = θ_base + Σ w_k Δ_k. Deltas can travel in
four encodings; the lossy ones keep an error-feedback residual on the sender, so what one
round's quantisation drops is sent in the next round instead of being lost:

* ``float32``: exact;
* ``float16`` / ``bfloat16``: half the bytes;
* ``int8``: a quarter of the bytes, plus one float32 scale per ``INT8_BLOCK_ELEMS`` elements
  (blockwise absmax quantisation), sent as a second tensor named ``<name>:scale``.

Nothing here knows about the network; serialisation belongs to the transport.
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
    "DeltaEncoder",
    "apply_average",
    "check_delta",
    "decode_delta",
    "delta_of",
    "tensors_norm",
]

#: Encoding name -> dtype of the main tensor on the wire.
ENCODING_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "int8": torch.int8,
}
SCALE_SUFFIX = ":scale"


def delta_of(
    local: Mapping[str, torch.Tensor], base: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """θ_local − θ_base in float32, for the tensors of ``base``."""
    if set(local) != set(base):
        raise ValueError(f"local and base name different tensors: {sorted(set(local) ^ set(base))}")
    return {name: local[name].detach().float() - base[name].float() for name in base}


def tensors_norm(tensors: Mapping[str, torch.Tensor]) -> float:
    """The L2 norm of all tensors together: NaN if any value is NaN, inf if any is infinite.

    Each tensor's norm is one float32 pass (no copy; the relative error, about 1e-6 per
    element summed pairwise, is far below what the norm checks care about); a float32
    overflow of finite values is redone in float64, and tensors combine in float64.
    """
    total = 0.0
    for t in tensors.values():
        x = t.detach()
        norm = float(torch.linalg.vector_norm(x.float()))
        if math.isinf(norm) and bool(torch.isfinite(x).all()):
            norm = float(torch.linalg.vector_norm(x, dtype=torch.float64))
        total += norm * norm
    return math.sqrt(total)


def _quantize_int8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    flat = x.reshape(-1)
    n = flat.numel()
    blocks = -(-n // INT8_BLOCK_ELEMS)
    padded = torch.zeros(blocks * INT8_BLOCK_ELEMS, dtype=torch.float32)
    padded[:n] = flat
    grid = padded.view(blocks, INT8_BLOCK_ELEMS)
    scale = grid.abs().amax(dim=1) / 127.0
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    q = torch.round(grid / safe[:, None]).clamp_(-127, 127).to(torch.int8)
    return q.reshape(-1)[:n].reshape(x.shape), scale


def _dequantize_int8(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    flat = q.reshape(-1).float()
    n = flat.numel()
    blocks = scale.numel()
    padded = torch.zeros(blocks * INT8_BLOCK_ELEMS, dtype=torch.float32)
    padded[:n] = flat
    out = padded.view(blocks, INT8_BLOCK_ELEMS) * scale.float()[:, None]
    return out.reshape(-1)[:n].reshape(q.shape)


def int8_scale_shape(shape: tuple[int, ...]) -> tuple[int]:
    """Shape of the scale tensor that goes with an int8 tensor of ``shape``."""
    return (-(-math.prod(shape) // INT8_BLOCK_ELEMS),)


class DeltaEncoder:
    """Encode float32 deltas for the wire, with error feedback for the lossy encodings."""

    def __init__(self, encoding: str, error_feedback: bool = True) -> None:
        if encoding not in ENCODING_DTYPES:
            raise ValueError(f"unknown delta encoding {encoding!r}; known: {list(ENCODING_DTYPES)}")
        self.encoding = encoding
        self.error_feedback = error_feedback and encoding != "float32"
        self.residual: dict[str, torch.Tensor] = {}

    def encode(self, delta: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Wire tensors for ``delta``; updates the residual. Contiguous, CPU."""
        out: dict[str, torch.Tensor] = {}
        for name, d in delta.items():
            x = d.float()
            if self.error_feedback and name in self.residual:
                # the residual buffer becomes x, then (in place) the new residual
                x = self.residual.pop(name).add_(x)
            elif self.error_feedback:
                x = x.clone()
            if self.encoding == "int8":
                q, scale = _quantize_int8(x)
                out[name] = q.contiguous()
                out[name + SCALE_SUFFIX] = scale.contiguous()
                if self.error_feedback:
                    self.residual[name] = x.sub_(_dequantize_int8(q, scale))
            else:
                wire = x.to(ENCODING_DTYPES[self.encoding]).contiguous()
                out[name] = wire
                if self.error_feedback:
                    self.residual[name] = x.sub_(wire)  # x - float(wire), without a copy
        return out

    def reset(self) -> None:
        """Drop the residual (after the replica moves to another block)."""
        self.residual.clear()


@dataclass(frozen=True)
class DeltaCheck:
    """The aggregator's reading of one decoded delta. ``problem`` is None when usable."""

    norm: float
    problem: str | None = None


def decode_delta(
    wire: Mapping[str, torch.Tensor], encoding: str, like: Mapping[str, torch.Tensor]
) -> tuple[dict[str, torch.Tensor], str | None]:
    """float32 deltas from wire tensors, checked against the base ``like``.

    Returns (delta, problem); a delta with the wrong names, dtypes or shapes comes back empty
    with the problem stated, and is never applied.
    """
    if encoding not in ENCODING_DTYPES:
        return {}, f"unknown encoding {encoding!r}"
    want = dict.fromkeys(like)
    if encoding == "int8":
        want.update({name + SCALE_SUFFIX: None for name in like})
    if set(wire) != set(want):
        missing = sorted(set(want) - set(wire))[:3]
        extra = sorted(set(wire) - set(want))[:3]
        return {}, f"tensor names differ from the base (missing {missing}, unexpected {extra})"
    dtype = ENCODING_DTYPES[encoding]
    out: dict[str, torch.Tensor] = {}
    for name, base in like.items():
        t = wire[name]
        if t.dtype != dtype:
            return {}, f"{name}: dtype {t.dtype} is not the {encoding} encoding"
        if tuple(t.shape) != tuple(base.shape):
            return {}, f"{name}: shape {list(t.shape)} differs from the base {list(base.shape)}"
        if encoding == "int8":
            scale = wire[name + SCALE_SUFFIX]
            if scale.dtype != torch.float32 or tuple(scale.shape) != int8_scale_shape(
                tuple(base.shape)
            ):
                return {}, f"{name}: bad int8 scale tensor {scale.dtype}{list(scale.shape)}"
            out[name] = _dequantize_int8(t, scale)
        else:
            out[name] = t.float()
    return out, None


def check_delta(
    delta: Mapping[str, torch.Tensor], base_norm: float, max_relative: float
) -> DeltaCheck:
    """Finite, and ``‖Δ‖ <= max_relative · ‖θ_base‖``? (The comparison with the other
    deltas of the round is the round's job: it needs all of them.)"""
    norm = tensors_norm(delta)
    if not math.isfinite(norm):
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


def apply_average(
    base: Mapping[str, torch.Tensor],
    deltas: list[tuple[Mapping[str, torch.Tensor], float]],
    outer_lr: float = 1.0,
) -> dict[str, torch.Tensor]:
    """θ_base + outer_lr · Σ w_k Δ_k (weights already normalised); the base when empty."""
    out: dict[str, torch.Tensor] = {}
    for name, b in base.items():
        acc = b.detach().float().clone()
        for delta, weight in deltas:
            acc.add_(delta[name], alpha=outer_lr * weight)
        out[name] = acc.to(b.dtype)
    return out
