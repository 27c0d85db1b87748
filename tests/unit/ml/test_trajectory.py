"""Trajectory-matched training (ml.trajectory): chain inputs, and hostile ones refused."""

from __future__ import annotations

import math

import torch

from spheroid_p2p.ml.block import BlockDenoiser
from spheroid_p2p.ml.config import ModelConfig, TrainConfig
from spheroid_p2p.ml.training import BlockTrainer
from spheroid_p2p.ml.trajectory import ChainInputs

CFG = ModelConfig(context=16, d_model=32, layers_per_block=1, n_blocks=2)


def _windows() -> torch.Tensor:
    return torch.randint(0, 256, (4, CFG.context + 1), generator=torch.Generator().manual_seed(1))


def test_block_1_trains_on_the_code_block_0_hands_it() -> None:
    chain = ChainInputs(CFG, [BlockDenoiser(CFG, 0)])
    z = chain(_windows()[:, :-1], CFG.context, torch.Generator().manual_seed(2))
    assert z.shape == (4, CFG.context, CFG.d_z) and bool(torch.isfinite(z).all())
    trainer = BlockTrainer(CFG, TrainConfig(steps=2), 1, seed=0)
    trainer.trajectory, trainer.trajectory_sigma = chain, chain.sigma
    trainer.trajectory_fraction = 1.0
    assert math.isfinite(trainer.step(_windows()).loss)


def test_codes_that_are_not_finite_never_reach_the_gradient() -> None:
    def poisoned(x: torch.Tensor, rows: int, gen: torch.Generator) -> torch.Tensor:
        return torch.full((x.shape[0], rows, CFG.d_z), float("nan"))

    trainer = BlockTrainer(CFG, TrainConfig(steps=2), 1, seed=0)
    trainer.trajectory, trainer.trajectory_sigma = poisoned, 5.0
    trainer.trajectory_fraction = 1.0
    assert math.isfinite(trainer.step(_windows()).loss)
    assert all(bool(torch.isfinite(p).all()) for p in trainer.block.parameters())


def test_the_reference_run_trains_later_blocks_on_frozen_copies_of_the_earlier_ones() -> None:
    from spheroid_p2p.ml.data import corpus_from_bytes
    from spheroid_p2p.ml.training import block_trainers, train_blocktrain

    corpus = corpus_from_bytes("t", bytes(range(256)) * 8)
    trainers = block_trainers(CFG, TrainConfig(steps=6, batch_size=4), seed=0)
    train_blocktrain(trainers, corpus, 12, chain_fraction=1.0, chain_refresh=2)
    assert trainers[0].trajectory is None  # block 0 reads pure noise
    chain = trainers[1].trajectory
    assert isinstance(chain, ChainInputs) and trainers[1].trajectory_fraction == 1.0
    frozen, live = chain.earlier[0], trainers[0].block
    assert frozen is not live and not any(p.requires_grad for p in frozen.parameters())
    assert all(p.requires_grad for p in live.parameters())  # the trainer's own block trains on


def test_w_in_learns_only_where_a_block_trains_on_the_chain() -> None:
    from spheroid_p2p.ml.training import block_trainers
    from spheroid_p2p.ml.trajectory import TRAJECTORY_Z_LR_SCALE, trains_chained, w_in_rate

    assert TrainConfig().z_lr_scale == 0.0  # the default: W_in stays at its zero init
    assert w_in_rate(CFG, 1, 1.0) == TRAJECTORY_Z_LR_SCALE > 0
    assert w_in_rate(CFG, 0, 1.0) == 0.0  # block 0 reads pure noise
    assert w_in_rate(CFG, 1, 0.0) == 0.0
    span = CFG.replace(layout="P", span=2)
    assert not trains_chained(span, 1, 1.0) and w_in_rate(span, 1, 1.0) == 0.0
    rates = [t.tcfg.z_lr_scale for t in block_trainers(CFG, TrainConfig(), chain_fraction=0.5)]
    assert rates == [0.0, TRAJECTORY_Z_LR_SCALE]


def test_a_frozen_w_in_stays_at_zero_through_training() -> None:
    trainer = BlockTrainer(CFG, TrainConfig(steps=3), 1, seed=0)
    for _ in range(3):
        trainer.step(_windows())
    assert not trainer.block.w_in.weight.any() and not trainer.block.w_in.bias.any()
