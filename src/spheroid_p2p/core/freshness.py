"""Replay and clock-skew checks on received envelopes (spec: 04-identity-and-signing.md §4.4).

Each sender numbers its frames with a strictly increasing ``seq``; a sender starts its
counter from its wall clock in microseconds, so it keeps increasing across restarts of the
same key. On one connection a frame whose ``seq`` is not greater than the last accepted one
is a replay (``REPLAYED_MESSAGE``). A frame whose timestamp is further than
``MAX_CLOCK_SKEW_MS`` from the receiver's wall clock is refused (``CLOCK_SKEW``).
Expiry and timeouts never compare clocks across peers; this bound only stops stale replays.
"""

from __future__ import annotations

from spheroid_p2p.errors import ErrorCode, RemoteProtocolError
from spheroid_p2p.params import MAX_CLOCK_SKEW_MS
from spheroid_p2p.wire.codec import Envelope

__all__ = ["SequenceGuard", "initial_seq"]


def initial_seq(wall_time_s: float) -> int:
    """The first sequence number of a sender started at ``wall_time_s`` (µs since the epoch)."""
    return int(wall_time_s * 1_000_000)


class SequenceGuard:
    """Per-connection replay guard: accepts each sender's frames in increasing ``seq`` only."""

    __slots__ = ("_last", "max_skew_ms")

    def __init__(self, max_skew_ms: int = MAX_CLOCK_SKEW_MS) -> None:
        self._last: int | None = None
        self.max_skew_ms = max_skew_ms

    def check(self, envelope: Envelope, wall_ms: int) -> None:
        """Accept ``envelope`` or raise ``RemoteProtocolError`` (REPLAYED_MESSAGE, CLOCK_SKEW)."""
        if self._last is not None and envelope.seq <= self._last:
            raise RemoteProtocolError(
                f"sequence number {envelope.seq} is not above the last one ({self._last})",
                ErrorCode.REPLAYED_MESSAGE,
            )
        skew = envelope.timestamp_ms - wall_ms
        if abs(skew) > self.max_skew_ms:
            raise RemoteProtocolError(
                f"timestamp is {skew / 1000:+.1f} s from our clock "
                f"(limit ±{self.max_skew_ms / 1000:.0f} s)",
                ErrorCode.CLOCK_SKEW,
            )
        self._last = envelope.seq
