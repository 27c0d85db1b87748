"""The one-traversal Euler sampler in code space (design note §11, §12).

Pure functions: the sampler never knows whether a block runs in this process or on another
peer. :func:`block_hop` is exactly the work one peer does for one traversal (its own Euler
steps); :func:`traverse` chains hops in block order, as a request flowing 0 -> 1 -> ... -> B-1.

Euler on the probability-flow ODE dz/dsigma = (z - D)/sigma, with D_hat = softmax(logits) @ C
(the expected code under the block's prediction).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass

import torch

from spheroid_p2p.ml.block import BlockDenoiser, SpanPlan
from spheroid_p2p.ml.noise import NoisePartition

__all__ = [
    "HopResult",
    "StepHook",
    "block_hop",
    "block_points",
    "euler_step",
    "initial_noise",
    "traverse",
]

#: Entered around every denoiser call of a hop: lets the caller interleave the steps of
#: several requests on one compute (a server's fair scheduling); None runs them straight.
StepHook = Callable[[], AbstractContextManager[object]]


def euler_step(
    z: torch.Tensor, d_hat: torch.Tensor, sigma: float, sigma_next: float
) -> torch.Tensor:
    """One Euler step from sigma to sigma_next. Shapes (B, N, d_z)."""
    return z + (sigma_next - sigma) * (z - d_hat) / sigma


def initial_noise(
    shape: Sequence[int], sigma_top: float, generator: torch.Generator
) -> torch.Tensor:
    """z at the top of the schedule: pure Gaussian noise of std sigma_top."""
    return sigma_top * torch.randn(*shape, generator=generator)


def block_points(
    partition: NoisePartition, steps_per_block: int | None = None
) -> list[tuple[list[float], float | None]]:
    """For each block: its sigma points, and the first point of the next block (None for the
    last block, whose last point gives the final logits)."""
    schedule = partition.schedule(steps_per_block)
    per_block: list[list[float]] = [[] for _ in range(partition.cfg.n_blocks)]
    for block, sigma in schedule:
        per_block[block].append(sigma)
    out: list[tuple[list[float], float | None]] = []
    for b, points in enumerate(per_block):
        nxt = per_block[b + 1][0] if b + 1 < len(per_block) else None
        out.append((points, nxt))
    return out


@dataclass
class HopResult:
    """What one block's part of a traversal produces."""

    z: torch.Tensor  # (B, N, d_z) after the block's last Euler step (unchanged by a final call)
    first_logits: torch.Tensor  # (B, N, vocab) of the block's first call
    logits: torch.Tensor  # (B, N, vocab) of the block's last call
    estimate: torch.Tensor | None = None  # the last call's expected code (self-conditioning)


@torch.no_grad()
def block_hop(
    block: BlockDenoiser,
    x: torch.Tensor,  # (B, Tc) clean context bytes
    z: torch.Tensor,  # (B, N, d_z) incoming noisy codes
    points: Sequence[float],
    next_sigma: float | None,
    plan: SpanPlan | None = None,
    gate: StepHook | None = None,
    estimate: torch.Tensor | None = None,
) -> HopResult:
    """Run one block's Euler steps over its sigma ``points``.

    If ``next_sigma`` is None this is the last block, and its last call's logits are the
    traversal's output.
    """
    first = logits = torch.empty(0)
    for j, sigma in enumerate(points):
        sig = torch.full((x.shape[0],), sigma, dtype=torch.float32, device=x.device)
        with gate() if gate is not None else contextlib.nullcontext():
            logits = block(x, z, sig, plan, estimate).logits  # (B, N, vocab)
        if j == 0:
            first = logits
        target = points[j + 1] if j + 1 < len(points) else next_sigma
        if target is None:
            break
        d_hat = block.expected_code(logits)
        estimate = d_hat if block.cfg.self_cond else None
        z = euler_step(z, d_hat, sigma, target)
    return HopResult(z=z, first_logits=first, logits=logits, estimate=estimate)


def traverse(
    hop: Callable[[int, torch.Tensor], HopResult], n_blocks: int, z0: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Chain ``hop(block, z)`` over blocks 0..B-1 (one traversal).

    Returns (final logits, first block's first logits), each (B, N, vocab).
    """
    z = z0
    first = logits = torch.empty(0)
    for b in range(n_blocks):
        result = hop(b, z)
        if b == 0:
            first = result.first_logits
        z, logits = result.z, result.logits
    return logits, first
