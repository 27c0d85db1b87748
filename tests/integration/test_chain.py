"""Trajectory-matched training in a swarm (node.chain): a trainer of block 1 fetches block 0's
published versions and trains on the code they hand it, refreshing as block 0 advances."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from spheroid_p2p.testing import tiny_trainer_args
from tests.support.swarm import NodeProcess, wait_for

pytestmark = pytest.mark.integration
CHAIN = re.compile(r"block 1 step (\d+): chain inputs from versions \[(\d+)\]")


def test_a_trainer_follows_the_earlier_blocks_published_versions(tmp_path: Path) -> None:
    rounds = {"round_steps": 10, "round_period": 4, "round_grace": 2}
    first = NodeProcess(
        tmp_path, "b0", *tiny_trainer_args(**rounds), "--n-blocks", "2", verbose=1
    ).start()
    second = NodeProcess(
        tmp_path, "b1", *tiny_trainer_args(block=1, **rounds), "--n-blocks", "2",
        "--bootstrap", first.addr, "--chain-fraction", "1", "--chain-refresh", "20", verbose=1,
    ).start()  # fmt: skip
    try:
        wait_for(lambda: len(CHAIN.findall(second.log())) >= 2, timeout_s=120)
        seen = [(int(s), int(v)) for s, v in CHAIN.findall(second.log())]
        steps, versions = zip(*seen, strict=True)
        assert versions[1] > versions[0]  # block 0 advanced and the feed followed it
        assert steps[1] >= steps[0] + 20  # not before --chain-refresh steps
        before = second.status().jobs[0].step
        wait_for(lambda: second.status().jobs[0].step > before + 20, timeout_s=60)
        assert "failed; the node goes on" not in second.log()
    finally:
        second.stop()
        first.stop()
