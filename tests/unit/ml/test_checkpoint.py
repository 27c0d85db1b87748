"""safetensors checkpoints: exact round trips, exact resume, clear errors, no torn files."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save as st_save

from spheroid_p2p.ml.block import BlockDenoiser
from spheroid_p2p.ml.checkpoint import (
    _block_meta,
    load_block,
    load_trainer,
    save_block,
    save_trainer,
)
from spheroid_p2p.ml.config import ModelConfig, TrainConfig
from spheroid_p2p.ml.training import QUALITY_WINDOW, BlockTrainer


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


def test_a_block_carries_its_trainers_quality(
    tmp_path: Path, tiny: ModelConfig, tiny_train: TrainConfig
) -> None:
    """The trainer's quality is the mean CE of its last QUALITY_WINDOW batches; checkpoints
    keep it (block and trainer), a file without one loads as unknown, a bad one is refused."""
    trainer = BlockTrainer(tiny, tiny_train, 0, seed=3)
    assert trainer.block.quality is None
    losses = [
        trainer.step(
            torch.randint(0, 256, (4, 17), generator=torch.Generator().manual_seed(i))
        ).loss
        for i in range(QUALITY_WINDOW + 5)
    ]
    assert trainer.block.quality == pytest.approx(sum(losses[5:]) / QUALITY_WINDOW)
    save_block(tmp_path / "b.safetensors", trainer.block)
    assert load_block(tmp_path / "b.safetensors").quality == trainer.block.quality
    save_trainer(tmp_path / "t.safetensors", trainer)
    resumed = load_trainer(tmp_path / "t.safetensors", tiny_train)
    assert resumed.block.quality == trainer.block.quality
    assert list(resumed.recent_ce) == list(trainer.recent_ce)  # the window goes on as it was
    batch = torch.randint(0, 256, (4, 17), generator=torch.Generator().manual_seed(99))
    trainer.step(batch)
    resumed.step(batch)
    assert resumed.block.quality == pytest.approx(trainer.block.quality)
    save_block(tmp_path / "none.safetensors", BlockDenoiser(tiny, 1))
    assert load_block(tmp_path / "none.safetensors").quality is None
    block = BlockDenoiser(tiny, 1)
    block.quality = float("nan")  # a diverged trainer's: not written, the block loads unknown
    save_block(tmp_path / "nan.safetensors", block)
    assert load_block(tmp_path / "nan.safetensors").quality is None
    meta = {**_block_meta(block, "spheroid-block/1"), "quality": "nan"}  # a file edited by hand
    tensors = {k: v.contiguous() for k, v in block.state_dict().items()}
    (tmp_path / "bad.safetensors").write_bytes(st_save(tensors, metadata=meta))
    with pytest.raises(ValueError, match="quality"):
        load_block(tmp_path / "bad.safetensors")
