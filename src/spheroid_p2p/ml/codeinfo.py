"""The information budget through the code (issue 19, design note §13).

A block reads two things: the clean context bytes and a noisy code of the byte it predicts.
How much the code can tell is fixed by its scale against the noise: codebook rows have unit
norm in d_z dimensions, and the code reaches block b as ``c_y + sigma_b * eps`` in training,
as the chain's Euler output at inference. Two kinds of measurement, kept apart:

* :func:`code_capacity`: what a noisy *true* code tells about the byte at all, whatever the
  model (the mutual information I(y; c_y + sigma * eps) under the corpus's byte frequencies,
  by Monte Carlo with the exact Bayes posterior). An upper bound on what any block can read.
* :func:`code_use`: what each trained block makes of its code, by teacher-forced CE on the
  same windows with three inputs at the block's entry sigma: the noisy true code (``true``),
  the noisy code of an unrelated byte (``blind``: same marginal, no information, so the
  block's context-only prediction) and the code the chain itself hands it from noise
  (``chain``). ``blind - true`` is the **leak**: nats the block reads off the answer in
  training, which inference never gives it. ``blind - chain`` is what **flows** between
  blocks through the code at inference.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from spheroid_p2p.ml.block import BlockDenoiser, make_codebook
from spheroid_p2p.ml.config import ModelConfig
from spheroid_p2p.ml.noise import NoisePartition
from spheroid_p2p.ml.sampler import block_hop, block_points, initial_noise

__all__ = ["CodeUse", "capacity_curve", "code_capacity", "code_use", "entropy"]


def entropy(counts: torch.Tensor) -> float:
    """Entropy in nats of the distribution proportional to ``counts``."""
    p = counts.double() / counts.sum()
    p = p[p > 0]
    return float(-(p * p.log()).sum())


@torch.no_grad()
def code_capacity(
    cfg: ModelConfig,
    targets: torch.Tensor,  # (n,) bytes of the corpus: their frequencies are the prior
    sigma: float,
    seed: int = 0,
    samples: int = 1 << 16,
    batch: int = 4096,
) -> float:
    """I(y; c_y + sigma * eps) in nats, y distributed as ``targets``: the mean of
    log p(y | z) - log p(y) over ``samples`` draws, with the exact posterior
    p(y | z) ~ p(y) exp(-|z - c_y|^2 / 2 sigma^2)."""
    codebook = make_codebook(cfg).double()
    counts = torch.bincount(targets, minlength=cfg.vocab).double()
    log_prior = (counts / counts.sum()).log()  # -inf for bytes that never occur: never drawn
    gen = torch.Generator().manual_seed(seed)
    drawn = targets[torch.randint(0, targets.numel(), (samples,), generator=gen)]
    total = 0.0
    for start in range(0, samples, batch):
        y = drawn[start : start + batch]
        z = codebook[y] + sigma * torch.randn(y.numel(), cfg.d_z, generator=gen).double()
        dist2 = torch.cdist(z, codebook).pow(2)  # (n, vocab)
        log_post = torch.log_softmax(log_prior - dist2 / (2 * sigma * sigma), dim=-1)
        total += float((log_post.gather(1, y[:, None])[:, 0] - log_prior[y]).sum())
    return max(0.0, total / samples)


@dataclass
class CodeUse:
    """Teacher-forced CE of one block at its entry sigma, by what its code holds."""

    block: int
    sigma: float
    capacity: float  # nats the noisy true code holds about the byte (any model)
    ce_true: float
    ce_blind: float
    ce_chain: float

    @property
    def leak(self) -> float:
        return self.ce_blind - self.ce_true

    @property
    def flows(self) -> float:
        return self.ce_blind - self.ce_chain


def _ce(
    block: BlockDenoiser, x: torch.Tensor, z: torch.Tensor, sigma: float, y: torch.Tensor
) -> float:
    """Summed next-byte CE of ``block`` reading codes ``z`` at ``sigma``."""
    sig = torch.full((x.shape[0],), sigma)
    logits = block(x, z, sig).logits
    flat = logits.reshape(-1, logits.shape[-1])
    return float(F.cross_entropy(flat, y.reshape(-1), reduction="sum"))


@torch.no_grad()
def code_use(
    blocks: Sequence[BlockDenoiser],
    windows: torch.Tensor,  # (W, T+1)
    seeds: Sequence[int] = (0, 1, 2),
    batch: int = 32,
) -> list[CodeUse]:
    """:class:`CodeUse` of every block of a layout S model on the same windows and seeds.
    One traversal per batch gives every block its chain input (block 0's is the noise at
    sigma_max, as at inference)."""
    cfg = blocks[0].cfg
    if cfg.layout != "S":
        raise ValueError("the code budget is measured on per-byte (layout S) models")
    for block in blocks:
        block.eval()
    points = block_points(NoisePartition(cfg))
    sums = torch.zeros(len(blocks), 3, dtype=torch.float64)  # true, blind, chain
    count = 0
    for seed in seeds:
        gen = torch.Generator().manual_seed(seed * 7919)
        for start in range(0, windows.shape[0], batch):
            chunk = windows[start : start + batch]
            x, y = chunk[:, :-1], chunk[:, 1:]
            z = initial_noise((*y.shape, cfg.d_z), points[0][0][0], gen)
            for b, block in enumerate(blocks):
                pts, nxt = points[b]
                sigma = pts[0]
                eps = torch.randn(*y.shape, cfg.d_z, generator=gen)
                sums[b, 0] += _ce(block, x, block.codebook[y] + sigma * eps, sigma, y)
                sums[b, 1] += _ce(block, x, sigma * eps, sigma, y)
                sums[b, 2] += _ce(block, x, z, sigma, y)
                if nxt is not None:
                    z = block_hop(block, x, z, pts, nxt).z
            count += y.numel()
    means = (sums / count).tolist()
    targets = windows[:, 1:].reshape(-1)
    return [
        CodeUse(
            block=b,
            sigma=points[b][0][0],
            capacity=code_capacity(cfg, targets, points[b][0][0]),
            ce_true=means[b][0],
            ce_blind=means[b][1],
            ce_chain=means[b][2],
        )
        for b in range(len(blocks))
    ]


def capacity_curve(
    cfg: ModelConfig, targets: torch.Tensor, sigmas: Sequence[float]
) -> dict[float, float]:
    """:func:`code_capacity` at several sigmas (the curve a code scale choice sits on)."""
    return {s: code_capacity(cfg, targets, s) for s in sigmas if s > 0 and math.isfinite(s)}
