"""Training: one block with its own optimizer (design note §8, §9), and the baselines.

:class:`BlockTrainer` is what a worker runs: it holds exactly one :class:`BlockDenoiser` and
its AdamW state, and no other block's parameters. :func:`train_blocktrain` is the
single-process reference run (a random block each step, §9). :class:`ARTrainer` trains
baselines (A) and (C); :class:`EndToEndTrainer` trains reference (B) through the unrolled
sampler.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from spheroid_p2p.ml.baselines import ARTransformer
from spheroid_p2p.ml.block import BlockDenoiser, SpanPlan
from spheroid_p2p.ml.config import ModelConfig, TrainConfig
from spheroid_p2p.ml.data import ByteCorpus
from spheroid_p2p.ml.noise import NoisePartition, loss_weight
from spheroid_p2p.ml.sampler import block_points, euler_step, initial_noise
from spheroid_p2p.ml.trajectory import ChainInputs, w_in_rate

__all__ = [
    "ARTrainer",
    "BlockTrainer",
    "EndToEndTrainer",
    "StepLog",
    "block_trainers",
    "chain_from",
    "measure_quality",
    "train_blocktrain",
]


def _adamw(
    params: list[torch.nn.Parameter],
    tcfg: TrainConfig,
    z_params: list[torch.nn.Parameter] | None = None,
) -> torch.optim.AdamW:
    """AdamW, decay on matrices only; ``z_params`` (a block's W_in, which reads the noisy
    code) learn at ``tcfg.z_lr_scale`` times the rate. Each group's ``lr_scale`` multiplies
    the scheduled rate (:func:`_set_lr`)."""
    special = {id(p) for p in z_params or []}
    plain = [p for p in params if id(p) not in special]
    groups = [
        {"params": [p for p in plain if p.dim() >= 2], "weight_decay": tcfg.weight_decay},
        {"params": [p for p in plain if p.dim() < 2], "weight_decay": 0.0},
    ]
    if z_params:
        groups.append(
            {"params": z_params, "weight_decay": tcfg.weight_decay, "lr_scale": tcfg.z_lr_scale}
        )
    return torch.optim.AdamW(groups, lr=tcfg.lr, betas=tcfg.betas)


def _set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)


@dataclass
class StepLog:
    """What one optimizer step reports."""

    step: int
    loss: float  # unweighted next-byte CE of the step's batch, nats/byte
    lr: float
    seconds: float


#: Steps over which a trainer measures its block's quality (the mean CE of its recent
#: batches, each taken before the step that learns from it): long enough that the estimate's
#: noise (~0.005 nats at the default batch) is well under the combined rule's temperature.
QUALITY_WINDOW = 100


class BlockTrainer:
    """Trains one block on the block-local denoising objective (§8) with its own AdamW."""

    def __init__(
        self,
        cfg: ModelConfig,
        tcfg: TrainConfig,
        block_index: int,
        seed: int,
        block: BlockDenoiser | None = None,
    ) -> None:
        self.cfg = cfg
        self.tcfg = tcfg
        self.block_index = block_index
        self.block = block if block is not None else BlockDenoiser(cfg, block_index)
        self.partition = NoisePartition(cfg)
        self.optimizer = _adamw(
            list(self.block.parameters()), tcfg, list(self.block.w_in.parameters())
        )
        self.step_count = 0
        self.generator = torch.Generator().manual_seed(seed)
        #: Trajectory-matched training (issue 19): a ``ml.trajectory.ChainInputs`` of the
        #: earlier blocks; this fraction of the batches then trains on the code the chain
        #: hands this block (at its entry sigma) instead of a noisy true code.
        self.trajectory: Callable[[torch.Tensor, int, torch.Generator], torch.Tensor] | None = None
        self.trajectory_sigma = 0.0
        self.trajectory_fraction = 0.0
        #: the CE of the last QUALITY_WINDOW batches; their mean is ``block.quality``
        self.recent_ce: deque[float] = deque(maxlen=QUALITY_WINDOW)

    def loss(self, window: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(weighted loss, unweighted CE) of one (B, T+1) batch of windows."""
        cfg = self.cfg
        x, y = window[:, :-1], window[:, 1:]  # (B, T) each
        B = x.shape[0]
        sigma = self.partition.sample(self.block_index, B, self.generator)  # (B,)
        eps = torch.randn(*y.shape, cfg.d_z, generator=self.generator)  # (B, T, d_z)
        z = self.block.codebook[y] + sigma[:, None, None] * eps  # (B, T, d_z)
        if self.trajectory is not None and self.trajectory_fraction > 0:
            chain = float(torch.rand(1, generator=self.generator)) < self.trajectory_fraction
            if chain:
                fed = self.trajectory(x, y.shape[1], self.generator)
                # the earlier blocks' weights come from other peers: codes that are not
                # finite never reach this block's gradient (it trains on the true code then)
                if bool(torch.isfinite(fed).all()):
                    z, sigma = fed, torch.full((B,), self.trajectory_sigma)
        plan = None
        if cfg.layout == "P":
            phase = int(torch.randint(0, cfg.span, (1,), generator=self.generator))
            plan = SpanPlan.training(x.shape[1], cfg.span, phase)
        estimate = None
        if cfg.self_cond and float(torch.rand(1, generator=self.generator)) < 0.5:
            with torch.no_grad():  # the block's own first estimate, as at inference
                estimate = self.block.expected_code(self.block(x, z, sigma, plan).logits)
        logits = self.block(x, z, sigma, plan, estimate).logits  # (B, T, vocab)
        ce = F.cross_entropy(logits.reshape(-1, cfg.vocab), y.reshape(-1), reduction="none")
        ce_seq = ce.view(B, -1).mean(dim=1)  # (B,)
        weight = (
            loss_weight(sigma, cfg.sigma_data) if cfg.loss_weighting else torch.ones_like(sigma)
        )
        return (weight * ce_seq).mean(), ce_seq.mean()

    def step(self, window: torch.Tensor) -> StepLog:
        """One optimizer step on a (B, T+1) batch."""
        start = time.perf_counter()
        self.block.train()
        lr = self.tcfg.lr_at(self.step_count)
        _set_lr(self.optimizer, lr)
        weighted, ce = self.loss(window)
        self.optimizer.zero_grad(set_to_none=True)
        weighted.backward()
        torch.nn.utils.clip_grad_norm_(self.block.parameters(), self.tcfg.grad_clip)
        self.optimizer.step()
        self.step_count += 1
        loss = float(ce.detach())
        if math.isfinite(loss):
            self.recent_ce.append(loss)
            self.block.quality = math.fsum(self.recent_ce) / len(self.recent_ce)
        return StepLog(self.step_count, loss, lr, time.perf_counter() - start)


