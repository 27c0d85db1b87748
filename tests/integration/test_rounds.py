"""Averaging rounds between real trainer processes: a straggler, a dead aggregator, and a
poisoned delta from a replica that sends NaN."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import time
from pathlib import Path

import pytest
import torch

from spheroid_p2p.core.rounds import aggregator_order
from spheroid_p2p.errors import ErrorCode
from spheroid_p2p.ml.config import ModelConfig
from spheroid_p2p.node.app import running_node
from spheroid_p2p.node.config import NodeConfig
from spheroid_p2p.node.tensor_bridge import raw_of
from spheroid_p2p.node.transfer import FetchError
from spheroid_p2p.wire.signing import PeerId
from tests.support.swarm import NodeProcess, wait_for

pytestmark = pytest.mark.integration
MODEL = ("--context", "16", "--d-model", "32", "--layers-per-block", "1")
REPLICA = (
    "--corpus",
    "embedded",
    *MODEL,
    "--batch",
    "4",
    "--threads",
    "1",
    "--train-block",
    "0",
    "--train-steps",
    "100000",
    "--round-steps",
    "5",
    "--round-period",
    "6",
    "--round-grace",
    "2",
)


def _reports(tmp: Path, names: list[str]) -> list[dict]:
    out = []
    for name in names:
        path = tmp / name / "block-0.rounds.jsonl"
        if path.exists():
            out += [json.loads(line) for line in path.read_text().splitlines() if line]
    return out


def test_straggler_closes_at_deadline_and_dead_aggregator_hands_over(tmp_path: Path) -> None:
    names = ["r0", "r1", "r2"]
    first = NodeProcess(tmp_path, "r0", *REPLICA, verbose=1).start()
    procs = [first] + [
        NodeProcess(
            tmp_path, n, *REPLICA, "--bootstrap", first.addr, "--seed", str(i), verbose=1
        ).start()
        for i, n in enumerate(names[1:], 1)
    ]
    try:
        wait_for(
            lambda: any(r["closed"] == "barrier" for r in _reports(tmp_path, names)), timeout_s=90
        )
        # (the first round may close at its deadline while replicas are still starting)
        assert any(r["closed"] == "barrier" for r in _reports(tmp_path, names))
        # Straggler: stop r2 (SIGSTOP) for longer than a round period. Only rounds that start
        # after the stop count (a round during start-up may list another peer as late).
        straggler = PeerId.from_text(procs[2].peer_id).short()
        before = {r["round"] for r in _reports(tmp_path, names)}

        def straggled() -> list[dict]:
            return [
                r
                for r in _reports(tmp_path, names)
                if r["round"] > max(before) and r["closed"] == "deadline" and straggler in r["late"]
            ]

        os.kill(procs[2].proc.pid, signal.SIGSTOP)
        try:
            wait_for(lambda: bool(straggled()), timeout_s=60)
        finally:
            os.kill(procs[2].proc.pid, signal.SIGCONT)
        assert straggled()[0]["contributors"], "the round closed with the live replicas' deltas"
        # Dead aggregator: kill the first-ranked peer of the next round as soon as it starts.
        done = {r["round"] for r in _reports(tmp_path, names)}
        nxt = max(done) + 1
        ids = [PeerId.from_text(p.peer_id) for p in procs]
        order = aggregator_order(0, nxt + 1, ids)
        victim = next(p for p in procs if PeerId.from_text(p.peer_id) == order[0])
        wait_for(lambda: nxt in {r["round"] for r in _reports(tmp_path, names)}, timeout_s=60)
        victim.kill9()
        survivors = [n for n, p in zip(names, procs, strict=True) if p is not victim]
        wait_for(
            lambda: any(r["round"] >= nxt + 2 for r in _reports(tmp_path, survivors)),
            timeout_s=90,
        )
        after = [r for r in _reports(tmp_path, survivors) if r["round"] == nxt + 1]
        assert after and after[0]["aggregator"] != order[0].short()
    finally:
        for p in procs:
            p.stop()


def test_poisoned_delta_is_rejected_and_the_round_completes(tmp_path: Path) -> None:
    first = NodeProcess(tmp_path, "r0", *REPLICA, verbose=1).start()
    second = NodeProcess(
        tmp_path, "r1", *REPLICA, "--bootstrap", first.addr, "--seed", "1", verbose=1
    ).start()
    honest = [first, second]
    model = ModelConfig(context=16, d_model=32, layers_per_block=1)

    async def main() -> None:
        cfg = NodeConfig(
            data_dir=tmp_path / "bad",
            key=tmp_path / "bad.key",
            bootstrap=(first.addr,),
            train_blocks=(0,),
            model=model,
        )
        async with running_node(cfg) as node:
            # The replicas move on every few seconds: a delta built on a version that is
            # already out (ROUND_CLOSED) or not yet installed at the aggregator (NOT_READY) is
            # sent again on the newest version, until the aggregator judges it.
            deadline = time.monotonic() + 90
            acks = []
            while time.monotonic() < deadline:
                recs = [r for r in node.gossip.owners_of(0) if r.content_hash and r.version >= 1]
                if not recs:
                    await asyncio.sleep(0.2)
                    continue
                newest = max(recs, key=lambda r: r.version)
                try:
                    await node.connect_all([newest.owner])
                    signed = await node.transfers.get_manifest(newest.owner, 0, newest.content_hash)
                    base = (await node.transfers.fetch(signed, [newest.owner])).stored.tensors()
                except FetchError:  # that version was pruned meanwhile
                    continue
                poison = {
                    k: torch.full_like(v, float("nan")).to(torch.bfloat16) for k, v in base.items()
                }
                r = signed.manifest.version + 1
                replicas = [PeerId.from_text(p.peer_id) for p in honest] + [node.key.peer_id]
                agg = next(p for p in aggregator_order(0, r, replicas) if p != node.key.peer_id)
                await node.connect_all([agg])
                ack = await node.transfers.send_delta(
                    agg,
                    block=0,
                    round_=r,
                    base=newest.content_hash,
                    base_version=r - 1,
                    steps=5,
                    loss=1.0,
                    encoding=2,
                    tensors={k: raw_of(v) for k, v in poison.items()},
                    timeout_s=30,
                )
                acks.append(ack)
                if ack.code == ErrorCode.DELTA_REJECTED:
                    break
                assert ack.code in (ErrorCode.ROUND_CLOSED, ErrorCode.NOT_READY), ack
                await asyncio.sleep(0.5)
            assert acks and acks[-1].code == ErrorCode.DELTA_REJECTED, acks
            assert "NaN" in acks[-1].reason, acks[-1]

    try:
        asyncio.run(main())

        def poisoned_round() -> bool:
            reports = _reports(tmp_path, ["r0", "r1"])
            return any("NaN" in x["reason"] for r in reports for x in r["rejected"])

        # the round the poisoned delta went to still closes, with the rejection in its report
        wait_for(poisoned_round, timeout_s=90)
        reports = _reports(tmp_path, ["r0", "r1"])
        for r in reports:
            assert len(r["contributors"]) >= 1
        # the versions stay finite: the honest replicas still serve finite weights
        for p in honest:
            assert "non-finite" not in p.log() or "refused" in p.log()
    finally:
        for p in honest:
            p.stop()


def test_a_trainer_joining_after_the_others_finished_starts_from_their_version(
    tmp_path: Path,
) -> None:
    """A finished trainer serves the swarm's version and names it in its serve record; a
    trainer started later joins at that version instead of the seeded version 0."""
    alone = [a if a != "100000" else "12" for a in REPLICA]  # 12 steps: rounds of 5, 5, 2
    first = NodeProcess(tmp_path, "r0", *alone, verbose=1).start()
    late = None
    try:
        wait_for(lambda: "serving blocks [0]" in first.log(), timeout_s=60)
        served = [int(v) for v in re.findall(r"step budget spent at version (\d+)", first.log())]
        assert served and served[-1] >= 1
        late = NodeProcess(
            tmp_path, "r1", *alone, "--bootstrap", first.addr, "--seed", "1", verbose=1
        ).start()
        wait_for(lambda: "joined at version" in late.log(), timeout_s=60)
        joined = re.search(r"joined at version (\d+)", late.log())
        assert joined is not None and int(joined.group(1)) == served[-1], late.log()[-2000:]
        assert "fetched version" in late.log()
    finally:
        if late is not None:
            late.stop()
        first.stop()


def test_replicas_started_apart_wait_for_each_other_and_share_round_one(tmp_path: Path) -> None:
    """--min-replicas 2: the first replica waits for the second before its first step, so
    round 1 averages both (an aggregator still joining answers NOT_READY, and the delta is
    sent again), instead of closing at its deadline with one contributor."""
    both = [*REPLICA, "--min-replicas", "2"]
    both[both.index("--round-period") + 1] = "30"
    first = NodeProcess(tmp_path, "r0", *both, verbose=1).start()
    procs = [first]
    try:
        wait_for(lambda: "waiting for 2 replicas" in first.log(), timeout_s=30)
        time.sleep(3.0)  # the second replica starts well after the first
        procs.append(
            NodeProcess(
                tmp_path, "r1", *both, "--bootstrap", first.addr, "--seed", "1", verbose=1
            ).start()
        )
        wait_for(lambda: any(r["round"] == 1 for r in _reports(tmp_path, ["r0", "r1"])), 60)
        (round1,) = [r for r in _reports(tmp_path, ["r0", "r1"]) if r["round"] == 1]
        assert round1["closed"] == "barrier", round1
        assert len(round1["contributors"]) == 2, round1
    finally:
        for p in procs:
            p.stop()
