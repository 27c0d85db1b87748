"""Choosing whether to compress bulk transfers from measured rates (08-checkpoints.md §8.7).

Sending S bytes over a link of rate L takes S/L. Compressing first, with a codec of
throughput C and ratio r, takes at most S/C + S/(rL) (no overlap assumed). Compression pays
when ``L < C · (1 − 1/r)``: on loopback (L of GB/s) it never does, on a 100 Mbit/s link with
shuffle+zstd on bfloat16 deltas it does. The glue measures L per peer from transfers it saw,
and C and r on the data about to be sent; this module only holds the numbers and the rule.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from spheroid_p2p.wire.dtypes import Codec
from spheroid_p2p.wire.signing import PeerId

__all__ = ["POLICIES", "LinkRates", "choose_codec", "should_compress"]

#: Values of the ``--compression`` setting.
POLICIES = ("auto", "none", "zstd", "shuffle")
#: Below this ratio compression is never worth it.
MIN_USEFUL_RATIO = 1.05


def should_compress(link_bps: float | None, codec_bps: float, ratio: float) -> bool:
    """The rule above. An unknown link rate counts as fast (no compression)."""
    if link_bps is None or ratio < MIN_USEFUL_RATIO or codec_bps <= 0:
        return False
    return link_bps < codec_bps * (1.0 - 1.0 / ratio)


def choose_codec(
    policy: str, link_bps: float | None, codec_bps: float = 0.0, ratio: float = 1.0
) -> Codec:
    """The codec for a transfer under ``policy`` (``auto`` applies :func:`should_compress`
    to shuffle+zstd)."""
    if policy == "none":
        return Codec.NONE
    if policy == "zstd":
        return Codec.ZSTD
    if policy == "shuffle":
        return Codec.SHUFFLE_ZSTD
    if policy != "auto":
        raise ValueError(f"compression policy must be one of {POLICIES}, got {policy!r}")
    return Codec.SHUFFLE_ZSTD if should_compress(link_bps, codec_bps, ratio) else Codec.NONE


@dataclass
class LinkRates:
    """Per-peer delivery rate (bytes/s), an exponentially weighted mean of transfers seen."""

    alpha: float = 0.5
    #: Transfers shorter than this many bytes say more about latency than rate; ignored.
    min_bytes: int = 4 * 1024 * 1024
    rates: dict[PeerId, float] = field(default_factory=dict)

    def observe(self, peer: PeerId, nbytes: int, seconds: float) -> None:
        if nbytes < self.min_bytes or seconds <= 0:
            return
        rate = nbytes / seconds
        old = self.rates.get(peer)
        self.rates[peer] = rate if old is None else self.alpha * rate + (1 - self.alpha) * old

    def get(self, peer: PeerId) -> float | None:
        return self.rates.get(peer)