@torch.no_grad()
def measure_quality(
    block: BlockDenoiser, corpus: ByteCorpus, batches: int = QUALITY_WINDOW, seed: int = 0
) -> float:
    """The quality a trainer reports for ``block`` (the mean CE of QUALITY_WINDOW training
    batches at noise levels of its range), measured without training: for a block saved
    before checkpoints carried one. Sets ``block.quality`` and returns it."""
    trainer = BlockTrainer(block.cfg, TrainConfig(), block.index, seed=seed, block=block)
    data = torch.Generator().manual_seed(seed)
    was_training = block.training
    block.eval()
    try:
        total = math.fsum(
            float(trainer.loss(corpus.batch(trainer.tcfg.batch_size, block.cfg.context, data))[1])
            for _ in range(batches)
        )
    finally:
        block.train(was_training)
    block.quality = total / batches
    return block.quality


class ARTrainer:
    """Trains an autoregressive baseline on next-byte CE."""

    def __init__(self, cfg: ModelConfig, tcfg: TrainConfig, n_layers: int, seed: int) -> None:
        self.cfg = cfg
        self.tcfg = tcfg
        self.model = ARTransformer(cfg, n_layers, seed=seed)
        self.optimizer = _adamw(list(self.model.parameters()), tcfg)
        self.step_count = 0

    def step(self, window: torch.Tensor) -> StepLog:
        start = time.perf_counter()
        self.model.train()
        lr = self.tcfg.lr_at(self.step_count)
        _set_lr(self.optimizer, lr)
        x, y = window[:, :-1], window[:, 1:]
        logits = self.model(x)  # (B, T, vocab)
        loss = F.cross_entropy(logits.reshape(-1, self.cfg.vocab), y.reshape(-1))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.tcfg.grad_clip)
        self.optimizer.step()
        self.step_count += 1
        return StepLog(self.step_count, float(loss.detach()), lr, time.perf_counter() - start)


