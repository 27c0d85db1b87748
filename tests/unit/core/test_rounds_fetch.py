"""The sans-I/O round and fetch state machines."""

from __future__ import annotations

from spheroid_p2p.core.fetch import Fetcher, FetchParams
from spheroid_p2p.core.linkrate import LinkRates, choose_codec, should_compress
from spheroid_p2p.core.rounds import (
    Aggregation,
    DeltaOffer,
    RoundParams,
    aggregator_order,
    preferred_manifest,
)
from spheroid_p2p.errors import ErrorCode
from spheroid_p2p.wire.dtypes import Codec
from spheroid_p2p.wire.manifests import ChunkSpan
from spheroid_p2p.wire.signing import PeerId

PEERS = [PeerId(bytes([i]) * 32) for i in range(1, 7)]
BASE = b"\x01" * 32
PREV = b"\x02" * 32


def _agg(replicas: set[PeerId], barrier: bool = True) -> Aggregation:
    params = RoundParams(grace_s=5.0, barrier=barrier)
    return Aggregation(3, 5, 0, {4: BASE, 3: PREV}, 10.0, replicas, -1.0, 100.0, params)


def _offer(peer: PeerId, steps: int = 10, norm: float = 1.0, **kw: object) -> DeltaOffer:
    fields = {"round": 5, "base_version": 4, "base_hash": BASE, "problem": None}
    fields.update(kw)
    return DeltaOffer(peer, steps=steps, norm=norm, **fields)  # type: ignore[arg-type]


def test_order_is_deterministic_rotates_and_ignores_input_order() -> None:
    a = aggregator_order(3, 5, PEERS)
    assert a == aggregator_order(3, 5, list(reversed(PEERS)))
    firsts = {aggregator_order(3, r, PEERS)[0] for r in range(40)}
    assert len(firsts) > 2  # the job rotates
    # removing a peer that is not first keeps the first
    rest = [p for p in PEERS if p != a[-1]]
    assert aggregator_order(3, 5, rest)[0] == a[0]
    assert preferred_manifest(3, 5, a[0], a[1]) == a[0]
    assert preferred_manifest(3, 5, a[2], a[0]) == a[0]


def test_weights_by_steps_with_half_weight_for_staleness_one() -> None:
    agg = _agg(set(PEERS[:3]))
    assert agg.offer(_offer(PEERS[0], steps=30), 90.0) == (0, "")
    assert agg.offer(_offer(PEERS[1], steps=10), 90.0) == (0, "")
    assert agg.offer(_offer(PEERS[2], steps=20, base_version=3, base_hash=PREV), 90.0)[0] == 0
    assert agg.due(90.0)  # barrier: everyone delivered
    out = agg.close(90.0)
    assert out.early
    assert abs(out.weights[PEERS[0]] - 30 / 50) < 1e-9
    assert abs(out.weights[PEERS[2]] - 10 / 50) < 1e-9
    assert [c[3] for c in out.contributors if c[0] == PEERS[2]] == [1]


def test_a_contributor_claiming_huge_step_counts_is_capped_at_twice_the_median() -> None:
    """09 §9.8: steps count for at most max_steps_ratio x the median of the round."""
    agg = _agg(set(PEERS[:3]))
    for peer, steps in ((PEERS[0], 10), (PEERS[1], 10), (PEERS[2], 10**9)):
        assert agg.offer(_offer(peer, steps=steps), 90.0) == (0, "")
    out = agg.close(90.0)
    assert abs(out.weights[PEERS[2]] - 20 / 40) < 1e-9  # capped at 2 x 10, not 10^9 / (10^9+20)
    assert abs(out.weights[PEERS[0]] - 10 / 40) < 1e-9


def test_refusals_are_coded_and_reported() -> None:
    outsider = PeerId(b"\x09" * 32)
    agg = _agg(set(PEERS[:4]))
    assert agg.offer(_offer(outsider), 1.0)[0] == ErrorCode.DELTA_REJECTED
    assert agg.offer(_offer(PEERS[0], base_version=2), 1.0)[0] == ErrorCode.ROUND_CLOSED
    assert agg.offer(_offer(PEERS[0], base_hash=b"\x07" * 32), 1.0)[0] == (ErrorCode.DELTA_REJECTED)
    code, why = agg.offer(_offer(PEERS[1], problem="non-finite values (NaN or Inf) in w"), 1.0)
    assert code == ErrorCode.DELTA_REJECTED and "NaN" in why
    assert agg.offer(_offer(PEERS[2]), 1.0)[0] == 0
    assert agg.offer(_offer(PEERS[2]), 1.0)[0] == ErrorCode.DELTA_REJECTED  # second delta
    out = agg.close(100.0)
    assert not out.early
    assert set(out.weights) == {PEERS[2]}
    assert {p for p, _, _ in out.rejected} >= {outsider, PEERS[1]}
    assert agg.offer(_offer(PEERS[3]), 101.0)[0] == ErrorCode.ROUND_CLOSED


