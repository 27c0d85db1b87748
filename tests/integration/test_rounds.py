"""Sharded averaging rounds between real trainer processes (09): a straggler, a dead
aggregator handed over, a poisoned shard delta, a late joiner, replicas started apart, and a
block cut into shards whose aggregators are different peers.

Everything waits on queries (the round log each replica writes, the nodes' status), never on
log text or fixed sleeps.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import signal
import time
from pathlib import Path

import pytest

from spheroid_p2p.core.plan import RoundPlan, shard_bounds
from spheroid_p2p.errors import ErrorCode
from spheroid_p2p.ml.config import ModelConfig
from spheroid_p2p.node.app import running_node
from spheroid_p2p.node.config import NodeConfig
from spheroid_p2p.node.transfer import FetchError, Payload
from spheroid_p2p.testing import tiny_trainer_args
from spheroid_p2p.wire.deltas import ShardDelta
from spheroid_p2p.wire.signing import PeerId
from tests.support.swarm import NodeProcess, wait_for

pytestmark = pytest.mark.integration
REPLICA = tiny_trainer_args(round_steps=5, round_period=6, round_grace=2)


def _log(tmp: Path, names: list[str], kind: str) -> list[dict]:
    """Every entry of ``kind`` ("shard" or "version") in the named replicas' round logs."""
    out = []
    for name in names:
        path = tmp / name / "block-0.rounds.jsonl"
        if path.exists():
            out += [json.loads(line) for line in path.read_text().splitlines() if line]
    return [e for e in out if e.get("kind") == kind]


def _short(proc: NodeProcess) -> str:
    return PeerId.from_text(proc.peer_id).short()


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
            lambda: any(len(e["contributors"]) == 3 for e in _log(tmp_path, names, "shard")), 90
        )
        # Straggler: stop r2 (SIGSTOP) for longer than a round period. Only rounds that start
        # after the stop count (a round during start-up may list another peer as late).
        straggler = _short(procs[2])
        before = max(e["round"] for e in _log(tmp_path, names, "shard"))

        def straggled() -> list[dict]:
            return [
                e
                for e in _log(tmp_path, names, "shard")
                if e["round"] > before and e["closed"] == "deadline" and straggler in e["late"]
            ]

        os.kill(procs[2].proc.pid, signal.SIGSTOP)
        try:
            wait_for(lambda: bool(straggled()), timeout_s=60)
        finally:
            os.kill(procs[2].proc.pid, signal.SIGCONT)
        assert straggled()[0]["contributors"], "the shard closed with the live replicas' deltas"
        # Dead aggregator: once version n is out, kill the first peer of round n+1's plan.
        done = max(e["round"] for e in _log(tmp_path, names, "version"))
        wait_for(lambda: any(e["round"] > done for e in _log(tmp_path, names, "version")), 60)
        version = max(_log(tmp_path, names, "version"), key=lambda e: e["round"])
        victim_id = version["plan"][0]
        victim = next(p for p in procs if _short(p) == victim_id)
        victim.kill9()
        survivors = [n for n, p in zip(names, procs, strict=True) if p is not victim]
        nxt = version["round"] + 1
        # A version the survivors published from round nxt on, whose shards survivors closed
        # without the victim. (Round nxt itself may have been closed by the victim just before
        # the kill, on a fast machine; then the rounds after it show the hand-over.)

        def handed_over() -> dict | None:
            shards = _log(tmp_path, survivors, "shard")
            for version in sorted(
                (e for e in _log(tmp_path, survivors, "version") if e["round"] >= nxt),
                key=lambda e: e["round"],
            ):
                closed = [e for e in shards if e["round"] == version["round"]]
                if closed and all(e["aggregator"] != victim_id for e in closed):
                    return version
            return None

        wait_for(lambda: handed_over() is not None, 90)
        published = handed_over()
        assert published is not None and published["publisher"] != victim_id
    finally:
        for p in procs:
            p.stop()


