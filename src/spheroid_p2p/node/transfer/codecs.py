"""Which codec a bulk transfer uses (08 §8.7): measured link rates and codec speed.

``auto`` compresses a transfer only when it pays: the link's measured delivery rate against
shuffle+zstd's measured speed and ratio on this machine's data (``core.linkrate`` holds the
rule). The rates come from transfers this node saw; the codec figures from a probe of one
chunk, taken once (on a chunk a fetch received, or a set we hold).
"""

from __future__ import annotations

import asyncio
import time

from spheroid_p2p.core.linkrate import LinkRates, choose_codec
from spheroid_p2p.wire.compression import encode_payload
from spheroid_p2p.wire.dtypes import Codec
from spheroid_p2p.wire.signing import PeerId

__all__ = ["Codecs", "encode_chunk", "measure_codec"]


def measure_codec(sample: memoryview, itemsize: int) -> tuple[float, float]:
    """(bytes/s, ratio) of shuffle+zstd level 1 on ``sample``."""
    start = time.perf_counter()
    encoded = encode_payload(
        sample, Codec.SHUFFLE_ZSTD, itemsize if itemsize in (2, 4, 8) else 1, 1
    )
    seconds = max(1e-6, time.perf_counter() - start)
    return len(sample) / seconds, len(sample) / max(1, len(encoded))


class Codecs:
    """One node's codec policy, link rates and codec measurement."""

    def __init__(self, policy: str = "auto") -> None:
        self.policy = policy
        self.rates = LinkRates()
        #: (bytes/s, ratio) of shuffle+zstd measured here; None until measured
        self.probe: tuple[float, float] | None = None
        self.probing = False
        #: transfers by the codec chosen for them (the metrics read it)
        self.chosen: dict[str, int] = {}

    def choose(self, peer: PeerId) -> Codec:
        """The codec to ask ``peer`` for (or to send it), from what is measured so far."""
        codec = choose_codec(self.policy, self.rates.get(peer), *(self.probe or (0.0, 1.0)))
        self.chosen[codec.name] = self.chosen.get(codec.name, 0) + 1
        return codec

    def blind(self, peer: PeerId) -> bool:
        """``auto`` with no measured rate for ``peer``: the choice is to be made again once
        a transfer from it measured one."""
        return self.policy == "auto" and self.rates.get(peer) is None

    def wants_probe(self) -> bool:
        """Whether a codec measurement should be taken (once: claims it)."""
        if self.probe is not None or self.probing:
            return False
        self.probing = True
        return True

    def probe_failed(self) -> None:
        self.probing = False

    async def for_sending(self, peer: PeerId, sample: memoryview, itemsize: int) -> Codec:
        """The codec for data we are about to send ``peer`` (measured on ``sample``)."""
        if self.policy != "auto":
            return choose_codec(self.policy, None)
        link = self.rates.get(peer)
        if link is None:
            return Codec.NONE
        self.probe = await asyncio.to_thread(measure_codec, sample[: 1 << 20], itemsize)
        return choose_codec("auto", link, *self.probe)


async def encode_chunk(
    raw: memoryview, codec: Codec, elem: int
) -> tuple[Codec, memoryview | bytes]:
    """``raw`` encoded with ``codec`` (on a worker thread), or as it is when that does not
    shrink it."""
    if codec == Codec.NONE:
        return Codec.NONE, raw
    encoded = await asyncio.to_thread(encode_payload, raw, codec, elem, 1)
    return (codec, encoded) if len(encoded) < len(raw) else (Codec.NONE, raw)
