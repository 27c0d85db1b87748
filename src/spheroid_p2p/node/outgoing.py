"""Our delta's shards out (09 §9.5 steps 1 and 3): encoded once per round, streamed to each
shard's aggregator, sent again after a NOT_READY answer.

A shard is encoded on a worker thread block by block, each block's bytes going out as soon as
it is done; a hand-over to the shard's next rank resends the same bytes (encoding again would
count the error feedback twice). A delta refused as late (``ROUND_CLOSED``) is kept for the
staleness rule (09 §9.6).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine

from spheroid_p2p.core.plan import SendShard
from spheroid_p2p.errors import ErrorCode, code_name
from spheroid_p2p.ml.averaging import ENCODING_DTYPES, SliceEncoder
from spheroid_p2p.node.buffers import TensorPool
from spheroid_p2p.node.installer import Installer
from spheroid_p2p.node.shards import to_payload
from spheroid_p2p.node.swarm import SwarmView
from spheroid_p2p.node.tensor_bridge import flat_bytes
from spheroid_p2p.node.transfer import FetchError, Payload, Transfers
from spheroid_p2p.node.updates import RoundState
from spheroid_p2p.wire.deltas import ShardDelta
from spheroid_p2p.wire.manifests import ENCODINGS

__all__ = ["DeltaSender"]

log = logging.getLogger(__name__)

_ENCODING_CODES = {name: code for code, name in ENCODINGS.items()}
#: Elements of a shard encoded per step: its first chunks go out while the rest is encoded.
ENCODE_BLOCK_ELEMS = 1 << 20
#: A delta its aggregator answered NOT_READY (it is installing the base, or joining) is sent
#: again after this many seconds, doubling each time up to NOT_READY_MAX_S (09 §9.5).
NOT_READY_RETRY_S = 0.05
NOT_READY_MAX_S = 1.0


class DeltaSender:
    """Sends the shards of this replica's delta, round after round."""

    def __init__(
        self,
        swarm: SwarmView,
        transfers: Transfers,
        installer: Installer,
        encoding: str,
        pool: TensorPool,
        *,
        spawn: Callable[[Coroutine[object, object, None], str], bool],
        free: Callable[[RoundState], None],
        tag: str,
    ) -> None:
        self.swarm = swarm
        self.transfers = transfers
        self.installer = installer
        self.encoding = encoding
        self.encoder = SliceEncoder(encoding)
        self.pool = pool
        self.spawn = spawn
        self.free = free
        self.block = installer.block
        self.tag = tag

    def _payload(self, state: RoundState, shard: int) -> Payload:
        """Shard ``shard`` of our delta, encoded once per round (a hand-over resends the same
        bytes; encoding again would count the error feedback twice). The encoding runs on a
        worker thread block by block, and each block's bytes can go out as soon as it is done
        (int8, whose scales come last, is encoded whole first)."""
        payload = state.payloads.get(shard)
        if payload is not None:
            return payload
        a, b = state.bounds[shard], state.bounds[shard + 1]
        encoding = self.encoding
        numel = state.delta.numel()
        elem = {"float32": 4, "float16": 2, "bfloat16": 2, "int8": 1}[encoding]
        if encoding == "int8":
            encoded = self.encoder.encode(state.delta[a:b], a, numel)
            payload = Payload.of(to_payload(encoded), elem)
            state.payloads[shard] = payload
            return payload
        out = self.pool.take(b - a, ENCODING_DTYPES[encoding])
        state.encoded.append(out)
        payload = Payload.of(flat_bytes(out), elem, ready=0)
        state.payloads[shard] = payload
        loop = asyncio.get_running_loop()

        def encode() -> None:
            try:
                for lo in range(0, b - a, ENCODE_BLOCK_ELEMS):
                    hi = min(b - a, lo + ENCODE_BLOCK_ELEMS)
                    self.encoder.encode(state.delta[a + lo : a + hi], a + lo, numel, out[lo:hi])
                    loop.call_soon_threadsafe(payload.advance, hi * elem)
            except BaseException as exc:
                loop.call_soon_threadsafe(payload.fail, exc)
                raise

        async def encoding() -> None:
            state.sending += 1  # the pooled tensor is in use until the encoder is done
            try:
                await asyncio.to_thread(encode)
            finally:
                state.sending -= 1
                self.free(state)

        self.spawn(encoding(), f"{self.tag} encode shard {shard}")
        return payload

    async def send(self, state: RoundState, action: SendShard) -> None:
        """Send shard ``action.shard`` of our delta to ``action.to`` and take its ack."""
        state.sending += 1
        try:
            payload = self._payload(state, action.shard)
            await self._send_payload(state, action, payload)
        finally:
            state.sending -= 1
            self.free(state)

    async def _send_payload(self, state: RoundState, action: SendShard, payload: Payload) -> None:
        plan = state.exchange.plan
        base = state.base
        give_up = plan.handover_at(action.rank)
        retry = NOT_READY_RETRY_S
        while not self.swarm.stopping and self.installer.base is base:
            header = ShardDelta(
                stream_id=self.transfers.streams.new_id(),
                block=self.block,
                round=plan.round,
                base=base.weights,
                base_version=base.version,
                shard=action.shard,
                shards=plan.shards,
                steps=state.steps,
                loss=0.0,
                encoding=_ENCODING_CODES[self.encoding],
            )
            if not await self.swarm.connect([action.to]):
                log.warning("[%s] shard %d: %s unreachable", self.tag, action.shard, action.to)
                return
            try:
                ack = await self.transfers.streams.send_delta(
                    action.to, header, payload, max(5.0, give_up - time.time())
                )
            except FetchError as exc:
                log.warning("[%s] shard %d to %s: %s", self.tag, action.shard, action.to, exc)
                return
            if ack.code == ErrorCode.NOT_READY and time.time() + retry < give_up:
                await asyncio.sleep(retry)  # it is installing or joining: again (09 §9.5)
                retry = min(NOT_READY_MAX_S, 2 * retry)
                continue
            if ack.code == ErrorCode.ROUND_CLOSED:
                a, b = state.bounds[action.shard], state.bounds[action.shard + 1]
                state.late[action.shard] = state.delta[a:b].clone()
            if ack.code != 0:
                log.warning(
                    "[%s] round %d shard %d: %s refused our delta: %s: %s",
                    self.tag,
                    plan.round,
                    action.shard,
                    action.to.short(),
                    code_name(ack.code),
                    ack.reason,
                )
            return
