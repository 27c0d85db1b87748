"""A replica's state in one round, and the shard updates it takes in (09 §9.5, §9.8).

:class:`RoundState` holds what one round needs: the base, the exchange (``core.plan``), the
shard bounds, our delta and its encoded shards, the updates received per shard, and the
version built from them. :class:`UpdateIntake` admits a ``SHARD_UPDATE`` header only from a
live replica whose aggregator turn for that shard has begun, on our base and plan, at most
``MAX_UPDATES_PER_SHARD`` per shard; its payload (exactly one shard of our block, in a pooled
buffer) is decoded and judged on a worker thread — finite, norm within ``max_relative_norm``
of the base's shard — before the round takes it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field

import torch

from spheroid_p2p.core.plan import Exchange
from spheroid_p2p.core.rounds import RoundParams
from spheroid_p2p.ml.averaging import tensors_norm
from spheroid_p2p.node.aggregator import ShardResult
from spheroid_p2p.node.buffers import TensorPool
from spheroid_p2p.node.building import Built, VersionBuilder
from spheroid_p2p.node.installer import Base, Installer
from spheroid_p2p.node.shards import ChunkDecoder, payload_len
from spheroid_p2p.node.transfer import InStream, Payload
from spheroid_p2p.node.transfer.streams import Streams
from spheroid_p2p.params import MAX_UPDATES_PER_SHARD
from spheroid_p2p.wire.deltas import ShardUpdate
from spheroid_p2p.wire.manifests import (
    ENCODINGS,
    SignedManifest,
)
from spheroid_p2p.wire.signing import PeerId

__all__ = ["RoundState", "UpdateIntake"]

log = logging.getLogger(__name__)


@dataclass
class RoundState:
    """This replica's state in one round."""

    base: Base
    exchange: Exchange
    bounds: list[int]
    steps: int
    delta: torch.Tensor
    payloads: dict[int, Payload] = field(default_factory=dict)
    results: dict[int, dict[PeerId, ShardResult]] = field(default_factory=dict)
    late: dict[int, torch.Tensor] = field(default_factory=dict)
    #: the new version, built shard by shard as updates are judged (``node.building``)
    builder: VersionBuilder | None = None
    built: asyncio.Future[Built | None] | None = None
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    #: the round's version as its publisher signed it, once it reached us (09 §9.5 step 5)
    manifest: SignedManifest | None = None
    manifest_at: float = 0.0
    installing: bool = False
    #: pooled tensors of our encoded shards, and the sends of them under way
    encoded: list[torch.Tensor] = field(default_factory=list)
    sending: int = 0
    closed: bool = False
    #: when each step of the round was reached, in seconds from ``started`` (the round log)
    started: float = 0.0
    marks: dict[str, float] = field(default_factory=dict)

    def mark(self, what: str) -> None:
        self.marks.setdefault(what, round(time.time() - self.started, 4))

    def slice(self, shard: int) -> tuple[int, int]:
        return self.bounds[shard], self.bounds[shard + 1]

    def deliver(self, result: ShardResult) -> bool:
        """Keep a judged update (at most ``MAX_UPDATES_PER_SHARD`` a shard) and wake the round;
        False if it was not kept."""
        have = self.results.setdefault(result.shard, {})
        if result.aggregator in have or len(have) >= MAX_UPDATES_PER_SHARD:
            return False
        have[result.aggregator] = result
        self.exchange.update_arrived(result.shard, result.aggregator)
        self.mark(f"update{result.shard}")
        if self.exchange.complete:
            self.mark("updates")
        self.wake.set()
        return True

    def ranks_before(self, shard: int, one: PeerId, other: PeerId | None) -> bool:
        """Whether aggregator ``one`` comes before ``other`` in ``shard``'s order."""
        plan = self.exchange.plan
        if other is None:
            return True
        return (plan.aggregator_rank(shard, one) or 0) < (plan.aggregator_rank(shard, other) or 0)

    def choice(self) -> dict[int, ShardResult]:
        """One update per shard: the one from the lowest rank we hold."""
        plan = self.exchange.plan
        out = {}
        for shard, have in self.results.items():
            out[shard] = min(
                have.values(), key=lambda r: plan.aggregator_rank(shard, r.aggregator) or 0
            )
        return out


