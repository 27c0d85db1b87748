"""The main job end to end, shortened: the demo's node processes train (with a replica that
averages), serve, score and generate, and the demo exits cleanly."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def test_demo_trains_scores_and_generates(tmp_path: Path) -> None:
    """Redirected, as CI runs it: plain progress lines (no terminal escapes), the averaging
    summary, the CE, the text; its temporary folder is gone at the end."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
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
            "--timeout",
            "240",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={**os.environ, "TMPDIR": str(tmp)},
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "all nodes stopped" in out.stdout
    ce = re.search(r"CE[^0-9]*([0-9]+\.[0-9]+)", out.stdout)
    assert ce is not None and 0.5 < float(ce.group(1)) < 6.0, out.stdout[-2000:]
    # the extra replica of block 0 averaged with the first one
    averaged = re.search(r"averaging: block 0: (\d+) versions published, up to (\d+)", out.stdout)
    assert averaged is not None and int(averaged.group(2)) >= 2, out.stdout[-2000:]
    assert "\x1b[" not in out.stderr and "\r" not in out.stderr, out.stderr[-500:]
    assert "training: block 0 " in out.stderr
    assert list(tmp.glob("spheroid-demo-*")) == []  # the demo removed its temporary folder
