"""A trainer node killed with kill -9 resumes from its last atomic checkpoint, then serves."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.support.swarm import NodeProcess, wait_for

pytestmark = pytest.mark.integration
TINY = (
    "--corpus",
    "embedded",
    "--context",
    "16",
    "--d-model",
    "32",
    "--layers-per-block",
    "1",
    "--batch",
    "4",
    "--threads",
    "1",
    "--train-block",
    "0",
)


def _last_step(log: str) -> int:
    steps = re.findall(r"block 0 step (\d+)/", log)
    return int(steps[-1]) if steps else 0


def test_killed_trainer_resumes_where_it_stopped(tmp_path: Path) -> None:
    """Kill -9 past the first checkpoint; the restart resumes at a checkpointed step (not 0),
    finishes its budget and announces the block as served."""
    node = NodeProcess(tmp_path, "t0", *TINY, "--train-steps", "400", verbose=1).start()
    try:
        wait_for(lambda: _last_step(node.log()) >= 120, timeout_s=120)
        node.kill9()
        killed_at = _last_step(node.log())
        assert (tmp_path / "t0" / "block-0.trainer.safetensors").exists()
        again = NodeProcess(tmp_path, "t0", *TINY, "--train-steps", "400", verbose=1).start()
        try:
            wait_for(again.serving_trained, timeout_s=180)
            resumed = re.findall(r"resuming training at step (\d+)", again.log())
            # a slice (10 steps) checkpoints before its progress line is logged, so the kill
            # can fall between the two: the checkpoint may be one slice past the last line
            assert resumed and 50 <= int(resumed[-1]) <= killed_at + 10
            assert int(resumed[-1]) % 50 == 0
            served = [r for r in again.status().records if r.role == "serve"]
            assert served and served[0].block == 0 and served[0].n_blocks == 4
        finally:
            again.stop()
    finally:
        node.stop()