def test_straggler_closes_at_the_deadline_and_is_named_late() -> None:
    agg = _agg(set(PEERS[:3]))
    agg.offer(_offer(PEERS[0]), 50.0)
    agg.offer(_offer(PEERS[1]), 50.0)
    assert not agg.due(99.9)
    assert agg.due(100.0)
    out = agg.close(100.0)
    assert out.late == [PEERS[2]] and set(out.weights) == {PEERS[0], PEERS[1]}


def test_norm_outlier_rejected_at_close() -> None:
    agg = _agg(set(PEERS[:3]))
    agg.offer(_offer(PEERS[0], norm=1.0), 1.0)
    agg.offer(_offer(PEERS[1], norm=1.2), 1.0)
    agg.offer(_offer(PEERS[2], norm=1e6), 1.0)
    out = agg.close(1.0)
    assert set(out.weights) == {PEERS[0], PEERS[1]}
    assert out.rejected[0][0] == PEERS[2] and "median" in out.rejected[0][2]


def test_a_rank_that_took_over_answers_not_ready_before_its_turn() -> None:
    """09 §9.5: a delta before the turn opens is NOT_READY and nothing is recorded."""
    agg = Aggregation(3, 5, 1, {4: BASE}, 1.0, set(PEERS), 97.5, 107.5, RoundParams())
    code, why = agg.offer(_offer(PEERS[0]), 90.0)
    assert code == ErrorCode.NOT_READY and "turn" in why
    assert not agg.accepted and not agg.rejected and agg.bytes_in == 0
    assert agg.offer(_offer(PEERS[0]), 98.0) == (0, "")


def _spans(n: int) -> list[ChunkSpan]:
    return [ChunkSpan(i, 0, i * 10, 10, bytes([i]) * 32) for i in range(n)]


def test_fetch_spreads_over_holders_and_requeues_on_failure() -> None:
    f = Fetcher(_spans(12), params=FetchParams(window=8, batch=2))
    a, b, c = PEERS[:3]
    for p in (a, b, c):
        f.add_holder(p)
    asked = f.poll(0.0)
    by = {}
    for act in asked:
        by.setdefault(act.holder, []).extend(act.indices)
    assert set(by) == {a, b, c} and sorted(i for ixs in by.values() for i in ixs) == list(range(12))
    lost = by[b]
    f.holder_failed(b, "connection closed")
    again = [i for act in f.poll(1.0) for i in act.indices]
    assert sorted(again) == sorted(lost)
    for act in asked:
        for i in act.indices:
            if act.holder != b:
                f.chunk_received(act.holder, i, bytes([i]) * 32)
    assert not f.done


def test_fetch_bans_a_holder_that_serves_a_wrong_hash_and_resumes_with_have() -> None:
    f = Fetcher(_spans(6), have={0, 1, 2}, params=FetchParams(window=8, batch=8))
    f.add_holder(PEERS[0])
    f.add_holder(PEERS[1])
    acts = f.poll(0.0)
    assert sorted(i for a in acts for i in a.indices) == [3, 4, 5]
    holder = acts[0].holder
    assert not f.chunk_received(holder, acts[0].indices[0], b"\xee" * 32)
    assert f.reports and f.reports[0][0] == holder and holder not in f.usable
    other = f.usable[0]
    for i in (3, 4, 5):
        f.poll(1.0)
        f.chunk_received(other, i, bytes([i]) * 32)
    assert f.done


def test_fetch_reasks_after_timeout() -> None:
    f = Fetcher(_spans(1), params=FetchParams(chunk_timeout_s=5.0))
    f.add_holder(PEERS[0])
    f.add_holder(PEERS[1])
    first = f.poll(0.0)
    assert len(first) == 1
    assert f.next_deadline() == 5.0
    second = f.poll(6.0)
    assert second and second[0].indices == (0,)


def _asked(actions: list) -> list[int]:
    return [i for act in actions for i in act.indices]


def test_an_arrived_chunk_frees_its_window_slot_before_its_hash_is_checked() -> None:
    f = Fetcher(_spans(10), params=FetchParams(window=2, batch=1, max_unverified=3))
    holder = PEERS[0]
    f.add_holder(holder)
    assert _asked(f.poll(0.0)) == [0, 1]
    assert f.poll(0.1) == []  # window full
    f.chunk_arrived(holder, 0)
    assert _asked(f.poll(0.2)) == [2]  # the next chunk is asked for while 0 is being checked
    f.chunk_arrived(holder, 1)
    f.chunk_arrived(holder, 2)
    assert f.poll(0.3) == []  # three unverified: no more requests until some are checked
    assert f.chunk_received(holder, 0, bytes([0]) * 32)
    assert _asked(f.poll(0.4)) == [3, 4]
    assert f.next_deadline() == 0.4 + f.params.chunk_timeout_s  # only what is on the wire


