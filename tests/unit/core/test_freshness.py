"""Replay and clock-skew checks."""

from __future__ import annotations

import pytest

from spheroid_p2p.core.freshness import SequenceGuard, initial_seq
from spheroid_p2p.errors import ErrorCode, RemoteProtocolError
from spheroid_p2p.wire.codec import Envelope, decode_frame, encode_frame
from spheroid_p2p.wire.control import Ping
from spheroid_p2p.wire.framing import join_frame
from spheroid_p2p.wire.signing import KeyPair

KEY = KeyPair.from_seed(bytes(32))


def _env(seq: int, ts: int) -> Envelope:
    return decode_frame(join_frame(encode_frame(KEY, Ping(nonce=0), seq=seq, timestamp_ms=ts))[4:])


def test_replayed_and_reordered_frames_are_refused() -> None:
    """seq must strictly increase on a connection."""
    guard = SequenceGuard()
    guard.check(_env(5, 1000), wall_ms=1000)
    for seq in (5, 4):
        with pytest.raises(RemoteProtocolError) as info:
            guard.check(_env(seq, 1000), wall_ms=1000)
        assert info.value.code is ErrorCode.REPLAYED_MESSAGE
    guard.check(_env(6, 1000), wall_ms=1000)


def test_clock_skew_beyond_the_limit_is_refused() -> None:
    """A timestamp more than MAX_CLOCK_SKEW_MS away is CLOCK_SKEW; within it, accepted."""
    guard = SequenceGuard(max_skew_ms=1000)
    guard.check(_env(1, 10_000), wall_ms=10_999)
    with pytest.raises(RemoteProtocolError) as info:
        guard.check(_env(2, 10_000), wall_ms=11_001)
    assert info.value.code is ErrorCode.CLOCK_SKEW


def test_initial_seq_increases_across_restarts() -> None:
    """A restarted sender starts above anything it sent a moment before."""
    assert initial_seq(1000.000002) > initial_seq(1000.000001)
