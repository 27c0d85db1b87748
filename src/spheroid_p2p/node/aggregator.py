"""Averaging the shards this replica aggregates (09 §9.5-9.7): deltas in, one update out.

For each (round, shard) this peer aggregates — as rank 0, or as the rank that took it over —
one :class:`~spheroid_p2p.core.rounds.Aggregation` judges the deltas and says when the shard
closes: at its deadline (a timer armed at ``closes_at``) or as soon as every live replica
delivered (checked after each delta). Nothing polls. Each delta's header is admitted before
anything is allocated (this peer's turn, the round, the plan's shard count), its payload lands
in a pooled buffer (``transfer.streams``), is decoded and judged on a worker thread, and is
answered with a ``DELTA_ACK``.

At close the accepted deltas are averaged (weights from ``Aggregation.close``), the mean is
encoded with this peer's error feedback, and the update is streamed to every live replica while
its later blocks of elements are still being computed (``Payload`` watermark), and handed to
this replica's own round (``deliver``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field

import torch

from spheroid_p2p.core.plan import shard_bounds
from spheroid_p2p.core.rounds import Aggregation, DeltaOffer, Outcome, RoundParams
from spheroid_p2p.errors import ErrorCode, code_name
from spheroid_p2p.ml.averaging import SliceEncoder, decode_slice, tensors_norm
from spheroid_p2p.node.buffers import TensorPool
from spheroid_p2p.node.installer import Installer
from spheroid_p2p.node.roundlog import RoundLog
from spheroid_p2p.node.shards import ChunkDecoder, payload_len
from spheroid_p2p.node.swarm import SwarmView
from spheroid_p2p.node.tensor_bridge import flat_bytes
from spheroid_p2p.node.transfer import FetchError, InStream, Payload, Streams
from spheroid_p2p.wire.deltas import ShardDelta, ShardUpdate
from spheroid_p2p.wire.manifests import ENCODINGS
from spheroid_p2p.wire.reports import RoundReport
from spheroid_p2p.wire.signing import PeerId

__all__ = ["Aggregators", "ShardResult"]

log = logging.getLogger(__name__)

_ENCODING_CODES = {name: code for code, name in ENCODINGS.items()}
#: Elements averaged and encoded per step of an update (a multiple of INT8_BLOCK_ELEMS):
#: the update's first chunks go out while the rest is computed.
UPDATE_BLOCK_ELEMS = 1 << 20


@dataclass
class ShardResult:
    """An averaged shard, as this replica's round takes it: the decoded update, who sent it
    and the shard's report."""

    round: int
    shard: int
    aggregator: PeerId
    update: torch.Tensor
    report: RoundReport
    bytes: int = 0
    seconds: float = 0.0


@dataclass
class _Shard:
    agg: Aggregation
    start: int
    end: int
    deltas: dict[PeerId, torch.Tensor] = field(default_factory=dict)
    #: the deltas decoded into pooled tensors (our own is a view of the round's delta)
    pooled: list[torch.Tensor] = field(default_factory=list)
    delta_times: dict[PeerId, tuple[int, float]] = field(default_factory=dict)
    timer: asyncio.TimerHandle | None = None