def test_poisoned_shard_delta_is_rejected_and_the_round_completes(tmp_path: Path) -> None:
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
            train_blocks=(0,),  # announces a train record: a live replica of block 0
            model=model,
        )
        qualities: list[float | None] = []
        async with running_node(cfg) as node:
            me = node.key.peer_id
            # The replicas move on every fraction of a second: a delta for a round that is
            # already out (ROUND_CLOSED) or not yet open at its aggregator (NOT_READY) is sent
            # again for the newest version, until an aggregator judges it.
            deadline = time.monotonic() + 90
            acks = []
            while time.monotonic() < deadline:
                recs = [r for r in node.swarm.owners(0) if r.content_hash and r.version >= 1]
                if not recs:
                    await node.swarm.changed(1.0)
                    continue
                newest = max(recs, key=lambda r: r.version)
                try:
                    await node.swarm.connect([newest.owner])
                    signed = await node.transfers.get_manifest(newest.owner, 0, newest.content_hash)
                except FetchError:  # that version was pruned meanwhile
                    continue
                m = signed.manifest
                qualities.append(m.quality)
                live = [PeerId.from_text(p.peer_id) for p in honest] + [me]
                plan = RoundPlan.from_manifest(0, m.version + 1, m.plan, m.shards, 0, 1, live)
                n = sum(e.raw_len // 4 for e in m.tensors)
                bounds = shard_bounds(n, plan.shards)
                shard = next(s for s in range(len(bounds) - 1) if plan.aggregator(s, 0) != me)
                agg = plan.aggregator(shard, 0)
                assert agg is not None
                size = bounds[shard + 1] - bounds[shard]
                header = ShardDelta(
                    stream_id=node.transfers.streams.new_id(),
                    block=0,
                    round=m.version + 1,
                    base=m.result,
                    base_version=m.version,
                    shard=shard,
                    shards=plan.shards,
                    steps=5,
                    loss=1.0,
                    encoding=2,
                )
                nan_bf16 = b"\xc0\x7f" * size
                await node.swarm.connect([agg])
                try:
                    ack = await node.transfers.streams.send_delta(
                        agg, header, Payload.of(nan_bf16, 2), 30
                    )
                except FetchError:
                    continue
                acks.append(ack)
                if ack.code == ErrorCode.DELTA_REJECTED:
                    break
                assert ack.code in (ErrorCode.ROUND_CLOSED, ErrorCode.NOT_READY), ack
            assert acks and acks[-1].code == ErrorCode.DELTA_REJECTED, acks
            assert "NaN" in acks[-1].reason, acks[-1]
            # r14: a round's version carries its publisher's quality, a trained block's CE
            known = [q for q in qualities if q is not None]
            assert known and all(0 < q < math.log(256) + 1 for q in known), qualities

    try:
        asyncio.run(main())

        def poisoned() -> list[dict]:
            return [
                e
                for e in _log(tmp_path, ["r0", "r1"], "shard")
                if any("NaN" in x["reason"] for x in e["rejected"])
            ]

        # the shard the poisoned delta went to still closes, with the rejection in its report
        wait_for(lambda: bool(poisoned()), timeout_s=90)
        assert all(e["contributors"] for e in poisoned())
        # the replicas go on publishing versions (finite ones: a version built from a NaN
        # update would be refused by every replica, and no version would follow)
        top = max(e["round"] for e in _log(tmp_path, ["r0", "r1"], "version"))
        wait_for(
            lambda: max(e["round"] for e in _log(tmp_path, ["r0", "r1"], "version")) > top + 2, 60
        )
    finally:
        for p in honest:
            p.stop()


def _own_version(proc: NodeProcess, role: str) -> int:
    me = PeerId.from_text(proc.peer_id).digest
    mine = [r.version for r in proc.status().records if r.owner == me and r.role == role]
    return max(mine, default=-1)


def test_a_trainer_joining_after_the_others_finished_starts_from_their_version(
    tmp_path: Path,
) -> None:
    """A finished trainer serves the swarm's version and names it in its serve record; a
    trainer started later joins at that version instead of the seeded version 0."""
    alone = [a if a != "100000" else "12" for a in REPLICA]  # 12 steps: rounds of 5, 5, 2
    first = NodeProcess(tmp_path, "r0", *alone, verbose=1).start()
    late = None
    try:
        wait_for(lambda: _own_version(first, "serve") >= 1, timeout_s=60)
        served = _own_version(first, "serve")
        late = NodeProcess(
            tmp_path, "r1", *alone, "--bootstrap", first.addr, "--seed", "1", verbose=1
        ).start()
        # its first train record with a version names the version it joined at
        wait_for(lambda: _own_version(late, "train") >= 0 and _joined(late), timeout_s=60)
        assert _joined(late) == served
    finally:
        if late is not None:
            late.stop()
        first.stop()


def _joined(proc: NodeProcess) -> int | None:
    path = proc.workdir / proc.name / "block-0.round.json"
    try:
        return int(json.loads(path.read_text())["version"])
    except (OSError, ValueError, KeyError):
        return None


def test_replicas_started_apart_wait_for_each_other_and_share_round_one(tmp_path: Path) -> None:
    """--min-replicas 2: the first replica waits for the second before its first step, so
    round 1 averages both (an aggregator still joining answers NOT_READY, and the delta is
    sent again), instead of closing at its deadline with one contributor."""
    both = [*REPLICA, "--min-replicas", "2"]
    both[both.index("--round-period") + 1] = "30"
    first = NodeProcess(tmp_path, "r0", *both, verbose=1).start()
    procs = [first]
    try:
        # the second replica starts well after the first's join wait (2 s) is over
        wait_for(lambda: first.status().uptime_ms > 3000, timeout_s=30)
        procs.append(
            NodeProcess(
                tmp_path, "r1", *both, "--bootstrap", first.addr, "--seed", "1", verbose=1
            ).start()
        )
        wait_for(lambda: any(e["round"] == 1 for e in _log(tmp_path, ["r0", "r1"], "shard")), 60)
        (round1,) = [e for e in _log(tmp_path, ["r0", "r1"], "shard") if e["round"] == 1]
        assert round1["closed"] == "barrier", round1
        assert len(round1["contributors"]) == 2, round1
    finally:
        for p in procs:
            p.stop()


def test_a_block_in_shards_is_averaged_by_different_peers(tmp_path: Path) -> None:
    """A block of several SHARD_ALIGN_ELEMS units, three replicas: from round 2 on the plan
    cuts it into as many shards as it has units (up to four per replica), averaged by all
    three replicas in turn, and every replica installs the same versions."""
    wide = [a if a != "32" else "96" for a in REPLICA]  # ~150k elements: 3-4 shards
    names = ["r0", "r1", "r2"]
    first = NodeProcess(tmp_path, "r0", *wide, verbose=1).start()
    procs = [first] + [
        NodeProcess(
            tmp_path, n, *wide, "--bootstrap", first.addr, "--seed", str(i), verbose=1
        ).start()
        for i, n in enumerate(names[1:], 1)
    ]
    try:

        def sharded() -> list[dict]:
            return [
                e
                for e in _log(tmp_path, names, "version")
                if e["shards"] >= 3
                and len(e["contributors"]) == 3
                and not e["missing"]
                and len(set(e["aggregators"].values())) == 3
            ]

        # a plan made before the third replica's record arrived has two aggregators: the
        # first version planned with all three is averaged by all three
        wait_for(lambda: bool(sharded()), timeout_s=90)
        version = sharded()[0]
        # every replica installs that version: their position files name its weights
        wait_for(
            lambda: all(
                json.loads((tmp_path / n / "block-0.round.json").read_text())["version"]
                >= version["round"]
                for n in names
            ),
            timeout_s=30,
        )
    finally:
        for p in procs:
            p.stop()