class EndToEndTrainer:
    """Reference (B): the same blocks trained jointly through the unrolled Euler sampler.

    Each step starts from fresh noise, runs the whole one-traversal sampler with gradients,
    and backpropagates the final logits' CE through every block (one optimizer over all).
    """

    def __init__(self, cfg: ModelConfig, tcfg: TrainConfig, seed: int) -> None:
        self.cfg = cfg
        self.tcfg = tcfg
        self.blocks = torch.nn.ModuleList(BlockDenoiser(cfg, b) for b in range(cfg.n_blocks))
        self.optimizer = _adamw(list(self.blocks.parameters()), tcfg)
        self.generator = torch.Generator().manual_seed(seed)
        self.points = block_points(NoisePartition(cfg))
        self.step_count = 0

    def step(self, window: torch.Tensor) -> StepLog:
        start = time.perf_counter()
        self.blocks.train()
        lr = self.tcfg.lr_at(self.step_count)
        _set_lr(self.optimizer, lr)
        cfg = self.cfg
        x, y = window[:, :-1], window[:, 1:]
        plan = SpanPlan.training(x.shape[1], cfg.span, 0) if cfg.layout == "P" else None
        z = initial_noise((*y.shape, cfg.d_z), self.points[0][0][0], self.generator)
        logits = torch.empty(0)
        for b, (points, nxt) in enumerate(self.points):
            block = self.blocks[b]
            assert isinstance(block, BlockDenoiser)
            for j, s in enumerate(points):
                sig = torch.full((x.shape[0],), s)
                logits = block(x, z, sig, plan).logits
                target = points[j + 1] if j + 1 < len(points) else nxt
                if target is not None:
                    z = euler_step(z, torch.softmax(logits, -1) @ block.codebook, s, target)
        loss = F.cross_entropy(logits.reshape(-1, cfg.vocab), y.reshape(-1))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.blocks.parameters(), self.tcfg.grad_clip)
        self.optimizer.step()
        self.step_count += 1
        return StepLog(self.step_count, float(loss.detach()), lr, time.perf_counter() - start)


def block_trainers(
    cfg: ModelConfig, tcfg: TrainConfig, seed: int = 0, chain_fraction: float = 0.0
) -> list[BlockTrainer]:
    """One trainer per block, each with its own AdamW and noise stream, derived from ``seed``.
    With ``chain_fraction`` > 0 (trajectory-matched, :func:`train_blocktrain`) the blocks that
    train on the chain's codes let W_in learn (``ml.trajectory.w_in_rate``)."""
    out = []
    for b in range(cfg.n_blocks):
        own = tcfg
        if chain_fraction > 0:
            own = dataclasses.replace(tcfg, z_lr_scale=w_in_rate(cfg, b, chain_fraction))
        out.append(BlockTrainer(cfg, own, b, seed=seed * 7919 + b))
    return out


def train_blocktrain(
    trainers: list[BlockTrainer],
    corpus: ByteCorpus,
    total_block_steps: int,
    seed: int = 0,
    on_step: Callable[[int, int, StepLog], None] | None = None,
    chain_fraction: float = 0.0,
    chain_refresh: int = 100,
) -> None:
    """The single-process reference run (§9): each step trains one block chosen at random.

    Data comes from one shared generator so the run is reproducible from ``seed``.
    ``on_step(step, block, log)`` is called after every step (step counts from 1).
    With ``chain_fraction`` > 0 the blocks after the first train trajectory-matched, as a
    swarm's trainers do with ``--chain-fraction``: from frozen copies of the other blocks as
    they are at that moment, taken again every ``chain_refresh`` of the block's own steps.
    """
    cfg, tcfg = trainers[0].cfg, trainers[0].tcfg
    pick = torch.Generator().manual_seed(seed)
    data_gen = torch.Generator().manual_seed(seed + 1)
    for i in range(total_block_steps):
        b = int(torch.randint(0, cfg.n_blocks, (1,), generator=pick))
        trainer = trainers[b]
        if chain_fraction > 0 and b > 0 and trainer.step_count % chain_refresh == 0:
            chain_from(trainer, [t.block for t in trainers[:b]], chain_fraction)
        entry = trainer.step(corpus.batch(tcfg.batch_size, cfg.context, data_gen))
        if on_step is not None:
            on_step(i + 1, b, entry)


def chain_from(trainer: BlockTrainer, earlier: list[BlockDenoiser], fraction: float) -> None:
    """Trainer's chain inputs (trajectory-matched training) from frozen copies of ``earlier``."""
    chain = ChainInputs(trainer.cfg, [copy.deepcopy(block) for block in earlier])
    trainer.trajectory_sigma = chain.sigma
    trainer.trajectory = chain
    trainer.trajectory_fraction = fraction
