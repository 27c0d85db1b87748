"""Trajectory-matched training in a swarm (issue 19): the earlier blocks' published versions.

A trainer of block b > 0 started with ``--chain-fraction F`` trains a fraction F of its
batches on the code the chain hands block b (``ml.trajectory.ChainInputs``) instead of a
noisy true code. The chain is the swarm's: :class:`ChainFeed` fetches the newest published
version of every block before b (as the evaluator does: from their holders, verified, only
blocks that changed) when training starts and again every ``--chain-refresh`` steps, and swaps
the trainer's inputs for the new ones between two steps. Until every earlier block has a
version, block b trains on noisy true codes only. The trainer never holds the earlier blocks'
optimizer state, only their weights, frozen.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import torch

from spheroid_p2p.ml.block import BlockDenoiser
from spheroid_p2p.ml.config import ModelConfig
from spheroid_p2p.ml.trajectory import ChainInputs
from spheroid_p2p.node.evaluator import SwarmEvaluator
from spheroid_p2p.node.transfer import FetchError

if TYPE_CHECKING:
    from spheroid_p2p.node.swarm import SwarmView
    from spheroid_p2p.node.trainer import TrainingJob
    from spheroid_p2p.node.transfer import Transfers

__all__ = ["ChainFeed"]

log = logging.getLogger(__name__)

#: Seconds one fetch of the earlier blocks may take before it is tried again later.
CHAIN_FETCH_TIMEOUT_S = 120.0
#: Longest wait between two looks at the job's step count (gossip changes wake it sooner).
CHAIN_WAKE_S = 30.0


class ChainFeed:
    """Keeps one training job's chain inputs on the swarm's newest earlier blocks."""

    def __init__(
        self,
        swarm: SwarmView,
        transfers: Transfers,
        model: ModelConfig,
        job: TrainingJob,
        fraction: float,
        refresh_steps: int,
        tag: str,
    ) -> None:
        self.swarm = swarm
        self.job = job
        self.fraction = fraction
        self.refresh_steps = refresh_steps
        self.tag = tag
        self.fetcher = SwarmEvaluator(swarm, transfers, model, torch.empty(0))
        self.versions: list[int] = []
        self.refreshes = 0

    @property
    def fetched_bytes(self) -> int:
        return self.fetcher.fetched_bytes

    async def run(self) -> None:
        job, block = self.job, self.job.block
        next_at = job.steps_done
        while not job.done and not self.swarm.stopping and not job.stopped.is_set():
            if job.steps_done >= next_at:
                try:
                    earlier = await self.fetcher.assemble(CHAIN_FETCH_TIMEOUT_S, upto=block)
                except FetchError as exc:
                    log.info("[%s] block %d: chain inputs not refreshed: %s", self.tag, block, exc)
                else:
                    self._install(earlier)
                next_at = job.steps_done + self.refresh_steps
            await self.swarm.changed(CHAIN_WAKE_S)

    def _install(self, earlier: list[BlockDenoiser]) -> None:
        versions = self.fetcher.versions(self.job.block)
        if versions == self.versions:
            return
        bad = [
            b
            for b, block in enumerate(earlier)
            if not all(bool(torch.isfinite(p).all()) for p in block.parameters())
        ]
        if bad:  # a published version with NaN or inf weights: never trained on
            log.warning(
                "[%s] block %d: versions %s of blocks %s hold weights that are not finite; "
                "keeping the chain inputs of versions %s",
                self.tag, self.job.block, versions, bad, self.versions or "none",
            )  # fmt: skip
            return
        chain = ChainInputs(self.job.cfg, earlier)
        trainer = self.job.trainer
        trainer.trajectory_sigma = chain.sigma
        trainer.trajectory = chain  # one attribute: the compute thread sees old or new, whole
        trainer.trajectory_fraction = self.fraction
        self.versions = versions
        self.refreshes += 1
        log.info(
            "[%s] block %d step %d: chain inputs from versions %s of blocks 0..%d "
            "(%.2f MB fetched for the chain so far)",
            self.tag,
            self.job.block,
            self.job.steps_done,
            versions,
            self.job.block - 1,
            self.fetched_bytes / 1e6,
        )
