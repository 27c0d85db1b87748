"""Noise levels: equal-mass partition of a truncated lognormal, sampling, schedules, EDM.

References: Karras et al. 2022 (EDM), ``training/loss.py`` of NVlabs/edm; DiffusionBlocks
``get_block_sigmas`` / ``get_discrete_sigmas`` (design note §5, §6, §11).

Block indexing follows DiffusionBlocks: network block 0 owns the *highest* noise interval,
block B-1 the lowest, so chain order (0, 1, ..., B-1) is the order of inference.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from spheroid_p2p.ml.config import ModelConfig

__all__ = ["NoisePartition", "edm_scalings", "loss_weight"]

_SQRT2 = math.sqrt(2.0)


def _cdf(x: float) -> float:
    return 0.5 * (1.0 + math.erf(x / _SQRT2))


def _icdf(u: float) -> float:
    return _SQRT2 * torch.erfinv(torch.tensor(2.0 * u - 1.0, dtype=torch.float64)).item()


@dataclass(frozen=True)
class NoisePartition:
    """The noise range of a model cut into equal-probability intervals, one per block."""

    cfg: ModelConfig

    def u(self, sigma: float) -> float:
        """Lognormal CDF of ``sigma`` (the "mass coordinate" of §5)."""
        return _cdf((math.log(sigma) - self.cfg.p_mean) / self.cfg.p_std)

    def sigma_at(self, u: float) -> float:
        """Inverse of :meth:`u`."""
        return math.exp(self.cfg.p_mean + self.cfg.p_std * _icdf(u))

    def boundaries(self) -> list[float]:
        """sigma_0 = sigma_min < ... < sigma_B = sigma_max, equal lognormal mass between."""
        lo, hi = self.u(self.cfg.sigma_min), self.u(self.cfg.sigma_max)
        n = self.cfg.n_blocks
        inner = [self.sigma_at(lo + (hi - lo) * i / n) for i in range(1, n)]
        return [self.cfg.sigma_min, *inner, self.cfg.sigma_max]

    def interval(self, block: int) -> tuple[float, float]:
        """Block ``block``'s own interval (unwidened). Block 0 owns the highest one."""
        b = self.boundaries()
        n = self.cfg.n_blocks
        return b[n - 1 - block], b[n - block]

    def training_interval(self, block: int) -> tuple[float, float]:
        """The interval widened by ``gamma`` of its log-width on both sides, clipped."""
        lo, hi = self.interval(block)
        width = math.log(hi) - math.log(lo)
        g = self.cfg.gamma * width
        return (
            max(self.cfg.sigma_min, math.exp(math.log(lo) - g)),
            min(self.cfg.sigma_max, math.exp(math.log(hi) + g)),
        )

    def sample(self, block: int, n: int, generator: torch.Generator) -> torch.Tensor:
        """``n`` sigmas from block ``block``'s widened interval by inverse-CDF sampling. (n,)"""
        lo, hi = self.training_interval(block)
        ulo, uhi = self.u(lo), self.u(hi)
        u = ulo + (uhi - ulo) * torch.rand(n, generator=generator, dtype=torch.float64)
        u = u.clamp(1e-12, 1 - 1e-12)
        z = _SQRT2 * torch.erfinv(2.0 * u - 1.0)
        return torch.exp(self.cfg.p_mean + self.cfg.p_std * z).to(torch.float32)

    def schedule(self, steps_per_block: int | None = None) -> list[tuple[int, float]]:
        """Inference points ``(block, sigma)``, high to low, at equal CDF spacing over the whole
        range including both ends; block b owns points [b*m, (b+1)*m) (design note §11).

        Each point lies inside its block's interval, so one pass over the list is one
        traversal of the chain with m denoiser calls per block.
        """
        m = steps_per_block or self.cfg.euler_steps_per_block
        n_points = self.cfg.n_blocks * m
        lo, hi = self.u(self.cfg.sigma_min), self.u(self.cfg.sigma_max)
        if n_points == 1:
            return [(0, self.cfg.sigma_max)]
        points = []
        for i in range(n_points):
            u = hi - (hi - lo) * i / (n_points - 1)
            sigma = (
                self.cfg.sigma_max
                if i == 0
                else self.cfg.sigma_min
                if i == n_points - 1
                else self.sigma_at(u)
            )
            points.append((i // m, sigma))
        return points


def edm_scalings(sigma: torch.Tensor, sigma_data: float) -> tuple[torch.Tensor, ...]:
    """(c_skip, c_out, c_in, c_noise) of EDM for a tensor of sigmas (same shape)."""
    s2 = sigma * sigma
    d2 = sigma_data * sigma_data
    c_skip = d2 / (s2 + d2)
    c_out = sigma * sigma_data / torch.sqrt(s2 + d2)
    c_in = 1.0 / torch.sqrt(s2 + d2)
    c_noise = torch.log(sigma) / 4.0
    return c_skip, c_out, c_in, c_noise


def loss_weight(sigma: torch.Tensor, sigma_data: float) -> torch.Tensor:
    """EDM's lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma * sigma_data)^2."""
    return (sigma * sigma + sigma_data * sigma_data) / (sigma * sigma_data) ** 2
