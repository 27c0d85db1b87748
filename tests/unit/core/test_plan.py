"""The plan of a round, its shards, one replica's exchange, and a version's report (09)."""

from __future__ import annotations

import itertools
import math

from spheroid_p2p.core.plan import (
    Exchange,
    Publish,
    RoundPlan,
    SendShard,
    next_plan,
    shard_bounds,
    version_report,
)
from spheroid_p2p.core.rounds import aggregator_order
from spheroid_p2p.params import MAX_SHARDS, SHARD_ALIGN_ELEMS
from spheroid_p2p.wire.reports import RoundReport
from spheroid_p2p.wire.signing import PeerId

PEERS = [PeerId(bytes([i]) * 32) for i in range(1, 7)]
A = SHARD_ALIGN_ELEMS


def test_shards_fall_on_aligned_boundaries_and_differ_by_at_most_one_unit() -> None:
    n = 10 * A + 123
    for shards in (1, 2, 3, 4, 6, 11, 64):
        b = shard_bounds(n, shards)
        assert b[0] == 0 and b[-1] == n and len(b) == min(shards, 11) + 1
        assert all(x % A == 0 for x in b[:-1])
        sizes = [hi - lo for lo, hi in itertools.pairwise(b)]
        assert all(s > 0 for s in sizes) and max(sizes) - min(sizes) <= A
    assert shard_bounds(1000, 8) == [0, 1000]  # a small block is one shard
    assert shard_bounds(0, 4) == [0, 0]


def test_the_plan_rotates_shards_over_its_ranks_and_times_the_turns() -> None:
    plan = RoundPlan(3, 7, tuple(PEERS[:4]), 4, deadline=100.0, grace=10.0)
    assert [plan.aggregator(i, 0) for i in range(4)] == PEERS[:4]
    assert [plan.aggregator(1, k) for k in range(4)] == [PEERS[1], PEERS[2], PEERS[3], PEERS[0]]
    assert plan.aggregator(0, 4) is None
    assert plan.aggregator_rank(1, PEERS[0]) == 3 and plan.aggregator_rank(1, PEERS[5]) is None
    assert plan.turn_opens(0) == -math.inf and plan.turn_opens(2) == 115.0
    assert plan.shard_closes(0) == 100.0 and plan.shard_closes(1) == 115.0
    assert plan.handover_at(0) == 110.0 and plan.publish_at(1) == 110.0
    assert plan.give_up_at(0) == 150.0


def test_without_a_plan_one_shard_is_ranked_by_each_replicas_own_view() -> None:
    plan = RoundPlan.from_manifest(3, 7, (), 0, 100.0, 5.0, PEERS[:3])
    assert plan.shards == 1 and list(plan.ranks) == aggregator_order(3, 7, PEERS[:3])
    named = RoundPlan.from_manifest(3, 7, [p.digest for p in PEERS[:2]], 2, 100.0, 5.0, PEERS)
    assert named.ranks == tuple(PEERS[:2]) and named.shards == 2


def test_next_plan_is_rendezvous_ordered_and_bounded() -> None:
    many = [PeerId(i.to_bytes(2, "big") * 16) for i in range(100)]
    ranks, shards = next_plan(3, 8, many, max_shards=64)
    assert len(ranks) == MAX_SHARDS and shards == MAX_SHARDS
    assert [PeerId(r) for r in ranks] == aggregator_order(3, 8, many)[:MAX_SHARDS]
    assert next_plan(3, 8, PEERS[:3], max_shards=1)[1] == 1  # the single-aggregator round


def test_exchange_sends_every_shard_then_hands_an_overdue_one_to_the_next_rank() -> None:
    me = PEERS[1]
    plan = RoundPlan(3, 7, tuple(PEERS[:3]), 3, deadline=100.0, grace=10.0)
    ex = Exchange(plan, me, 3)
    assert ex.start(90.0) == [
        SendShard(0, 0, PEERS[0]),
        SendShard(1, 0, me),
        SendShard(2, 0, PEERS[2]),
    ]
    ex.update_arrived(1, me)
    ex.update_arrived(2, PEERS[2])
    assert ex.next_deadline() == 110.0 and ex.handle_timer(109.0) == []
    assert ex.handle_timer(110.0) == [SendShard(0, 1, me)]  # shard 0's rank 1 is us
    ex.update_arrived(0, me)
    assert ex.complete and ex.next_deadline() == 110.0  # we are publisher 1: D + G
    assert ex.handle_timer(110.0) == [Publish(())]
    assert ex.next_deadline() is None


def test_a_version_from_the_publisher_means_we_do_not_publish() -> None:
    plan = RoundPlan(3, 7, tuple(PEERS[:2]), 2, deadline=100.0, grace=10.0)
    ex = Exchange(plan, PEERS[1], 2)
    ex.start(90.0)
    ex.update_arrived(0, PEERS[0])
    ex.update_arrived(1, PEERS[1])
    ex.version_arrived()
    assert ex.next_deadline() is None


def test_the_first_publisher_gives_up_on_a_shard_nobody_averaged() -> None:
    plan = RoundPlan(3, 7, tuple(PEERS[:2]), 2, deadline=100.0, grace=10.0)
    ex = Exchange(plan, PEERS[0], 2)
    ex.start(90.0)
    ex.update_arrived(0, PEERS[0])
    assert ex.handle_timer(110.0) == [SendShard(1, 1, PEERS[0])]
    assert ex.next_deadline() == plan.give_up_at(0) == 130.0
    assert ex.handle_timer(130.0) == [Publish((1,))]


def test_a_versions_report_says_whom_each_shard_averaged() -> None:
    a, b, c = (p.digest for p in PEERS[:3])
    s0 = RoundReport(contributors=((a, 0.5, 10, 0), (b, 0.5, 10, 0)), late=(c,), bytes_in=5)
    s1 = RoundReport(contributors=((a, 1.0, 10, 0),), rejected=((b, 25, "NaN"),), late=(c,))
    report = version_report({0: (a, s0), 1: (b, s1)}, missing=[2])
    weights = {p: w for p, w, _, _ in report.contributors}
    assert weights == {a: (0.5 + 1.0) / 3, b: 0.5 / 3}
    assert report.late == (c,) and report.missing == (2,) and report.bytes_in == 5
    rows = {s.index: s for s in report.shards}
    order = [p for p, *_ in report.contributors]
    assert rows[0].has(order.index(a)) and rows[0].has(order.index(b))
    assert rows[1].has(order.index(a)) and not rows[1].has(order.index(b))
    assert report.rejected == ()  # b contributed elsewhere: it is listed once, in c and the mask
    assert RoundReport.from_wire(report.to_wire()) == report
