"""Tiny CPU configurations for the ml tests."""

from __future__ import annotations

import pytest
import torch

from spheroid_p2p.ml.config import ModelConfig, TrainConfig


@pytest.fixture(autouse=True)
def _deterministic() -> None:
    torch.manual_seed(0)
    torch.set_num_threads(1)


@pytest.fixture
def tiny() -> ModelConfig:
    return ModelConfig(d_model=32, n_heads=2, d_cond=8, context=16, layers_per_block=1)


@pytest.fixture
def tiny_train() -> TrainConfig:
    return TrainConfig(batch_size=4, steps=50, warmup_steps=5, lr=3e-3)