class UpdateIntake:
    """Admits and judges the shard updates of the round in progress."""

    def __init__(
        self,
        installer: Installer,
        streams: Streams,
        params: RoundParams,
        *,
        current: Callable[[], RoundState | None],
        deliver: Callable[[ShardResult], None],
        spawn: Callable[[Coroutine[object, object, None], str], bool],
        tag: str,
        pool: TensorPool | None = None,
    ) -> None:
        self.pool = pool or TensorPool()
        #: (sender, stream id) -> the decoder of an update being received
        self._decoders: dict[tuple[PeerId, int], ChunkDecoder] = {}
        self.installer = installer
        self.streams = streams
        self.params = params
        self.current = current
        self.deliver = deliver
        self.spawn = spawn
        self.tag = tag

    def admit(self, sender: PeerId, header: ShardUpdate) -> None:
        """A shard update's header (09 §9.8, 3.): open its stream, or drop it."""
        why = self._problem(sender, header)
        state = self.current()
        if why is not None or state is None:
            log.warning("[%s] update from %s dropped: %s", self.tag, sender.short(), why)
            return
        a, b = state.slice(header.shard)
        encoding = ENCODINGS[header.encoding]
        # decoded as chunks land, and (unless its slice is written already) added to the base
        # into the new version at once (node.building)
        sink = state.builder.sink(header.shard, sender) if state.builder is not None else None
        decoder = ChunkDecoder(b - a, encoding, self.pool.take(b - a), sink)
        self._decoders[(sender, header.stream_id)] = decoder
        size = payload_len(b - a, encoding)
        refused = self.streams.accept(
            sender, header, size, self._arrived, decoder.tap, self._dropped
        )
        if refused is not None:
            self._decoders.pop((sender, header.stream_id), None)
            self._abandon(sender, header)
            self.pool.give(decoder.out)

    def _abandon(self, sender: PeerId, header: ShardUpdate) -> None:
        """The update stopped before it was kept: its writes into the new version stop."""
        state = self.current()
        if state is None or state.builder is None or state.exchange.plan.round != header.round:
            return
        state.builder.abandoned(header.shard, sender)

    def _problem(self, sender: PeerId, header: ShardUpdate) -> str | None:
        state = self.current()
        base = self.installer.base
        if state is None or base is None or state.base is not base:
            return "no round in progress here"
        plan = state.exchange.plan
        if header.round != plan.round or header.base != base.weights:
            return f"update for round {header.round} on another base"
        if header.shards != plan.shards or header.shard >= len(state.bounds) - 1:
            return f"shard {header.shard} of {header.shards} is not in this round's plan"
        rank = plan.aggregator_rank(header.shard, sender)
        if rank is None or sender not in self.installer.live():
            return f"{sender.short()} does not aggregate shard {header.shard}"
        if time.time() < plan.turn_opens(rank):
            return f"{sender.short()} is rank {rank} of shard {header.shard}, not yet its turn"
        have = state.results.get(header.shard, {})
        if sender in have or len(have) >= MAX_UPDATES_PER_SHARD:
            return f"shard {header.shard} has its updates"
        return None

    def _dropped(self, stream: InStream) -> None:
        assert isinstance(stream.header, ShardUpdate)
        self._abandon(stream.sender, stream.header)
        decoder = self._decoders.pop((stream.sender, stream.header.stream_id), None)
        if decoder is not None and not stream.pending:  # (a chunk being decoded keeps it)
            self.pool.give(decoder.out)

    def _arrived(self, stream: InStream) -> None:
        header = stream.header
        assert isinstance(header, ShardUpdate)
        what = f"{self.tag} update r{header.round} s{header.shard} from {stream.sender.short()}"
        if not self.spawn(self._judge(stream, header), what):
            self._abandon(stream.sender, header)
            self.streams.release(stream)
            decoder = self._decoders.pop((stream.sender, header.stream_id), None)
            if decoder is not None:
                self.pool.give(decoder.out)

    async def _judge(self, stream: InStream, header: ShardUpdate) -> None:
        state = self.current()
        decoder = self._decoders.pop((stream.sender, header.stream_id))
        if state is None or state.exchange.plan.round != header.round:
            self.streams.release(stream)
            self.pool.give(decoder.out)
            return
        a, b = state.slice(header.shard)

        def decode() -> tuple[torch.Tensor | None, str | None]:
            try:
                values, norm, problem = decoder.finish(stream.payload)  # mostly done already
            finally:
                self.streams.release(stream)
            if values is None or problem is not None:
                return values, problem
            base_norm = tensors_norm(state.base.flat[a:b])
            if base_norm > 0 and norm > self.params.max_relative_norm * base_norm:
                return values, f"update norm {norm:.4g} exceeds max_relative_norm x the base's"
            return values, None

        values, problem = await asyncio.to_thread(decode)
        if values is None or problem is not None:
            self._abandon(stream.sender, header)
            self.pool.give(decoder.out)
            self.installer.rejected_versions += 1
            log.warning("[%s] update of shard %d refused: %s", self.tag, header.shard, problem)
            return
        self.deliver(
            ShardResult(
                header.round,
                header.shard,
                stream.sender,
                values,
                header.report,
                stream.wire_bytes,
                stream.seconds,
            )
        )
