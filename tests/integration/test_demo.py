"""The main job end to end, shortened: the demo's node processes train (with a replica that
averages), serve, score and generate, and the demo exits cleanly."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def test_demo_trains_scores_and_generates(tmp_path: Path) -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "spheroid_p2p.demo",
            "--steps",
            "24",
            "--round-steps",
            "8",
            "--eval-every",
            "0",
            "--context",
            "32",
            "--d-model",
            "32",
            "--batch",
            "4",
            "--bytes",
            "12",
            "--workdir",
            str(tmp_path),
            "--timeout",
            "240",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "all nodes stopped" in out.stdout
    ce = re.search(r"CE[^0-9]*([0-9]+\.[0-9]+)", out.stdout)
    assert ce is not None and 0.5 < float(ce.group(1)) < 6.0, out.stdout[-2000:]
    # the extra replica of block 0 averaged with the first one
    rounds = (tmp_path / "b0r1" / "block-0.rounds.jsonl", tmp_path / "b0" / "block-0.rounds.jsonl")
    text = "".join(p.read_text() for p in rounds if p.exists())
    assert '"contributors"' in text and text.count('"peer"') >= 2
