"""A node's block trainer: trains exactly one block, checkpoints atomically, resumes after a crash.

The trainer holds one :class:`~spheroid_p2p.ml.training.BlockTrainer` (one block and its own
AdamW state, never another block's parameters). Steps run on the node's compute thread in
slices, so the event loop keeps serving gossip between them. Every ``checkpoint_every`` steps
the whole training state (weights, optimizer moments, step, noise generator) is written
atomically to ``data_dir/block-B.trainer.safetensors``; a node killed with ``kill -9`` and
restarted with the same data dir continues from there. When the step budget is done, the block
is written to ``data_dir/block-B.safetensors`` for serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch

from spheroid_p2p.ml.checkpoint import (
    load_trainer_or_previous,
    remove_stale_temporaries,
    save_block,
    save_trainer,
)
from spheroid_p2p.ml.config import ModelConfig, TrainConfig
from spheroid_p2p.ml.data import ByteCorpus
from spheroid_p2p.ml.training import BlockTrainer
from spheroid_p2p.node.turns import StepGate

__all__ = ["TrainingJob", "TrainingProgress"]

#: The step gate's key for training steps (no peer id is empty).
TRAINING = b""
#: Loss points a job keeps for the swarm page (one per slice of 10 steps).
HISTORY_POINTS = 1000

log = logging.getLogger(__name__)


@dataclass
class TrainingProgress:
    """Where a training job stands."""

    block: int
    step: int
    total: int
    loss: float
    seconds: float
    #: steps this process has done (for the rate: steps / seconds)
    steps_here: int = 0

    @property
    def rate(self) -> float:
        """Steps per second in this process."""
        return self.steps_here / self.seconds if self.seconds > 0 else 0.0

    @property
    def eta_s(self) -> float | None:
        """Seconds to the end of the budget at the current rate (None: no rate yet)."""
        rate = self.rate
        return max(0, self.total - self.step) / rate if rate > 0 else None


class TrainingJob:
    """Train one block for ``tcfg.steps`` steps, checkpointing as it goes."""

    def __init__(
        self,
        cfg: ModelConfig,
        tcfg: TrainConfig,
        block: int,
        corpus: ByteCorpus,
        data_dir: Path,
        seed: int,
        tag: str,
        checkpoint_every: int = 50,
    ) -> None:
        self.cfg = cfg
        self.tcfg = tcfg
        self.block = block
        self.corpus = corpus
        self.data_dir = data_dir
        self.state_path = data_dir / f"block-{block}.trainer.safetensors"
        self.block_path = data_dir / f"block-{block}.safetensors"
        self.checkpoint_every = checkpoint_every
        self.tag = tag
        self.seed = seed
        for stale in remove_stale_temporaries(data_dir):
            log.info("[%s] removed %s, left by a writer that was killed", tag, stale.name)
        resumed = load_trainer_or_previous(self.state_path, tcfg, expect=cfg)
        if resumed is not None:
            self.trainer = resumed
            log.info(
                "[%s] block %d: resuming training at step %d from %s",
                tag,
                block,
                self.trainer.step_count,
                self.state_path,
            )
        else:
            self.trainer = BlockTrainer(cfg, tcfg, block, seed=seed)
        # The data order depends on the seed and the step, so a resumed job does not replay
        # the batches it already trained on.
        self.data = torch.Generator().manual_seed(seed * 1_000_003 + self.trainer.step_count)
        self.losses: list[float] = []
        self.pool: ThreadPoolExecutor | None = None
        #: The node's step gate (node.turns.StepGate): a training step takes its turn among
        #: the traversals' steps. None: train straight.
        self.gate: StepGate | None = None
        #: Set by :meth:`stop` (any thread): the slice running on the compute thread ends
        #: after its current step and writes a checkpoint, so a stopped node loses no step.
        self.stopped = threading.Event()
        self.started_wall = time.time()
        self.started_step = self.trainer.step_count
        #: (wall time, step, recent loss) after each slice, for the swarm page's chart
        self.history: deque[tuple[float, int, float]] = deque(maxlen=HISTORY_POINTS)

    def _recent_loss(self) -> float:
        recent = self.losses[-20:]
        return sum(recent) / max(1, len(recent))

    def stop(self) -> None:
        """End training after the current step (the node is shutting down)."""
        self.stopped.set()

    def progress(self) -> TrainingProgress:
        """Step, budget, recent loss and the rate since this process started."""
        return TrainingProgress(
            self.block,
            self.trainer.step_count,
            self.tcfg.steps,
            self._recent_loss(),
            time.time() - self.started_wall,
            self.trainer.step_count - self.started_step,
        )

    def _turn(self) -> contextlib.AbstractContextManager[None]:
        return self.gate.step(TRAINING) if self.gate is not None else contextlib.nullcontext()

    @property
    def module(self) -> torch.nn.Module:
        """The block being trained (``node.replica.LocalTraining``)."""
        return self.trainer.block

    @property
    def steps_done(self) -> int:
        return self.trainer.step_count

    @property
    def done(self) -> bool:
        return self.trainer.step_count >= self.tcfg.steps

    def _slice(self, steps: int) -> TrainingProgress:
        start = time.perf_counter()
        for _ in range(steps):
            if self.done or self.stopped.is_set():
                break
            batch = self.corpus.batch(self.tcfg.batch_size, self.cfg.context, self.data)
            with self._turn():
                self.losses.append(self.trainer.step(batch).loss)
        if (
            self.trainer.step_count % self.checkpoint_every == 0
            or self.done
            or self.stopped.is_set()
        ):
            save_trainer(self.state_path, self.trainer)
        return TrainingProgress(
            self.block,
            self.trainer.step_count,
            self.tcfg.steps,
            self._recent_loss(),
            time.perf_counter() - start,
        )

    def _slice_until(self, steps: int, stop_at_wall: float) -> tuple[int, float]:
        done = 0
        losses: list[float] = []
        while done < steps and time.time() < stop_at_wall and not self.stopped.is_set():
            batch = self.corpus.batch(self.tcfg.batch_size, self.cfg.context, self.data)
            with self._turn():
                losses.append(self.trainer.step(batch).loss)
            done += 1
        self.losses.extend(losses)
        step = self.trainer.step_count
        if step % self.checkpoint_every < done or done == 0 or self.stopped.is_set():
            save_trainer(self.state_path, self.trainer)
        return done, sum(losses) / max(1, len(losses))

    async def train_for(
        self,
        steps: int,
        stop_at_wall: float,
        pool: ThreadPoolExecutor | None = None,
        slice_steps: int = 10,
    ) -> tuple[int, float]:
        """Up to ``steps`` steps, stopping early at wall time ``stop_at_wall`` (but doing at
        least one step); returns (steps done, mean loss). Checkpoints as it goes."""
        loop = asyncio.get_running_loop()
        pool = pool or self.pool
        done, total = 0, 0.0
        while done < steps:
            n = min(slice_steps, steps - done)
            until = stop_at_wall if done else max(stop_at_wall, time.time() + 1e-3)
            k, loss = await loop.run_in_executor(pool, self._slice_until, n, until)
            done += k
            total += loss * k
            if k:
                self.history.append((time.time(), self.trainer.step_count, self._recent_loss()))
                log.info(
                    "[%s] block %d step %d/%d loss %.3f",
                    self.tag,
                    self.block,
                    self.trainer.step_count,
                    self.tcfg.steps,
                    self._recent_loss(),
                )
            if k < n or self.stopped.is_set():
                break
        await self._save_if_stopped(pool)
        return done, total / max(1, done)

    async def _save_if_stopped(self, pool: ThreadPoolExecutor) -> None:
        """A stop that came after a slice's own checkpoint test (a race the slice cannot see)
        still loses no step: the checkpoint is written again, atomically, on the pool."""
        if self.stopped.is_set():
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(pool, save_trainer, self.state_path, self.trainer)

    async def run(self, pool: ThreadPoolExecutor, slice_steps: int = 10) -> Path:
        """Train to the end on ``pool``; returns the path of the finished block."""
        loop = asyncio.get_running_loop()
        while not self.done and not self.stopped.is_set():
            progress = await loop.run_in_executor(pool, self._slice, slice_steps)
            self.history.append((time.time(), progress.step, progress.loss))
            log.info(
                "[%s] block %d step %d/%d loss %.3f",
                self.tag,
                self.block,
                progress.step,
                progress.total,
                progress.loss,
            )
        if self.stopped.is_set():
            await self._save_if_stopped(pool)
            return self.block_path
        await loop.run_in_executor(pool, save_block, self.block_path, self.trainer.block)
        log.info(
            "[%s] block %d trained: %d steps, final loss %.3f -> %s",
            self.tag,
            self.block,
            self.trainer.step_count,
            self._recent_loss(),
            self.block_path,
        )
        return self.block_path