class Aggregators:
    """The shards this replica aggregates, round after round."""

    def __init__(
        self,
        swarm: SwarmView,
        installer: Installer,
        streams: Streams,
        *,
        encoding: str,
        params: RoundParams,
        deliver: Callable[[ShardResult], None],
        spawn: Callable[[Coroutine[object, object, None], str], bool],
        tag: str,
        roundlog: RoundLog | None = None,
        clock: Callable[[], float] = time.time,
        pool: TensorPool | None = None,
    ) -> None:
        #: tensors reused round after round (decoded deltas; updates go to the round, which
        #: gives them back when it ends)
        self.pool = pool or TensorPool()
        self.swarm = swarm
        self.installer = installer
        self.streams = streams
        self.encoding = encoding
        self.params = params
        self.deliver = deliver
        #: the round log (``block-B.rounds.jsonl``); None: not kept
        self.roundlog = roundlog
        self.spawn = spawn
        self.tag = tag
        self.clock = clock
        self.encoder = SliceEncoder(encoding)
        self.shards: dict[tuple[int, int], _Shard] = {}
        #: (sender, stream id) -> the decoder of a delta being received
        self._decoders: dict[tuple[PeerId, int], ChunkDecoder] = {}
        #: closed shards' outcomes, for the round log
        self.outcomes: list[Outcome] = []

    # -- opening a shard --------------------------------------------------------------------------
    def _shard(self, round_: int, shard: int, shards: int) -> tuple[_Shard | None, tuple[int, str]]:
        """This peer's aggregation of (round, shard), opened on first use; or why not."""
        base = self.installer.base
        if base is None:
            return None, (int(ErrorCode.NOT_READY), "this replica has not joined yet")
        if round_ <= base.version:
            return None, (int(ErrorCode.ROUND_CLOSED), f"version {round_} is out")
        if round_ > base.version + 1:
            return None, (int(ErrorCode.NOT_READY), f"version {round_ - 1} is not installed here")
        key = (round_, shard)
        found = self.shards.get(key)
        if found is not None:
            return found, (0, "")
        plan = self.installer.plan()
        bounds = shard_bounds(self.installer.layout.numel, plan.shards)
        if shards != plan.shards or shard >= len(bounds) - 1:
            why = f"round {round_} has {plan.shards} shards here, not shard {shard} of {shards}"
            return None, (int(ErrorCode.DELTA_REJECTED), why)
        rank = plan.aggregator_rank(shard, self.swarm.me)
        if rank is None:
            return None, (int(ErrorCode.DELTA_REJECTED), "this peer does not aggregate that shard")
        known = {base.version: base.weights}
        if self.installer.previous is not None:
            known[self.installer.previous.version] = self.installer.previous.weights
        start, end = bounds[shard], bounds[shard + 1]
        agg = Aggregation(
            self.installer.block,
            round_,
            shard,
            known,
            tensors_norm(base.flat[start:end]),
            self.installer.live(),
            plan.turn_opens(rank),
            plan.shard_closes(rank),
            self.params,
        )
        state = _Shard(agg, start, end)
        self.shards[key] = state
        loop = asyncio.get_running_loop()
        wait = max(0.0, agg.closes_at - self.clock())
        state.timer = loop.call_later(wait, self._maybe_close, key)
        for old in [k for k in self.shards if k[0] < base.version]:
            self._forget(old)
        return state, (0, "")

    def _forget(self, key: tuple[int, int]) -> None:
        state = self.shards.pop(key, None)
        if state is not None and state.timer is not None:
            state.timer.cancel()

    # -- deltas in --------------------------------------------------------------------------------
    def admit(self, sender: PeerId, header: ShardDelta) -> None:
        """A shard delta's header: open its stream (exactly one shard of our base) or refuse."""
        state, (code, why) = self._shard(header.round, header.shard, header.shards)
        if state is not None and sender not in self.installer.live():
            state, (code, why) = None, (int(ErrorCode.DELTA_REJECTED), "not a live replica")
        if state is not None and self.clock() < state.agg.opens_at:
            state, (code, why) = None, (int(ErrorCode.NOT_READY), "this rank's turn has not begun")
        if state is None:
            self.streams.ack(sender, header, code, why)
            return
        encoding = ENCODINGS[header.encoding]
        n = state.end - state.start
        decoder = ChunkDecoder(n, encoding, self.pool.take(n))  # decodes as chunks land
        self._decoders[(sender, header.stream_id)] = decoder
        size = payload_len(n, encoding)
        refused = self.streams.accept(
            sender, header, size, self._arrived, decoder.tap, self._dropped
        )
        if refused is not None:
            self._decoders.pop((sender, header.stream_id), None)
            self.pool.give(decoder.out)
            self.streams.ack(sender, header, *refused)

    def _dropped(self, stream: InStream) -> None:
        decoder = self._decoders.pop((stream.sender, stream.header.stream_id), None)
        if decoder is not None and not stream.pending:  # (a chunk being decoded keeps it)
            self.pool.give(decoder.out)

    def _arrived(self, stream: InStream) -> None:
        header = stream.header
        assert isinstance(header, ShardDelta)
        what = f"{self.tag} delta r{header.round} s{header.shard} from {stream.sender.short()}"
        if not self.spawn(self._judge_or_fail(stream, header), what):
            self.streams.release(stream)
            decoder = self._decoders.pop((stream.sender, header.stream_id), None)
            if decoder is not None:
                self.pool.give(decoder.out)

    async def _judge_or_fail(self, stream: InStream, header: ShardDelta) -> None:
        try:
            await self._judge(stream, header)
        except Exception:  # our failure: the sender hears it at once instead of timing out
            self.streams.ack(stream.sender, header, ErrorCode.INTERNAL_ERROR, "internal error")
            raise

    async def _judge(self, stream: InStream, header: ShardDelta) -> None:
        key = (header.round, header.shard)
        state = self.shards.get(key)
        decoder = self._decoders.pop((stream.sender, header.stream_id))
        if state is None:
            self.streams.release(stream)
            self.pool.give(decoder.out)
            self.streams.ack(stream.sender, header, ErrorCode.ROUND_CLOSED, "round is over")
            return

        def decode() -> tuple[torch.Tensor | None, float, str | None]:
            try:
                values, norm, problem = decoder.finish(stream.payload)  # mostly done already
            finally:
                self.streams.release(stream)
            if values is None or problem is not None:
                return values, norm, problem
            bound = self.params.max_relative_norm * state.agg.base_norm
            if state.agg.base_norm > 0 and norm > bound:
                why = f"norm {norm:.4g} exceeds {bound:.4g} (max_relative_norm x the base's)"
                return values, norm, why
            return values, norm, None

        values, norm, problem = await asyncio.to_thread(decode)
        offer = DeltaOffer(
            stream.sender,
            header.round,
            header.base_version,
            header.base,
            header.steps,
            norm,
            problem,
            stream.wire_bytes,
        )
        code, why = state.agg.offer(offer, self.clock())
        self.streams.ack(stream.sender, header, code, why)
        state.delta_times[stream.sender] = (stream.wire_bytes, stream.seconds)
        if code == 0 and values is not None:
            state.deltas[stream.sender] = values
            state.pooled.append(values)
        else:
            self.pool.give(decoder.out)
        if code != 0:
            log.warning(
                "[%s] round %d shard %d: delta from %s refused: %s: %s",
                self.tag,
                header.round,
                header.shard,
                stream.sender.short(),
                code_name(code),
                why,
            )
        self._maybe_close(key)

    def offer_own(
        self, round_: int, shard: int, shards: int, values: torch.Tensor, steps: int
    ) -> int:
        """Our own delta's slice for a shard we aggregate (unencoded); the offer's code."""
        state, (code, why) = self._shard(round_, shard, shards)
        if state is None:
            log.warning(
                "[%s] round %d shard %d: own delta not taken: %s", self.tag, round_, shard, why
            )
            return code
        base = self.installer.base
        assert base is not None
        offer = DeltaOffer(
            self.swarm.me, round_, base.version, base.weights, steps, tensors_norm(values)
        )
        code, why = state.agg.offer(offer, self.clock())
        if code == 0:
            state.deltas[self.swarm.me] = values
        self._maybe_close((round_, shard))
        return code

    # -- closing ----------------------------------------------------------------------------------
    def _maybe_close(self, key: tuple[int, int]) -> None:
        state = self.shards.get(key)
        if state is None or state.agg.closed is not None or not state.agg.due(self.clock()):
            return
        if state.timer is not None:
            state.timer.cancel()
        outcome = state.agg.close(self.clock())
        self.outcomes.append(outcome)
        self.spawn(self._publish(key, state, outcome), f"{self.tag} update r{key[0]} s{key[1]}")

    async def _publish(self, key: tuple[int, int], state: _Shard, outcome: Outcome) -> None:
        """Average, encode and stream the shard's update; hand it to our own round too."""
        round_, shard = key
        n = state.end - state.start
        weighted = [(state.deltas[p], w) for p, w in outcome.weights.items() if p in state.deltas]
        state.deltas = {}
        report = RoundReport(
            contributors=tuple((p.digest, w, s, st) for p, w, s, st in outcome.contributors),
            rejected=tuple((p.digest, c, why[:200]) for p, c, why in outcome.rejected),
            late=tuple(p.digest for p in outcome.late),
            bytes_in=outcome.bytes_in,
        )
        plan_shards = self.installer.plan().shards
        encoding = self.encoding
        elem = {"float32": 4, "float16": 2, "bfloat16": 2, "int8": 1}[encoding]
        size = payload_len(n, encoding)
        payload = Payload(0, elem)
        payload.buffer = self.streams.pool.take(size)  # reused round after round
        payload.view = memoryview(payload.buffer)
        update = self.pool.take(n)
        loop = asyncio.get_running_loop()

        def compute() -> None:
            """Average and encode block by block; each block's bytes become sendable at once
            (int8's scales follow all the values, so its last chunks wait for the end)."""
            try:
                scales = []
                itemsize = 1 if encoding == "int8" else elem
                numel = self.installer.layout.numel
                acc = torch.empty(min(n, UPDATE_BLOCK_ELEMS), dtype=torch.float32)
                for lo in range(0, n, UPDATE_BLOCK_ELEMS):
                    hi = min(n, lo + UPDATE_BLOCK_ELEMS)
                    block = acc[: hi - lo].zero_()
                    for values, weight in weighted:
                        block.add_(values[lo:hi], alpha=weight)
                    encoded = self.encoder.encode(block, state.start + lo, numel)
                    if encoded.scales is None:  # what the receivers decode, converted in place
                        update[lo:hi].copy_(encoded.values)
                    else:
                        update[lo:hi] = decode_slice(encoded)
                    payload.buffer[lo * itemsize : hi * itemsize] = flat_bytes(encoded.values)
                    if encoded.scales is not None:
                        scales.append(encoded.scales)
                    loop.call_soon_threadsafe(payload.advance, hi * itemsize)
                if scales:
                    payload.buffer[n:] = flat_bytes(torch.cat(scales).float())
                loop.call_soon_threadsafe(payload.advance, len(payload.buffer))
            except BaseException as exc:
                loop.call_soon_threadsafe(payload.fail, exc)
                raise
            finally:
                for tensor in state.pooled:
                    self.pool.give(tensor)
                state.pooled.clear()

        header = ShardUpdate(
            stream_id=self.streams.new_id(),
            block=self.installer.block,
            round=round_,
            base=self.installer.base.weights if self.installer.base else bytes(32),
            shard=shard,
            shards=plan_shards,
            encoding=_ENCODING_CODES[encoding],
            report=report,
        )
        receivers = sorted(self.installer.live() - {self.swarm.me}, key=lambda p: p.digest)
        reached = await self.swarm.connect(receivers)
        try:
            async with asyncio.TaskGroup() as group:
                for peer in reached:
                    group.create_task(self._send(peer, header, payload))
                await asyncio.to_thread(compute)
                # our own round has its update as soon as it is computed, while it streams
                self.deliver(ShardResult(round_, shard, self.swarm.me, update, report))
        finally:
            self.streams.pool.give(payload.buffer)
        if self.roundlog is not None:
            self.roundlog.shard(outcome, state.delta_times, len(reached), size)
        log.info(
            "[%s] round %d shard %d closed (%s): %d contributors, %d refused, %d late; "
            "update to %d replicas",
            self.tag,
            round_,
            shard,
            "barrier" if outcome.early else "deadline",
            len(outcome.contributors),
            len(outcome.rejected),
            len(outcome.late),
            len(reached),
        )

    async def _send(self, peer: PeerId, header: ShardUpdate, payload: Payload) -> None:
        try:
            await self.streams.send(peer, header, payload)
        except FetchError as exc:
            log.warning("[%s] update to %s failed: %s", self.tag, peer.short(), exc)
