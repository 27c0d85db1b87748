"""Fair compute: admission round-robin by peer, and steps interleaved by peer."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from spheroid_p2p.core.limits import FairQueue, PeerLimits, TokenBucket
from spheroid_p2p.node.intake import RATE_KINDS
from spheroid_p2p.node.turns import ComputeTurns, Overloaded, StepGate
from spheroid_p2p.params import MAX_SHARDS
from spheroid_p2p.wire.deltas import ShardDelta, ShardUpdate


def test_token_bucket_refills_at_its_rate_up_to_its_burst() -> None:
    bucket = TokenBucket(rate=2.0, burst=4.0)
    assert all(bucket.take(0.0) for _ in range(4))
    assert not bucket.take(0.0)
    assert bucket.take(0.5)  # one token back after half a second
    assert not bucket.take(0.5)
    limits: PeerLimits[str] = PeerLimits({"x": (1.0, 1.0)})
    assert limits.allow("a", "x", 0.0) and not limits.allow("a", "x", 0.1)
    assert limits.allow("b", "x", 0.1)  # another peer has its own bucket
    assert limits.refused == {"x": 1}


def test_shard_update_headers_spend_their_own_bucket() -> None:
    """A flood of SHARD_UPDATE headers (each one logged and checked against the round) is
    bounded per peer: a burst of MAX_SHARDS (an aggregator that took every shard over), then
    16 a second."""
    assert RATE_KINDS[ShardUpdate] == "update" and RATE_KINDS[ShardDelta] == "delta"
    limits: PeerLimits[str] = PeerLimits()
    assert all(limits.allow("a", "update", 0.0) for _ in range(MAX_SHARDS))
    assert not limits.allow("a", "update", 0.0)
    assert limits.allow("b", "update", 0.0)  # per peer
    assert limits.allow("a", "update", 0.1) and not limits.allow("a", "update", 0.1)
    assert limits.refused == {"update": 2}


def test_fair_queue_rotates_over_peers() -> None:
    queue: FairQueue[str, int] = FairQueue(per_peer=3)
    for i in range(3):
        assert queue.join("flood", i)
    assert not queue.join("flood", 99)  # its waiting room is full
    assert queue.join("honest", 100)
    got = [queue.next_ticket() for _ in range(4)]
    assert [t[1] for t in got if t] == [0, 100, 1, 2]


def test_compute_turns_serve_a_newcomer_before_a_floods_backlog() -> None:
    async def main() -> list[str]:
        turns = ComputeTurns(slots=1, per_peer=8, per_peer_running=1)
        order: list[str] = []

        async def job(peer: bytes, name: str) -> None:
            async with turns.turn(peer):
                order.append(name)
                await asyncio.sleep(0.01)

        tasks = [asyncio.create_task(job(b"f", f"f{i}")) for i in range(6)]
        await asyncio.sleep(0)  # the flood queues first
        tasks.append(asyncio.create_task(job(b"h", "honest")))
        extra = [asyncio.create_task(job(b"f", f"x{i}")) for i in range(4)]
        results = await asyncio.gather(*tasks, *extra, return_exceptions=True)
        assert sum(isinstance(r, Overloaded) for r in results) >= 1  # 8 waiting at most
        return order

    order = asyncio.run(main())
    assert order.index("honest") <= 2, order


def test_a_flood_never_holds_every_slot() -> None:
    async def main() -> list[str]:
        turns = ComputeTurns(slots=4, per_peer=8, per_peer_running=2)
        order: list[str] = []
        release = asyncio.Event()

        async def job(peer: bytes, name: str) -> None:
            async with turns.turn(peer):
                order.append(name)
                await release.wait()

        flood = [asyncio.create_task(job(b"f", f"f{i}")) for i in range(6)]
        await asyncio.sleep(0.01)
        honest = asyncio.create_task(job(b"h", "honest"))
        await asyncio.sleep(0.01)
        assert "honest" in order  # admitted at once: the flood runs 2 of 4 slots
        release.set()
        await asyncio.gather(*flood, honest)
        return order

    order = asyncio.run(main())
    assert order[:3] == ["f0", "f1", "honest"], order


def test_step_gate_interleaves_a_short_request_with_a_long_one() -> None:
    gate = StepGate()
    done: dict[str, int] = {}

    def run(peer: bytes, steps: int, name: str) -> None:
        for _ in range(steps):
            with gate.step(peer):
                time.sleep(0.002)
        done[name] = gate.steps

    long = threading.Thread(target=run, args=(b"flood", 200, "long"))
    long.start()
    time.sleep(0.02)
    short = threading.Thread(target=run, args=(b"honest", 5, "short"))
    short.start()
    short.join(10)
    long.join(10)
    started_at = 0.02 / 0.002
    # the short request's 5 steps alternate with the long one's: done within ~2 x 5 steps
    assert done["short"] <= started_at + 2 * 5 + 5, done


def test_step_gate_gives_up_at_the_deadline() -> None:
    gate = StepGate()
    hold = threading.Event()
    release = threading.Event()

    def holder() -> None:
        with gate.step(b"a"):
            hold.set()
            release.wait(5)

    t = threading.Thread(target=holder)
    t.start()
    hold.wait(5)
    with pytest.raises(TimeoutError), gate.step(b"b", deadline=time.monotonic() + 0.05):
        pass
    release.set()
    t.join(5)
    with gate.step(b"b"):  # nothing left waiting behind
        pass