def test_a_window_is_refilled_a_batch_at_a_time() -> None:
    """One request per batch, not one per arrived chunk (a fast fetch asks few times)."""
    f = Fetcher(_spans(20), params=FetchParams(window=8, batch=4, max_unverified=16))
    holder = PEERS[0]
    f.add_holder(holder)
    first = f.poll(0.0)
    assert [a.indices for a in first] == [(0, 1, 2, 3), (4, 5, 6, 7)]
    for i in range(3):
        f.chunk_arrived(holder, i)
        assert f.poll(0.1) == []  # room for 1, 2, 3: less than a batch
    f.chunk_arrived(holder, 3)
    assert [a.indices for a in f.poll(0.2)] == [(8, 9, 10, 11)]


def test_an_overloaded_holder_is_paused_not_dropped() -> None:
    """OVERLOADED (a holder's rate limit) sends its chunks to the others and asks it again
    after ``overload_pause_s``; it stays a holder."""
    f = Fetcher(_spans(8), params=FetchParams(window=4, batch=4, overload_pause_s=0.25))
    busy, other = PEERS[0], PEERS[1]
    f.add_holder(busy)
    asked = f.poll(0.0)
    assert [a.holder for a in asked] == [busy]
    f.add_holder(other)
    f.holder_overloaded(busy, 0.0)
    assert busy in f.usable
    again = f.poll(0.1)
    assert {a.holder for a in again} == {other}  # its chunks went to the other holder
    assert f.next_deadline() is not None and f.next_deadline() <= 0.25
    assert any(a.holder == busy for a in f.poll(0.3))  # and it is asked again after the pause


def test_a_chunk_that_fails_its_check_is_asked_again_from_a_good_holder() -> None:
    f = Fetcher(_spans(2), params=FetchParams(window=1, batch=1))
    bad, good = PEERS[0], PEERS[1]
    f.add_holder(bad)
    asked = {act.holder: act.indices for act in f.poll(0.0)}
    f.chunk_arrived(bad, asked[bad][0])
    f.add_holder(good)
    f.chunk_failed(asked[bad][0])
    f.holder_failed(bad, "chunk does not match its hash", ban=True)
    again = f.poll(1.0)
    assert [act.holder for act in again] == [good]
    assert again[0].indices == asked[bad]
    assert bad not in f.usable and f.reports[0][0] == bad


def test_compression_rule() -> None:
    # loopback: never; 100 Mbit/s with a 400 MB/s codec at ratio 1.3: yes
    assert not should_compress(3e9, 4e8, 1.3)
    assert should_compress(12.5e6, 4e8, 1.3)
    assert not should_compress(12.5e6, 4e8, 1.01)
    assert not should_compress(None, 4e8, 2.0)
    assert choose_codec("auto", 12.5e6, 4e8, 1.3) == Codec.SHUFFLE_ZSTD
    assert choose_codec("none", 1.0, 4e8, 9.0) == Codec.NONE
    rates = LinkRates()
    rates.observe(PEERS[0], 100, 1.0)  # too small to count
    assert rates.get(PEERS[0]) is None
    rates.observe(PEERS[0], 10_000_000, 1.0)
    assert rates.get(PEERS[0]) == 10_000_000


def test_a_copy_arriving_while_another_is_checked_frees_its_window_slot() -> None:
    """A good holder's copy of a chunk arrives while a bad holder's copy is being checked: it
    is dropped but frees the good holder's window; when the bad copy fails its check, the
    chunk is asked of the good holder at once, not after the chunk timeout."""
    f = Fetcher(_spans(2), params=FetchParams(window=1, batch=1))
    good, bad = PEERS[:2]
    f.add_holder(good)
    f.add_holder(bad)
    first = {a.holder: a.indices for a in f.poll(0.0)}
    assert first[good] == (0,) and first[bad] == (1,)
    f.chunk_arrived(good, 0)
    assert f.chunk_received(good, 0, bytes([0]) * 32)
    assert [a.indices for a in f.poll(1.0)] == [(1,)]  # endgame: good asked for 1 too
    f.chunk_arrived(bad, 1)  # bad's copy is being checked ...
    f.duplicate_arrived(good, 1)  # ... when good's arrives: dropped, its slot freed
    assert not f.holders[good].inflight
    f.chunk_failed(1)  # bad's copy did not match its hash
    f.holder_failed(bad, "served chunk 1 with the wrong hash", ban=True)
    assert [(a.holder, a.indices) for a in f.poll(1.5)] == [(good, (1,))]
