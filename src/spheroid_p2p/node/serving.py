"""The traversal server (10): a hop checks a traversal, runs its blocks, forwards or answers.

For each ``TRAVERSE`` the pure plan of ``core.traversal`` decides (is it ours, for our model,
in time); this module waits for a compute turn (fair across peers, ``node.turns``), runs the
blocks on the runtime's threads, and sends what the plan says: ``TRAVERSE`` to the next hop
(over a warm connection, kept hot), ``TRAVERSE_RESULT`` to the client, or ``TRAVERSE_ERROR``.
``PIPE_STEP`` (the autoregressive pipeline baseline, 10 §10.7) goes the same way through its
stage. A failure of ours answers the client ``INTERNAL_ERROR`` instead of leaving it to time
out, and is raised for the node's task guard to log.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING

from spheroid_p2p.core.traversal import (
    Compute,
    Refuse,
    ServedModel,
    check_hop,
    forward,
    hop_reused,
    hop_times,
)
from spheroid_p2p.errors import ErrorCode
from spheroid_p2p.net.peers import PeerManager
from spheroid_p2p.net.sockets import DialError
from spheroid_p2p.node.gossip_glue import GossipGlue
from spheroid_p2p.node.turns import ComputeTurns, Overloaded
from spheroid_p2p.wire.message import Message
from spheroid_p2p.wire.pipeline import PipeResult, PipeStep
from spheroid_p2p.wire.signing import PeerId
from spheroid_p2p.wire.tensors import chunk_digest
from spheroid_p2p.wire.traversal import (
    COMBINE_WEIGHTED,
    HOP_TIMINGS,
    PREFIX_KNOWN,
    InlineTensor,
    Traverse,
    TraverseError,
    TraverseResult,
)

if TYPE_CHECKING:
    from spheroid_p2p.node.compute import ArStageRuntime, BlockRuntime

__all__ = ["TraversalServer", "traverse_error"]

log = logging.getLogger(__name__)


def traverse_error(
    req: Traverse | PipeStep, me: bytes, code: ErrorCode, reason: str, peer: bytes | None = None
) -> TraverseError:
    """The TRAVERSE_ERROR answering ``req`` (a pipeline step answers with its session id);
    ``peer``: the one at fault, ``me`` by default."""
    return TraverseError(
        traversal_id=req.traversal_id if isinstance(req, Traverse) else req.session_id,
        hop=req.hop,
        peer=me if peer is None else peer,
        code=int(code),
        reason=reason[:300],
    )


class TraversalServer:
    """Serves traversals (and pipeline steps) with this node's blocks."""

    def __init__(
        self,
        peers: PeerManager,
        swarm: GossipGlue,
        turns: ComputeTurns,
        *,
        runtime: BlockRuntime | None,
        ar_stage: ArStageRuntime | None,
        keep_hot_s: float,
        tag: str,
    ) -> None:
        self.peers = peers
        self.swarm = swarm
        self.turns = turns
        self.runtime = runtime
        self.ar_stage = ar_stage
        self.keep_hot_s = keep_hot_s
        self.tag = tag
        self.me = peers.me.digest
        #: called after each hop this node computed: (first block, last block, seconds
        #: computing, seconds queued before) — the metrics and the swarm page listen
        self.on_hop: Callable[[int, int, float, float], None] | None = None

    def served(self) -> ServedModel | None:
        runtime = self.runtime
        if runtime is None or runtime.config is None:
            return None
        cfg = runtime.config
        return ServedModel(
            frozenset(runtime.blocks), runtime.config_hash, cfg.span, cfg.layout == "S", cfg.context
        )

    async def _send_to(self, peer: bytes, addr: str, message: Message) -> str | None:
        """Send to ``peer``, dialling ``addr`` first if needed; returns an error or None."""
        target = PeerId(peer)
        if target not in self.peers.connected():
            try:
                await self.swarm.dial_learned(addr, target)
            except DialError as exc:
                return str(exc)
        return None if self.peers.send(target, message) else f"{target.short()} not connected"

    async def _fail(
        self, req: Traverse | PipeStep, code: ErrorCode, reason: str, peer: bytes | None = None
    ) -> None:
        if isinstance(req, Traverse):
            log.warning(
                "[%s] traversal %x hop %d failed: %s", self.tag, req.traversal_id, req.hop, reason
            )
        error = traverse_error(req, self.me, code, reason, peer)
        await self._send_to(req.client, req.reply_addr, error)

    async def answering_failure(
        self, work: Coroutine[object, object, None], req: Traverse | PipeStep
    ) -> None:
        """Run ``work``; a failure of ours answers the client with INTERNAL_ERROR (and is
        raised, for the task guard to log) instead of leaving it to time out."""
        try:
            await work
        except Exception:
            await self._fail(req, ErrorCode.INTERNAL_ERROR, "internal error at this hop")
            raise

    # -- traversals -----------------------------------------------------------------------------
    async def traverse(self, req: Traverse, sender: PeerId) -> None:
        """Run our blocks for one traversal, then forward it or answer the client."""
        arrived = time.monotonic()
        runtime = self.runtime
        plan = check_hop(
            req,
            self.me,
            self.served(),
            runtime.z_shape if runtime is not None else _no_shape,
            (time.monotonic() - arrived) * 1000,
        )
        if isinstance(plan, Refuse):
            await self._fail(req, plan.code, plan.reason, plan.peer)
            return
        assert runtime is not None and isinstance(plan, Compute)
        try:
            async with self.turns.turn(sender.digest):
                out = await runtime.run(
                    req,
                    plan.first,
                    plan.last,
                    None if plan.starting else bytes(req.z.data),
                    start_by=arrived + req.deadline_ms / 1000,
                    peer=sender.digest,
                )
        except Overloaded as exc:
            await self._fail(req, ErrorCode.OVERLOADED, str(exc))
            return
        except TimeoutError as exc:
            await self._fail(req, ErrorCode.TIMEOUT, str(exc))
            return
        computed = time.monotonic()
        queued_ms = max(0.0, (computed - arrived) * 1000 - out.seconds * 1e3)
        if self.on_hop is not None:
            self.on_hop(plan.first, plan.last, out.seconds, queued_ms / 1000)
        if out.output is not None:
            await self._answer(req, out, queued_ms, computed)
            return
        if out.z is None:
            await self._fail(req, ErrorCode.PROTOCOL_VIOLATION, "route ends before the last block")
            return
        from spheroid_p2p.node.tensor_bridge import flat_bytes, torch_dtype  # torch: computing

        raw = bytes(flat_bytes(out.z[0].to(torch_dtype(req.z.dtype))))
        z = InlineTensor(req.z.dtype, tuple(out.z.shape[1:]), 0, chunk_digest(raw), raw)
        mine = (queued_ms, out.seconds * 1e3, (time.monotonic() - computed) * 1000)
        spent_ms = int((time.monotonic() - arrived) * 1000)
        nxt = forward(
            req,
            z,
            raw,
            hop_times(req, mine),
            spent_ms,
            hop_reused(req, out.reused),
            out.mix.lp_bytes(),
            out.mix.qualities,
        )
        if isinstance(nxt, Refuse):
            await self._fail(req, nxt.code, nxt.reason, nxt.peer)
            return
        hop = req.route[req.hop + 1]
        error = await self._send_to(hop.peer, hop.addr, nxt)
        if error:
            await self._fail(
                req,
                ErrorCode.TIMEOUT,
                f"next hop {PeerId(hop.peer).short()} unreachable: {error}",
                peer=hop.peer,
            )
            return
        self.peers.keep_hot(PeerId(hop.peer), self.keep_hot_s)

    async def _answer(self, req: Traverse, out: object, queued_ms: float, computed: float) -> None:
        """The last hop: the span's bytes (and logits) to the client."""
        from spheroid_p2p.node.compute import HopOutput
        from spheroid_p2p.node.tensor_bridge import flat_bytes

        assert isinstance(out, HopOutput) and out.output is not None
        logits = None
        payload = b""
        if out.logits is not None:
            payload = bytes(flat_bytes(out.logits.float()))
            logits = InlineTensor(1, tuple(out.logits.shape), 0, chunk_digest(payload), payload)
        mine = (queued_ms, out.seconds * 1e3, (time.monotonic() - computed) * 1000)
        timings = hop_times(req, mine)
        result = TraverseResult(
            traversal_id=req.traversal_id,
            output=out.output,
            hop_ms=timings[1 :: len(HOP_TIMINGS)],
            logits=logits,
            payload=payload,
            timings=timings,
            reused=hop_reused(req, out.reused) if req.prefix_rule == PREFIX_KNOWN else (),
            combine=req.combine,
            qualities=out.mix.qualities if req.combine == COMBINE_WEIGHTED else (),
        )
        error = await self._send_to(req.client, req.reply_addr, result)
        if error:
            log.warning(
                "[%s] traversal %x: cannot reach the client: %s", self.tag, req.traversal_id, error
            )

    # -- the autoregressive pipeline baseline (10 §10.7) ----------------------------------------
    async def pipe(self, req: PipeStep) -> None:
        """Run our layers for one pipeline step, then forward it or answer the client."""
        arrived = time.monotonic()
        stage = self.ar_stage
        if (
            stage is None
            or req.route[req.hop].peer != self.me
            or req.config_hash != stage.config_hash
        ):
            await self._fail(req, ErrorCode.BLOCK_NOT_SERVED, "this peer does not serve that stage")
            return
        try:
            hidden, output = await stage.step(
                req.session_id,
                req.pos,
                req.tokens,
                None if req.hop == 0 else bytes(req.hidden.data),
                arrived + req.deadline_ms / 1000,
            )
        except TimeoutError as exc:
            await self._fail(req, ErrorCode.TIMEOUT, str(exc))
            return
        if output is not None:
            answer = PipeResult(session_id=req.session_id, output=output)
            await self._send_to(req.client, req.reply_addr, answer)
            return
        if hidden is None or req.hop + 1 >= len(req.route):
            await self._fail(req, ErrorCode.PROTOCOL_VIOLATION, "route ends before the last stage")
            return
        from spheroid_p2p.node.tensor_bridge import flat_bytes

        raw = bytes(flat_bytes(hidden[0].float()))
        nxt = req.route[req.hop + 1]
        spent = int((time.monotonic() - arrived) * 1000)
        onward = dataclasses.replace(
            req,
            hop=req.hop + 1,
            payload=raw,
            tokens=b"",
            deadline_ms=max(0, req.deadline_ms - spent),
            hidden=InlineTensor(1, tuple(hidden.shape[1:]), 0, chunk_digest(raw), raw),
        )
        error = await self._send_to(nxt.peer, nxt.addr, onward)
        if error:
            await self._fail(req, ErrorCode.TIMEOUT, f"next stage unreachable: {error}", nxt.peer)


def _no_shape(first: int, req: Traverse) -> tuple[int, int]:
    return (0, 0)
