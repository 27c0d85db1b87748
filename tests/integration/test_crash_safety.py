"""A checkpoint writer killed at random points never leaves the node without a checkpoint to
resume from, nor temporaries behind; a corrupt newest checkpoint falls back to the previous
one with a clear message."""

from __future__ import annotations

import logging
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from spheroid_p2p.ml.checkpoint import (
    load_trainer_or_previous,
    remove_stale_temporaries,
    save_trainer,
)
from spheroid_p2p.ml.config import ModelConfig, TrainConfig
from spheroid_p2p.ml.training import BlockTrainer

pytestmark = pytest.mark.integration

MODEL = ModelConfig(context=16, d_model=32, layers_per_block=1)
TCFG = TrainConfig(batch_size=2, steps=10**6)

WRITER = """
import sys
from pathlib import Path
from spheroid_p2p.ml.checkpoint import save_trainer
from spheroid_p2p.ml.config import ModelConfig, TrainConfig
from spheroid_p2p.ml.training import BlockTrainer
trainer = BlockTrainer(ModelConfig(context=16, d_model=32, layers_per_block=1),
                       TrainConfig(batch_size=2, steps=10**6), 0, seed=0)
path = Path(sys.argv[1])
print("ready", flush=True)
for step in range(1, 10**6):
    trainer.step_count = step
    save_trainer(path, trainer)
"""


def test_a_writer_killed_at_random_points_always_leaves_a_good_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "block-0.trainer.safetensors"
    rng = random.Random(1)
    steps = []
    for attempt in range(8):
        proc = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True
        )
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.05, 0.5))  # a random point in its writes (not a wait)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        proc.stdout.close()
        remove_stale_temporaries(tmp_path)
        assert not list(tmp_path.glob(".*.tmp")), attempt
        trainer = load_trainer_or_previous(path, TCFG, MODEL)
        assert trainer is not None, f"attempt {attempt}: no checkpoint to resume from"
        steps.append(trainer.step_count)
        assert not list(tmp_path.glob("*.corrupt")), "an atomic write left a torn file"
    assert max(steps) > 1  # the writer got some way each time


def test_a_corrupt_checkpoint_falls_back_to_the_previous_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "block-0.trainer.safetensors"
    trainer = BlockTrainer(MODEL, TCFG, 0, seed=0)
    for step in (50, 100):
        trainer.step_count = step
        save_trainer(path, trainer)
    path.write_bytes(path.read_bytes()[:1000])  # the newest one cut short
    with caplog.at_level(logging.WARNING):
        resumed = load_trainer_or_previous(path, TCFG, MODEL)
    assert resumed is not None and resumed.step_count == 50
    assert (tmp_path / (path.name + ".corrupt")).exists()  # kept aside, not deleted
    assert "not a readable safetensors checkpoint" in caplog.text
    assert "previous checkpoint" in caplog.text
