"""safetensors checkpoints: exact round trips, exact resume, clear errors, no torn files."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from spheroid_p2p.ml.block import BlockDenoiser
from spheroid_p2p.ml.checkpoint import load_block, load_trainer, save_block, save_trainer
from spheroid_p2p.ml.config import ModelConfig, TrainConfig
from spheroid_p2p.ml.training import BlockTrainer


def test_block_round_trip(tmp_path: Path, tiny: ModelConfig) -> None:
    """A saved and reloaded block has identical tensors, index and config."""
    block = BlockDenoiser(tiny, 2)
    with torch.no_grad():
        for p in block.parameters():
            p.add_(torch.randn_like(p))
    save_block(tmp_path / "b.safetensors", block)
    loaded = load_block(tmp_path / "b.safetensors", expect=tiny)
    assert loaded.index == 2 and loaded.cfg == tiny
    for (name, a), (_, b) in zip(
        block.state_dict().items(), loaded.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name
    assert not list(tmp_path.glob(".*tmp"))


def test_config_mismatch_and_corruption_are_clear_errors(tmp_path: Path, tiny: ModelConfig) -> None:
    """Loading under another config, or a corrupt file, raises ValueError saying why."""
    path = tmp_path / "b.safetensors"
    save_block(path, BlockDenoiser(tiny, 0))
    with pytest.raises(ValueError, match="different model config"):
        load_block(path, expect=tiny.replace(sigma_min=1.0))
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ValueError, match="not a readable safetensors"):
        load_block(path)


def test_resumed_trainer_continues_exactly(
    tmp_path: Path, tiny: ModelConfig, tiny_train: TrainConfig
) -> None:
    """Stop after 5 steps, reload, step: the same weights as 6 uninterrupted steps."""
    batches = [
        torch.randint(0, 256, (4, 17), generator=torch.Generator().manual_seed(i)) for i in range(6)
    ]
    straight = BlockTrainer(tiny, tiny_train, 1, seed=9)
    for batch in batches:
        straight.step(batch)
    first = BlockTrainer(tiny, tiny_train, 1, seed=9)
    for batch in batches[:5]:
        first.step(batch)
    save_trainer(tmp_path / "t.safetensors", first)
    resumed = load_trainer(tmp_path / "t.safetensors", tiny_train, expect=tiny)
    assert resumed.step_count == 5
    resumed.step(batches[5])
    for a, b in zip(straight.block.parameters(), resumed.block.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-6)
