"""The swarm evaluator: a separate process assembles the model from trainer nodes and scores it."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.swarm import NodeProcess

pytestmark = pytest.mark.integration
MODEL = ("--context", "16", "--d-model", "32", "--layers-per-block", "1", "--n-blocks", "2")


def test_evaluator_fetches_every_block_and_scores_the_swarm_model(tmp_path: Path) -> None:
    common = (
        "--corpus",
        "embedded",
        *MODEL,
        "--batch",
        "4",
        "--threads",
        "1",
        "--train-steps",
        "100000",
        # no --round-steps: the default (50) publishes versions, as a user's swarm would
        "--round-period",
        "5",
        "--round-grace",
        "2",
    )
    first = NodeProcess(tmp_path, "b0", *common, "--train-block", "0", verbose=1).start()
    second = NodeProcess(
        tmp_path, "b1", *common, "--train-block", "1", "--bootstrap", first.addr, verbose=1
    ).start()
    out = tmp_path / "eval.jsonl"
    try:
        run = subprocess.run(
            [
                sys.executable,
                "-m",
                "spheroid_p2p.node",
                "eval",
                "--bootstrap",
                first.addr,
                "--corpus",
                "embedded",
                *MODEL,
                "--windows",
                "8",
                "--count",
                "2",
                "--every",
                "6",
                "--out",
                str(out),
                "--timeout",
                "120",
            ],
            capture_output=True,
            text=True,
            timeout=240,
        )
        assert run.returncode == 0, run.stderr[-3000:]
    finally:
        first.stop()
        second.stop()
    points = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(points) == 2
    assert run.stdout.count("eval t=") == 2
    for p in points:
        assert math.isfinite(p["ce_sampler"]) and 0 < p["ce_sampler"] < 8
        assert len(p["versions"]) == 2
    # the blocks came over the network, and versions only move forward
    assert points[0]["fetched_bytes"] > 0
    assert all(b >= a for a, b in zip(points[0]["versions"], points[1]["versions"], strict=True))
    assert points[1]["elapsed_s"] > points[0]["elapsed_s"]
