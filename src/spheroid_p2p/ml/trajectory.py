"""Trajectory-matched training inputs (issue 19): the codes the chain itself hands a block.

At sampling, block b never sees a noisy *true* code: it gets the Euler output of blocks
0..b-1 run from noise, which carries their belief about the bytes, not the bytes. A block
trained only on noisy true codes learns to read what the chain cannot give it (at its sigma
the true code leaks a little), and reads the chain's code wrongly. :class:`ChainInputs` runs
the earlier blocks (frozen: a trainer holds copies of their published versions, never their
optimizer state) from fresh noise on a training batch and returns what block b receives, at
its entry sigma, so that block b can train on it (``BlockTrainer.trajectory``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from spheroid_p2p.ml.block import BlockDenoiser
from spheroid_p2p.ml.config import ModelConfig, TrainConfig
from spheroid_p2p.ml.noise import NoisePartition
from spheroid_p2p.ml.sampler import block_hop, block_points, initial_noise

__all__ = ["TRAJECTORY_Z_LR_SCALE", "ChainInputs", "trains_chained", "w_in_rate"]

#: W_in's learning-rate multiplier (``TrainConfig.z_lr_scale``) of a block trained
#: trajectory-matched: the point of chain inputs is that W_in learns what the chain's code is
#: worth, so it must learn (the default, 0, keeps it at zero: README, issue 19).
TRAJECTORY_Z_LR_SCALE = 0.1


def trains_chained(cfg: ModelConfig, block: int, chain_fraction: float) -> bool:
    """Whether a trainer of ``block`` trains trajectory-matched: block 0 reads pure noise
    either way, and span models (layout P) keep noisy true codes."""
    return chain_fraction > 0 and block > 0 and cfg.layout == "S"


def w_in_rate(cfg: ModelConfig, block: int, chain_fraction: float) -> float:
    """``TrainConfig.z_lr_scale`` for a trainer of ``block``: W_in learns only where the
    block trains trajectory-matched, else it stays at zero (the default)."""
    if trains_chained(cfg, block, chain_fraction):
        return TRAJECTORY_Z_LR_SCALE
    return TrainConfig.z_lr_scale


class ChainInputs:
    """The input of block ``len(earlier)``: earlier blocks' Euler output from noise."""

    def __init__(self, cfg: ModelConfig, earlier: Sequence[BlockDenoiser]) -> None:
        if not earlier:
            raise ValueError("block 0 reads pure noise: it has no earlier blocks to match")
        self.cfg = cfg
        self.earlier = list(earlier)
        for block in self.earlier:
            block.eval()
            block.requires_grad_(False)
        self.points = block_points(NoisePartition(cfg))
        #: the sigma at which the next block receives the chain's code
        self.sigma = self.points[len(self.earlier)][0][0]

    def replace(self, index: int, block: BlockDenoiser) -> None:
        """A newer version of earlier block ``index`` (refreshed from the swarm)."""
        block.eval()
        block.requires_grad_(False)
        self.earlier[index] = block

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, n_rows: int, generator: torch.Generator) -> torch.Tensor:
        """(B, n_rows, d_z): the code block ``len(earlier)`` receives for contexts ``x``."""
        z = initial_noise((x.shape[0], n_rows, self.cfg.d_z), self.points[0][0][0], generator)
        for b, block in enumerate(self.earlier):
            pts, nxt = self.points[b]
            z = block_hop(block, x, z, pts, nxt).z
        return z
