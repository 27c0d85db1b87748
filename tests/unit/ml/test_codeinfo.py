"""The information budget through the code (ml.codeinfo): capacity and what blocks read."""

from __future__ import annotations

import math

import pytest
import torch

from spheroid_p2p.ml.codeinfo import code_capacity, code_use, entropy
from spheroid_p2p.ml.config import ModelConfig, TrainConfig
from spheroid_p2p.ml.training import BlockTrainer

CFG = ModelConfig(context=16, d_model=32, n_heads=4, layers_per_block=1, n_blocks=2)


def test_capacity_runs_from_the_byte_entropy_to_nothing() -> None:
    targets = torch.randint(0, 4, (4096,), generator=torch.Generator().manual_seed(0))
    h = entropy(torch.bincount(targets, minlength=256))
    assert h == pytest.approx(math.log(4), abs=0.01)
    curve = [code_capacity(CFG, targets, s, samples=8192) for s in (0.02, 0.3, 1.0, 5.0)]
    assert curve[0] == pytest.approx(h, abs=0.02)  # a clean code names its byte
    assert curve[0] > curve[1] > curve[2] > curve[3]
    # small signal: about E|c_y - E c|^2 / (2 sigma^2) nats, i.e. ~0.75/50 at sigma 5
    assert curve[3] < 0.03


def test_a_block_trained_on_true_codes_at_low_sigma_reads_the_answer_off_them() -> None:
    """Random bytes: the context says nothing, a true code at sigma 0.1 says everything. The
    last block learns to read it (the leak); the chain, started from noise, cannot pass it
    on, so nothing flows."""
    cfg = CFG.replace(sigma_min=0.05, sigma_max=0.3, p_mean=-2.0, p_std=0.5)
    gen = torch.Generator().manual_seed(3)
    data = torch.randint(0, 4, (64, cfg.context + 1), generator=gen)
    trainers = [
        BlockTrainer(cfg, TrainConfig(steps=150, warmup_steps=10, z_lr_scale=1.0), b, seed=b)
        for b in (0, 1)
    ]
    for _ in range(150):
        for trainer in trainers:
            trainer.step(data[torch.randint(0, 64, (16,), generator=gen)])
    uses = code_use([t.block for t in trainers], data, seeds=(0, 1))
    assert [u.block for u in uses] == [0, 1]
    assert uses[1].sigma < uses[0].sigma == cfg.sigma_max
    assert uses[1].capacity > 1.0 and uses[1].leak > 0.5  # reads the true code
    assert uses[1].ce_true < uses[1].ce_blind
    assert abs(uses[0].flows) < 0.1 * uses[1].leak  # block 0's chain input is noise, as "blind" is


def test_the_budget_is_measured_on_per_byte_models_only() -> None:
    from spheroid_p2p.ml.block import BlockDenoiser

    cfg = CFG.replace(layout="P", span=2)
    with pytest.raises(ValueError):
        code_use([BlockDenoiser(cfg, 0), BlockDenoiser(cfg, 1)], torch.zeros(2, 17).long())
