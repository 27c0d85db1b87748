"""Span generation with the one-traversal sampler (design note §12), in pieces a chain of
peers can share: each piece is a pure function of its inputs and a seed.

* :func:`window` cuts the clean prefix a traversal conditions on;
* :func:`start_noise` draws the traversal's initial codes from its seed (the first hop does
  this, so the client needs to know nothing about the model);
* :func:`run_blocks` is one hop: blocks ``first..last`` applying their Euler steps;
* :func:`pick_bytes` turns the final logits into the span's bytes (argmax or seeded sampling).

:func:`generate` chains them in one process; a distributed traversal runs the same functions
on different peers and must produce the same bytes.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from spheroid_p2p.ml.block import BlockDenoiser, SpanPlan
from spheroid_p2p.ml.combine import COMBINE_WEIGHTED, Combination
from spheroid_p2p.ml.config import ModelConfig
from spheroid_p2p.ml.noise import NoisePartition
from spheroid_p2p.ml.sampler import StepHook, block_hop, block_points, initial_noise

__all__ = ["generate", "pick_bytes", "run_blocks", "start_noise", "window"]


def window(cfg: ModelConfig, prefix: bytes) -> bytes:
    """The clean bytes one traversal sees: the last ``context - span + 1`` (layout P) or
    ``context`` (layout S) bytes of the prefix."""
    if not prefix:
        raise ValueError("generation needs at least one prompt byte")
    keep = cfg.context - cfg.span + 1 if cfg.layout == "P" else cfg.context
    return prefix[-keep:]


def noisy_slots(cfg: ModelConfig, clean: bytes) -> int:
    """How many noisy rows a traversal carries: every position (S) or the span (P)."""
    return len(clean) if cfg.layout == "S" else cfg.span


def start_noise(cfg: ModelConfig, clean: bytes, seed: int, steps_per_block: int) -> torch.Tensor:
    """Initial codes (1, N, d_z): Gaussian noise at the top of the schedule, from ``seed``."""
    top = NoisePartition(cfg).schedule(steps_per_block)[0][1]
    gen = torch.Generator().manual_seed(seed)
    return initial_noise((1, noisy_slots(cfg, clean), cfg.d_z), top, gen)


@torch.no_grad()
def run_blocks(
    blocks: Mapping[int, BlockDenoiser],
    first: int,
    last: int,
    clean: bytes,
    z: torch.Tensor,
    steps_per_block: int,
    gate: StepHook | None = None,
    mix: Combination | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One hop: blocks first..last in order. Returns (z, final logits if ``last`` is the
    model's last block, else None). ``gate`` is entered around every denoiser call. Under a
    combined rule (``mix``, ``ml.combine``) each block adds its log-probabilities of the
    output rows to ``mix`` and the final logits are the combination's."""
    cfg = blocks[first].cfg
    points = block_points(NoisePartition(cfg), steps_per_block)
    x = torch.tensor(list(clean), dtype=torch.long)[None]  # (1, Tc)
    plan = SpanPlan.generation(len(clean), cfg.span) if cfg.layout == "P" else None
    logits = None
    for b in range(first, last + 1):
        pts, nxt = points[b]
        result = block_hop(blocks[b], x, z, pts, nxt, plan, gate)
        z = result.z
        if mix is not None:  # (adds nothing under COMBINE_LAST)
            rows = result.logits[:, -1:] if cfg.layout == "S" else result.logits
            mix.add(rows, blocks[b].quality)
        if nxt is None:
            logits = mix.output(result.logits, b + 1) if mix is not None else result.logits
    return z, logits


def pick_bytes(cfg: ModelConfig, logits: torch.Tensor, temperature: float, seed: int) -> bytes:
    """The span's bytes from the final logits (1, N, 256): layout S emits the last row's byte,
    layout P every slot's. Temperature 0 is argmax; otherwise seeded sampling."""
    rows = logits[0, -1:] if cfg.layout == "S" else logits[0]  # (K, 256)
    if temperature <= 0:
        return bytes(rows.argmax(dim=-1).tolist())
    gen = torch.Generator().manual_seed(seed ^ 0x5EED)
    probs = torch.softmax(rows.double() / temperature, dim=-1)
    return bytes(torch.multinomial(probs, 1, generator=gen)[:, 0].tolist())


def generate(
    blocks: Mapping[int, BlockDenoiser],
    prompt: bytes,
    n_bytes: int,
    seed: int = 0,
    temperature: float = 0.0,
    steps_per_block: int | None = None,
    combine: int = COMBINE_WEIGHTED,
) -> bytes:
    """Generate ``n_bytes`` after ``prompt`` in one process: ceil(n / span) traversals."""
    cfg = blocks[0].cfg
    m = steps_per_block or cfg.euler_steps_per_block
    out = b""
    traversal = 0
    while len(out) < n_bytes:
        clean = window(cfg, prompt + out)
        z = start_noise(cfg, clean, seed + traversal, m)
        mix = Combination(combine)
        _, logits = run_blocks(blocks, 0, cfg.n_blocks - 1, clean, z, m, mix=mix)
        assert logits is not None
        out += pick_bytes(cfg, logits, temperature, seed + traversal)
        traversal += 1
    return out[:n_bytes]
