"""The node: composes identity, connections and gossip; owns every task (composition root).

``Node.run()`` holds one ``TaskGroup`` with the listener, the gossip timer, bootstrap dials and
every connection. ``Node.ready`` is set once the listener is bound (``bound_address`` then
holds the real port). ``Node.stop()`` publishes signed departures, lets them drain, closes
every connection with NO_ERROR and returns from ``run()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import random
import time
from typing import TYPE_CHECKING

from spheroid_p2p import __version__
from spheroid_p2p.core.actions import Action, Dial, Probe, Send
from spheroid_p2p.core.connection import ConnectionLost, ConnectionParams, FrameSigner
from spheroid_p2p.core.freshness import initial_seq
from spheroid_p2p.core.gossip import GossipService, LocalClaim
from spheroid_p2p.core.limits import PeerLimits, TokenBucket
from spheroid_p2p.core.rounds import RoundParams
from spheroid_p2p.errors import ErrorCode
from spheroid_p2p.identity import load_or_create_identity
from spheroid_p2p.net.peers import DialError, PeerManager, parse_addr
from spheroid_p2p.node.config import NodeConfig
from spheroid_p2p.node.store import VersionStore
from spheroid_p2p.node.transfer import ReceivedDelta, Transfers
from spheroid_p2p.node.turns import ComputeTurns, Overloaded
from spheroid_p2p.params import MAX_STATUS_RECORDS
from spheroid_p2p.wire.codec import Envelope
from spheroid_p2p.wire.deltas import DeltaHeader
from spheroid_p2p.wire.gossip import (
    GossipDigest,
    GossipRecords,
    GossipRequest,
    GossipSummary,
    GossipSuspect,
)
from spheroid_p2p.wire.manifests import SignedManifest
from spheroid_p2p.wire.message import Message
from spheroid_p2p.wire.signing import KeyPair, PeerId
from spheroid_p2p.wire.status import ConnView, RecordView, StatusRequest, StatusResponse
from spheroid_p2p.wire.tensors import chunk_digest
from spheroid_p2p.wire.transfer import ChunkGet, TransferError, VersionGet, VersionInfo

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Coroutine
    from pathlib import Path

    from spheroid_p2p.node.compute import ArStageRuntime, BlockRuntime
    from spheroid_p2p.node.replica import BlockReplica
    from spheroid_p2p.node.trainer import TrainingJob
from spheroid_p2p.wire.traversal import (
    HOP_TIMINGS,
    Z_DTYPES,
    Hop,
    InlineTensor,
    PipeResult,
    PipeStep,
    Traverse,
    TraverseError,
    TraverseResult,
)

__all__ = ["Node", "running_node"]

log = logging.getLogger(__name__)

AGENT = f"spheroid_p2p/{__version__}"
_GOSSIP_TYPES = (GossipSummary, GossipDigest, GossipRecords, GossipRequest, GossipSuspect)
#: Which bucket of core.limits.REQUEST_RATES each request type spends from.
_RATE_KINDS: dict[type[Message], str] = {
    StatusRequest: "status",
    GossipRecords: "gossip",
    GossipSuspect: "gossip",
    # each of these makes us send a digest or records: a tighter bucket bounds amplification
    GossipSummary: "gossip_sync",
    GossipDigest: "gossip_sync",
    GossipRequest: "gossip_sync",
    Traverse: "traverse",
    PipeStep: "traverse",
    VersionGet: "version_get",
    ChunkGet: "chunk_get",
    DeltaHeader: "delta",
}
PROTOCOL = ErrorCode.PROTOCOL_VIOLATION
#: How long a probe of a possibly dead peer may take (connect and handshake).
PROBE_TIMEOUT_S = 3.0
GOSSIP_CAPABILITY = "gossip/1"
#: What a node lists in its HELLO (06 §6.6): every service it answers.
NODE_CAPABILITIES = (GOSSIP_CAPABILITY, "transfer/1", "average/1", "traverse/1")
MAX_PARALLEL_DIALS = 8
#: Seconds between checks that the next block's servers are connected (warm_next_hops); the
#: check runs when the node's timer loop wakes (a gossip event or deadline), at most this often.
WARM_CHECK_S = 1.0
#: Dials a second (and burst) to addresses learned from peers (records, routes, replies), so
#: records cannot turn the node into a tool that dials anything (security.md §S.4).
DIAL_RATE = 5.0
DIAL_BURST = 20.0
#: Requests of one peer that may wait for compute (more: OVERLOADED), and requests that
#: compute at once (as many as the runtime has traversal threads).
MAX_WAITING_PER_PEER = 8
TRAVERSAL_SLOTS = 4
#: How long the node stops reading from a peer that exceeded one of its buckets.
THROTTLE_S = 0.25
#: Estimated bytes of records in one STATUS_RESPONSE page (well under MAX_SIGNED_BYTES).
STATUS_PAGE_BYTES = 40 * 1024
#: Connections listed in a STATUS_RESPONSE.
MAX_STATUS_CONNECTIONS = 64


class Node:
    """A long-lived peer."""

    def __init__(self, config: NodeConfig, key: KeyPair) -> None:
        self.config = config
        self.key = key
        self.ready = asyncio.Event()
        self.bound_address: tuple[str, int] | None = None
        self.started_at = time.monotonic()
        seq0 = initial_seq(time.time())
        self.signer = FrameSigner(key, seq0)
        self.gossip = GossipService(key, config.gossip, random.Random(), first_seq=seq0)
        self.peers = PeerManager(
            self.signer,
            on_open=self._on_open,
            on_message=self._on_message,
            on_close=self._on_close,
            listen_addrs=lambda: self.gossip.addrs,
            agent=AGENT,
            capabilities=NODE_CAPABILITIES,
            max_connections=config.max_connections,
            versions=config.versions,
            encrypt=config.encrypt,
            tcp_congestion=config.tcp_congestion,
            # tensor chunks are hashed on the transfer worker thread, not while decoding
            params=ConnectionParams(verify_chunks=False),
        )
        self._stop = asyncio.Event()
        self._wake = asyncio.Event()
        self._dialing: set[PeerId] = set()
        self._next_warm = 0.0
        self._dial_slots = asyncio.Semaphore(MAX_PARALLEL_DIALS)
        self._group: asyncio.TaskGroup | None = None
        #: guarded tasks that raised (see :meth:`spawn`); 0 on a healthy node
        self.task_failures = 0
        self.tag = key.peer_id.short()
        self.runtime: BlockRuntime | None = None
        if config.checkpoints or (config.train_blocks and config.corpus):
            from spheroid_p2p.node.compute import BlockRuntime

            if config.threads:
                import torch

                torch.set_num_threads(config.threads)
            self.runtime = BlockRuntime(config.checkpoints)
        self.traversals_served = 0
        #: what each peer may ask of us (security.md §S.4), and turns on the compute thread
        self.limits: PeerLimits[PeerId] = PeerLimits()
        self.turns = ComputeTurns(slots=TRAVERSAL_SLOTS, per_peer=MAX_WAITING_PER_PEER)
        #: dials to addresses learned from the network (records, routes, replies)
        self._dial_budget = TokenBucket(DIAL_RATE, DIAL_BURST)
        self.store = VersionStore(config.data_dir / "versions")
        self.transfers = Transfers(
            key, self.peers, self.store, self.tag, compression=config.compression, spawn=self.spawn
        )
        self.transfers.on_delta = self._on_delta
        self.transfers.admit_delta = self._admit_delta
        self.transfers.on_manifest = self._on_manifest
        self.replicas: dict[int, BlockReplica] = {}
        #: Version of a block we trained in rounds and now serve (its store holds it).
        self.served_versions: dict[int, int] = {}
        self.ar_stage: ArStageRuntime | None = None
        if config.ar_checkpoint is not None:
            from spheroid_p2p.node.compute import ArStageRuntime, BlockRuntime

            if self.runtime is None:
                self.runtime = BlockRuntime()
            stage, _, stages = (config.ar_stage or "0/1").partition("/")
            self.ar_stage = ArStageRuntime(
                config.ar_checkpoint, int(stage), int(stages), self.runtime.pool
            )

    # -- lifecycle --------------------------------------------------------------------------
    def stop(self) -> None:
        """Ask :meth:`run` to shut down cleanly (safe from a signal handler)."""
        self._stop.set()
        self._wake.set()

    async def run(self) -> None:
        """Run until :meth:`stop`. Propagates failures of node-wide tasks."""
        async with asyncio.TaskGroup() as group:
            self._group = group
            host, port = parse_addr(self.config.listen, allow_any_port=True)
            self.bound_address = await self.peers.listen(host, port)
            advertised = self.config.advertise or f"{self.bound_address[0]}:{self.bound_address[1]}"
            self.gossip.addrs = (advertised,)
            log.info(
                "[%s] listening on %s:%d (peer id %s)",
                self.tag,
                *self.bound_address,
                self.key.peer_id,
            )
            now = time.monotonic()
            for block in self.config.serve_blocks:
                self._apply(self.gossip.publish(LocalClaim(block=block, role="serve"), now))
            self._announce_served(now)
            if self.ar_stage is not None:
                claim = LocalClaim(
                    block=self.ar_stage.stage,
                    role="serve",
                    n_blocks=self.ar_stage.stages,
                    config_hash=self.ar_stage.config_hash,
                    context=self.ar_stage.context,
                )
                self._apply(self.gossip.publish(claim, now))
            model = self.config.model
            for block in self.config.train_blocks:
                claim = LocalClaim(
                    block=block,
                    role="train",
                    n_blocks=model.n_blocks,
                    config_hash=model.config_hash(),
                )
                self._apply(self.gossip.publish(claim, now))
                if self.config.corpus:
                    group.create_task(self._train(block))
            for addr in self.config.bootstrap:
                group.create_task(self._bootstrap(addr))
            self.ready.set()
            await self._timer_loop()
            self._apply(self.gossip.depart(time.monotonic()))
            await self.peers.close()
            self.transfers.close()
            await asyncio.to_thread(self.store.close)  # waits for pending fsyncs
            self._log_traffic()
            log.info("[%s] stopped", self.tag)

    def _log_traffic(self) -> None:
        log.debug(
            "[%s] traffic uptime=%.3f frames_out=%d bytes_out=%d records=%d peers=%d",
            self.tag,
            time.monotonic() - self.started_at,
            self.peers.frames_out,
            self.peers.bytes_out,
            len(self.gossip.table),
            len(self.peers.connected()),
        )

    async def _timer_loop(self) -> None:
        next_stats = time.monotonic()
        while not self._stop.is_set():
            now = time.monotonic()
            if now >= next_stats:
                self._log_traffic()
                next_stats = now + 2.0
            deadline = self.gossip.next_deadline(now)
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, deadline - now)):
                    await self._wake.wait()
            if self._stop.is_set():
                return
            now = time.monotonic()
            if now >= self._next_warm:
                self._next_warm = now + WARM_CHECK_S
                self._warm_next_hops()
            if self.gossip.next_deadline(now) <= now:
                try:
                    self._apply(self.gossip.handle_timer(now))
                except Exception:  # a bug (perhaps on a peer's record): log it, back off, go on
                    self.task_failures += 1
                    log.exception("[%s] gossip timer failed; retrying in 1 s", self.tag)
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(1.0):
                            await self._stop.wait()

    def _next_hop_servers(self) -> list[tuple[PeerId, str]]:
        """Live servers of the block (or pipeline stage) after the last one we serve."""
        wanted: list[tuple[int, str]] = []
        runtime = self.runtime
        if runtime is not None and runtime.config is not None and runtime.blocks:
            nxt = max(runtime.blocks) + 1
            if nxt < runtime.config.n_blocks:
                wanted.append((nxt, runtime.config_hash))
        if self.ar_stage is not None and self.ar_stage.stage + 1 < self.ar_stage.stages:
            wanted.append((self.ar_stage.stage + 1, self.ar_stage.config_hash))
        me = self.key.peer_id
        out = []
        for block, config_hash in wanted:
            found = [
                (e.record.owner, e.record.addrs[0])
                for e in self.gossip.table.entries()
                if e.record.role == "serve"
                and e.record.block == block
                and not e.record.departed
                and e.record.addrs
                and e.record.owner != me
                and (not e.record.config_hash or e.record.config_hash == config_hash)
            ]
            out.extend(sorted(found, key=lambda f: f[0].digest)[: self.config.warm_next_hops])
        return out

    def _warm_next_hops(self) -> None:
        """Keep connections open to servers of the next block (``warm_next_hops``), so a
        traversal's forward does not wait for a dial and a handshake (two round trips on a
        WAN): dialled within the dial budget, like any learned address."""
        if not self.config.warm_next_hops:
            return
        connected = set(self.peers.connected())
        dials = [
            Dial(peer, (addr,)) for peer, addr in self._next_hop_servers() if peer not in connected
        ]
        if dials:
            self._apply(list(dials))

    # -- tasks ------------------------------------------------------------------------------
    def spawn(self, work: Coroutine[object, object, None], what: str) -> bool:
        """Run ``work`` in the node's TaskGroup, guarded: an exception it raises is logged
        (naming ``what``: the peer, block or request it served) and counted in
        ``task_failures``, and never ends the node. Work caused by a peer's message always
        runs here, so no remote input can stop the node. False once the node is stopping."""
        if self._group is None or self._stop.is_set():
            work.close()
            return False
        self._group.create_task(self._guarded(work, what))
        return True

    async def _guarded(self, work: Coroutine[object, object, None], what: str) -> None:
        try:
            await work
        except Exception:  # a bug or a peer's input we failed to reject at the edge
            self.task_failures += 1
            log.exception("[%s] %s failed; the node goes on", self.tag, what)

    # -- actions and events -----------------------------------------------------------------
    def _apply(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, Send):
                self.peers.send(action.peer, action.message)
            elif (
                isinstance(action, Dial)
                and action.peer not in self._dialing
                and self._group is not None
                and not self._stop.is_set()
                and self._dial_budget.take(time.monotonic())
            ):
                self._dialing.add(action.peer)
                dial = self.peers.dial(action.addrs[0], action.peer)  # budget spent above
                if not self.spawn(self._dial(dial, action.peer), "gossip dial"):
                    dial.close()
                    self._dialing.discard(action.peer)
            elif isinstance(action, Probe):
                self.spawn(self._probe(action.peer, action.addrs), f"probe of {action.peer}")
        self._wake.set()

    async def _bootstrap(self, addr: str) -> None:
        """Dial a bootstrap address until it answers or we are connected to someone else;
        retries back off from 1 s to 30 s, and every failure says why."""
        delay = 1.0
        while not self._stop.is_set():
            try:
                peer = await self.peers.dial(addr)
                log.info("[%s] bootstrap %s is %s", self.tag, addr, peer.short())
                return
            except DialError as exc:
                log.warning("[%s] bootstrap: %s; retrying in %.0f s", self.tag, exc, delay)
            if self.peers.connected():
                log.info("[%s] bootstrap %s not needed: connected through gossip", self.tag, addr)
                return
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._stop.wait()
            delay = min(30.0, delay * 2)

    async def dial_learned(self, addr: str, expected: PeerId) -> PeerId:
        """Dial an address learned from the network, within the node's dial budget (a
        DialError when it is spent); a connected peer costs nothing."""
        if expected in self.peers.connected():
            return expected
        if not self._dial_budget.take(time.monotonic()):
            raise DialError(f"dial {addr} skipped: dial budget ({DIAL_RATE:g}/s) spent")
        return await self.peers.dial(addr, expected)

    async def _dial(self, dial: Coroutine[object, object, PeerId], expected: PeerId) -> None:
        async with self._dial_slots:
            try:
                await dial
            except DialError as exc:
                log.info("[%s] %s", self.tag, exc)
            finally:
                self._dialing.discard(expected)

    def _on_open(self, peer: PeerId, capabilities: tuple[str, ...]) -> None:
        if GOSSIP_CAPABILITY not in capabilities:
            return
        if not self.gossip.has_room():
            # Make room rather than turn the newcomer away (it may know no one else): drop a
            # random current gossip peer, which has other connections and will find more.
            victim = self.gossip.pick_eviction()
            if victim is not None:
                self.gossip.peer_disconnected(victim, time.monotonic(), clean=True, overloaded=True)
                self.peers.close_peer(victim, ErrorCode.OVERLOADED, "making room for a new peer")
        self._apply(self.gossip.peer_connected(peer, time.monotonic()))

    def _on_close(self, peer: PeerId, lost: ConnectionLost) -> None:
        self.transfers.lost(peer, lost.code)
        self.limits.forget(peer)
        if peer in self.gossip.peers and not self._stop.is_set():
            self._apply(
                self.gossip.peer_disconnected(
                    peer,
                    time.monotonic(),
                    clean=lost.clean,
                    overloaded=lost.code == ErrorCode.OVERLOADED,
                )
            )

    async def _probe(self, peer: PeerId, addrs: tuple[str, ...]) -> None:
        """Is ``peer`` alive? A connection that completes its handshake says yes."""
        alive = peer in self.peers.connected()
        for addr in addrs:
            if alive:
                break
            try:
                async with asyncio.timeout(PROBE_TIMEOUT_S):
                    await self.dial_learned(addr, peer)
                alive = True
            except (DialError, TimeoutError):
                pass
        self._apply(self.gossip.probe_result(peer, alive, time.monotonic()))

    def _on_message(self, peer: PeerId, envelope: Envelope) -> None:
        message = envelope.message
        kind = _RATE_KINDS.get(type(message))
        if isinstance(message, VersionInfo) and message.request_id == 0:
            kind = "version_push"  # unasked: each may start a fetch (answers are not charged)
        if kind is not None and not self.limits.allow(
            peer, kind, time.monotonic(), _request_cost(message)
        ):
            self._refuse(peer, message, "request rate limit")
            self.peers.throttle(peer, THROTTLE_S)  # read no more of it for a while
            return
        if self.transfers.handle(peer, message):
            return
        if isinstance(message, _GOSSIP_TYPES) and peer in self.gossip.peers:
            self._apply(self.gossip.handle_message(peer, message, time.monotonic()))
        elif isinstance(message, StatusRequest):
            self.peers.send(peer, self.status(message.request_id, message.offset, page=True))
        elif isinstance(message, Traverse):
            if self._from_route(peer, message.client, message.route, message.hop):
                self.spawn(
                    self._serve(message, peer), f"traversal {message.traversal_id:x} from {peer}"
                )
            else:
                self._refuse(peer, message, "sender is not this hop's predecessor", PROTOCOL)
        elif isinstance(message, PipeStep):
            if self._from_route(peer, message.client, message.route, message.hop):
                self.spawn(self._serve_pipe(message), f"pipeline step from {peer}")
            else:
                self._refuse(peer, message, "sender is not this hop's predecessor", PROTOCOL)
        else:
            log.debug("[%s] ignoring %s from %s", self.tag, type(message).__name__, peer.short())

    @staticmethod
    def _from_route(peer: PeerId, client: bytes, route: tuple[Hop, ...], hop: int) -> bool:
        """A traversal reaches hop 0 from its client and hop k from route[k-1] (10 §10.4):
        nobody else can make us run blocks for, or dial, a route they are not on."""
        return peer.digest == (client if hop == 0 else route[hop - 1].peer)

    def _traverse_error(
        self, req: Traverse | PipeStep, code: ErrorCode, reason: str, peer: bytes | None = None
    ) -> TraverseError:
        """The TRAVERSE_ERROR answering ``req`` (a pipeline step answers with its session id);
        ``peer``: the one at fault, we by default."""
        return TraverseError(
            traversal_id=req.traversal_id if isinstance(req, Traverse) else req.session_id,
            hop=req.hop,
            peer=self.key.peer_id.digest if peer is None else peer,
            code=int(code),
            reason=reason[:300],
        )

    def _refuse(
        self, peer: PeerId, message: Message, reason: str, code: ErrorCode = ErrorCode.OVERLOADED
    ) -> None:
        """Answer a request we will not serve on the connection it came from (never by
        dialling), or drop it when its type has no answer (gossip, status)."""
        log.debug("[%s] refusing %s from %s: %s", self.tag, type(message).__name__, peer, reason)
        answer: Message | None = None
        if isinstance(message, Traverse | PipeStep):
            answer = self._traverse_error(message, code, reason)
        elif isinstance(message, VersionGet | ChunkGet):
            answer = TransferError(request_id=message.request_id, code=int(code), reason=reason)
        elif isinstance(message, DeltaHeader):
            self.transfers.refuse_delta(peer, message, code, reason)
        if answer is not None:
            self.peers.send(peer, answer)

    def _announce_served(self, now: float) -> None:
        runtime = self.runtime
        if runtime is None or runtime.config is None:
            return
        for block, digest in sorted(runtime.hashes.items()):
            claim = LocalClaim(
                block=block,
                role="serve",
                version=self.served_versions.get(block, 0),
                content_hash=digest,
                n_blocks=runtime.config.n_blocks,
                config_hash=runtime.config_hash,
                context=runtime.config.context,
            )
            self._apply(self.gossip.publish(claim, now))
        log.info(
            "[%s] serving blocks %s (model config %s)",
            self.tag,
            sorted(runtime.blocks),
            runtime.config_hash[:12],
        )

    # -- versions and rounds (08, 09) -------------------------------------------------------
    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def announce_version(self, block: int, version: int, weights: bytes) -> None:
        """Gossip that we hold ``version`` (weights hash ``weights``) of a block we train."""
        model = self.config.model
        claim = LocalClaim(
            block=block,
            role="train",
            version=version,
            content_hash=weights,
            n_blocks=model.n_blocks,
            config_hash=model.config_hash(),
        )
        self._apply(self.gossip.publish(claim, time.monotonic()))

    async def connect_all(self, peers: list[PeerId]) -> list[PeerId]:
        """Connect to each peer (addresses from its gossiped records); the ones we reach."""
        addrs: dict[PeerId, tuple[str, ...]] = {}
        for entry in self.gossip.table.live():
            addrs.setdefault(entry.record.owner, entry.record.addrs)

        async def one(peer: PeerId) -> PeerId | None:
            if peer in self.peers.connected():
                return peer
            for addr in addrs.get(peer, ()):
                try:
                    async with asyncio.timeout(PROBE_TIMEOUT_S):
                        await self.dial_learned(addr, peer)
                    return peer
                except (DialError, TimeoutError) as exc:
                    log.info("[%s] cannot reach %s at %s: %s", self.tag, peer.short(), addr, exc)
            return None

        unique = list(dict.fromkeys(p for p in peers if p != self.key.peer_id))
        reached = await asyncio.gather(*(one(p) for p in unique))
        return [p for p in reached if p is not None]

    def _no_replica(self, block: int) -> tuple[int, str]:
        if block in self.config.train_blocks:
            return int(ErrorCode.NOT_READY), "this replica is still starting"
        return int(ErrorCode.DELTA_REJECTED), f"block {block} is not trained here"

    def _admit_delta(self, peer: PeerId, header: DeltaHeader) -> tuple[int, str] | None:
        replica = self.replicas.get(header.block)
        return self._no_replica(header.block) if replica is None else replica.admit(peer, header)

    def _on_delta(self, delta: ReceivedDelta) -> None:
        replica = self.replicas.get(delta.header.block)  # it was there at the header
        if replica is None:
            self.transfers.ack(delta, *self._no_replica(delta.header.block))
            return
        replica.on_delta(delta)

    def _on_manifest(self, peer: PeerId, signed: SignedManifest) -> None:
        replica = self.replicas.get(signed.manifest.block)
        if replica is not None:
            replica.on_manifest(peer, signed)

    # -- training ---------------------------------------------------------------------------
    async def _train(self, block: int) -> None:
        """Train ``block`` to the end of its budget, then serve it."""
        from spheroid_p2p.ml.config import TrainConfig
        from spheroid_p2p.ml.data import load_corpus
        from spheroid_p2p.node.trainer import TrainingJob

        assert self.runtime is not None and self.config.corpus is not None
        corpus = await asyncio.to_thread(load_corpus, self.config.corpus)
        tcfg = TrainConfig(
            batch_size=self.config.batch_size,
            steps=self.config.train_steps,
            warmup_steps=min(100, self.config.train_steps // 10),
        )
        seed = self.config.seed * 1009 + int.from_bytes(self.key.peer_id.digest[:4], "big")
        job = await asyncio.to_thread(
            TrainingJob,
            self.config.model,
            tcfg,
            block,
            corpus,
            self.config.data_dir,
            seed,
            self.tag,
        )
        job.gate = self.runtime.gate
        if self.config.round_steps > 0:
            path = await self._train_in_rounds(job)
            if path is None:
                return
        else:
            path = await job.run(self.runtime.pool)
        if self._stop.is_set():
            return
        await asyncio.to_thread(self.runtime.add, path)
        self._announce_served(time.monotonic())

    async def _train_in_rounds(self, job: TrainingJob) -> Path | None:
        """Train ``job``'s block as one replica among others, averaging every round."""
        from spheroid_p2p.node.replica import BlockReplica, RoundSettings

        assert self.runtime is not None
        cfg = self.config
        job.pool = self.runtime.pool
        job.gate = self.runtime.gate
        settings = RoundSettings(
            round_steps=cfg.round_steps,
            encoding=cfg.delta_encoding,
            min_replicas=cfg.min_replicas,
            replica_wait_s=cfg.replica_wait_s,
            params=RoundParams(
                period_s=cfg.round_period_s,
                grace_s=cfg.round_grace_s,
                norm_ratio=cfg.norm_ratio,
                max_relative_norm=cfg.max_relative_norm,
            ),
        )
        replica = BlockReplica(self, job, settings)
        self.replicas[job.block] = replica
        await replica.run(cfg.train_steps)
        if self._stop.is_set() or replica.base is None:
            return None
        # Serve the swarm's version (the average), not our local weights, and name it in the
        # serve record, so a trainer that joins later starts from it (replica.version_records).
        await asyncio.to_thread(job.trainer.block.load_state_dict, replica.base.tensors)
        await asyncio.to_thread(replica.save_final, job.block_path)
        self.served_versions[job.block] = replica.base.version
        return job.block_path

    # -- traversals (10-traversal.md) --------------------------------------------------------
    async def _send_to(self, peer: bytes, addr: str, message: Message) -> str | None:
        """Send to ``peer``, dialling ``addr`` first if needed; returns an error or None."""
        target = PeerId(peer)
        if target not in self.peers.connected():
            try:
                await self.dial_learned(addr, target)
            except DialError as exc:
                return str(exc)
        return None if self.peers.send(target, message) else f"{target.short()} not connected"

    async def _answering_failure(
        self, work: Coroutine[object, object, None], req: Traverse | PipeStep
    ) -> None:
        """Run ``work`` for a traversal or pipeline step; a failure of ours answers the
        client with INTERNAL_ERROR (and is logged by :meth:`spawn`) instead of leaving it to
        time out."""
        try:
            await work
        except Exception:
            error = self._traverse_error(
                req, ErrorCode.INTERNAL_ERROR, "internal error at this hop"
            )
            await self._send_to(req.client, req.reply_addr, error)
            raise

    async def _serve(self, req: Traverse, sender: PeerId) -> None:
        await self._answering_failure(self._serve_traverse(req, sender), req)

    async def _serve_traverse(self, req: Traverse, sender: PeerId) -> None:
        """Run our blocks for one traversal, then forward it or answer the client."""
        arrived = time.monotonic()
        hop = req.route[req.hop]
        me = self.key.peer_id.digest

        async def fail(code: ErrorCode, reason: str, peer: bytes = me) -> None:
            log.warning(
                "[%s] traversal %x hop %d failed: %s", self.tag, req.traversal_id, req.hop, reason
            )
            error = self._traverse_error(req, code, reason, peer)
            await self._send_to(req.client, req.reply_addr, error)

        runtime = self.runtime
        if hop.peer != me:
            await fail(ErrorCode.PROTOCOL_VIOLATION, "route names another peer for this hop")
            return
        if (
            runtime is None
            or runtime.config is None
            or not runtime.serves(hop.first_block, hop.last_block)
        ):
            await fail(
                ErrorCode.BLOCK_NOT_SERVED,
                f"blocks {hop.first_block}..{hop.last_block} are not served here",
            )
            return
        cfg = runtime.config
        if req.config_hash and req.config_hash != runtime.config_hash:
            await fail(ErrorCode.BLOCK_NOT_SERVED, "request is for a different model config")
            return
        if req.span not in (0, cfg.span):
            await fail(ErrorCode.SPAN_UNSUPPORTED, f"this model emits spans of {cfg.span}")
            return
        starting = len(req.z.shape) == 1 and req.z.shape[0] == 0
        if starting != (hop.first_block == 0):
            await fail(ErrorCode.PROTOCOL_VIOLATION, "only block 0 starts from noise")
            return
        want = runtime.z_shape(hop.first_block, req.prefix)
        if not starting and tuple(req.z.shape) != want:
            await fail(
                ErrorCode.TENSOR_SHAPE_MISMATCH,
                f"z has shape {list(req.z.shape)}, want {list(want)}",
            )
            return
        z_dtype = req.z.dtype
        waited_ms = (time.monotonic() - arrived) * 1000
        if waited_ms > req.deadline_ms:
            await fail(ErrorCode.TIMEOUT, f"deadline passed after {waited_ms:.0f} ms in queue")
            return
        try:
            async with self.turns.turn(sender.digest):
                out = await runtime.run(
                    hop.first_block,
                    hop.last_block,
                    req.prefix,
                    None if starting else bytes(req.z.data),
                    z_dtype,
                    req.steps_per_block,
                    req.seed,
                    req.temperature,
                    req.want_logits,
                    start_by=arrived + req.deadline_ms / 1000,
                    peer=sender.digest,
                )
        except Overloaded as exc:
            await fail(ErrorCode.OVERLOADED, str(exc))
            return
        except TimeoutError as exc:
            await fail(ErrorCode.TIMEOUT, str(exc))
            return
        self.traversals_served += 1
        computed = time.monotonic()
        queued_ms = max(0.0, (computed - arrived) * 1000 - out.seconds * 1e3)
        # the earlier hops' times travel on only if they are what hop `hop` should carry
        earlier = req.timings if len(req.timings) == len(HOP_TIMINGS) * req.hop else ()
        log.debug(
            "[%s] traversal %x hop %d blocks %d..%d: %.1f ms",
            self.tag,
            req.traversal_id,
            req.hop,
            hop.first_block,
            hop.last_block,
            out.seconds * 1e3,
        )
        if out.output is not None:
            logits = None
            payload = b""
            if out.logits is not None:
                payload = out.logits.float().contiguous().numpy().tobytes()
                logits = InlineTensor(1, tuple(out.logits.shape), 0, chunk_digest(payload), payload)
            mine = (queued_ms, out.seconds * 1e3, (time.monotonic() - computed) * 1000)
            timings = (*earlier, *mine)
            result = TraverseResult(
                traversal_id=req.traversal_id,
                output=out.output,
                hop_ms=timings[1 :: len(HOP_TIMINGS)],
                logits=logits,
                payload=payload,
                timings=timings,
            )
            error = await self._send_to(req.client, req.reply_addr, result)
            if error:
                log.warning(
                    "[%s] traversal %x: cannot reach the client: %s",
                    self.tag,
                    req.traversal_id,
                    error,
                )
            return
        if req.hop + 1 >= len(req.route) or out.z is None:
            await fail(ErrorCode.PROTOCOL_VIOLATION, "route ends before the last block")
            return
        raw = _tensor_bytes(out.z, Z_DTYPES[z_dtype])
        mine = (queued_ms, out.seconds * 1e3, (time.monotonic() - computed) * 1000)
        nxt = req.route[req.hop + 1]
        spent_ms = int((time.monotonic() - arrived) * 1000)
        if spent_ms >= req.deadline_ms:
            await fail(ErrorCode.TIMEOUT, f"deadline passed at this hop ({spent_ms} ms)")
            return
        forward = dataclasses.replace(
            req,
            hop=req.hop + 1,
            deadline_ms=req.deadline_ms - spent_ms,
            payload=raw,
            z=InlineTensor(z_dtype, tuple(out.z.shape[1:]), 0, chunk_digest(raw), raw),
            timings=(*earlier, *mine),
        )
        error = await self._send_to(nxt.peer, nxt.addr, forward)
        if not error:
            self.peers.keep_hot(PeerId(nxt.peer), self.config.keep_hot_s)
        if error:
            await fail(
                ErrorCode.TIMEOUT,
                f"next hop {PeerId(nxt.peer).short()} unreachable: {error}",
                peer=nxt.peer,
            )

    # -- the autoregressive pipeline baseline (10-traversal.md §10.7) -----------------------
    async def _serve_pipe(self, req: PipeStep) -> None:
        await self._answering_failure(self._serve_pipe_step(req), req)

    async def _serve_pipe_step(self, req: PipeStep) -> None:
        """Run our layers for one pipeline step, then forward it or answer the client."""
        arrived = time.monotonic()
        stage = self.ar_stage
        me = self.key.peer_id.digest

        async def fail(code: ErrorCode, reason: str, peer: bytes = me) -> None:
            error = self._traverse_error(req, code, reason, peer)
            await self._send_to(req.client, req.reply_addr, error)

        if stage is None or req.route[req.hop].peer != me or req.config_hash != stage.config_hash:
            await fail(ErrorCode.BLOCK_NOT_SERVED, "this peer does not serve that stage")
            return
        first = req.hop == 0
        try:
            hidden, output = await stage.step(
                req.session_id,
                req.pos,
                req.tokens,
                None if first else bytes(req.hidden.data),
                arrived + req.deadline_ms / 1000,
            )
        except TimeoutError as exc:
            await fail(ErrorCode.TIMEOUT, str(exc))
            return
        if output is not None:
            await self._send_to(
                req.client, req.reply_addr, PipeResult(session_id=req.session_id, output=output)
            )
            return
        if hidden is None or req.hop + 1 >= len(req.route):
            await fail(ErrorCode.PROTOCOL_VIOLATION, "route ends before the last stage")
            return
        raw = hidden[0].float().contiguous().numpy().tobytes()
        nxt = req.route[req.hop + 1]
        spent = int((time.monotonic() - arrived) * 1000)
        forward = dataclasses.replace(
            req,
            hop=req.hop + 1,
            payload=raw,
            tokens=b"",
            deadline_ms=max(0, req.deadline_ms - spent),
            hidden=InlineTensor(1, tuple(hidden.shape[1:]), 0, chunk_digest(raw), raw),
        )
        error = await self._send_to(nxt.peer, nxt.addr, forward)
        if error:
            await fail(ErrorCode.TIMEOUT, f"next stage unreachable: {error}", peer=nxt.peer)

    # -- status -----------------------------------------------------------------------------
    def status(self, request_id: int = 0, offset: int = 0, page: bool = False) -> StatusResponse:
        """This node's view of the swarm, as the status command shows it. With ``page`` (a
        request from the wire), the records from ``offset`` that fit one response (at most
        ``MAX_STATUS_RECORDS`` and ``STATUS_PAGE_BYTES``; 07 §7.8); ``total`` says how many
        there are, and the client asks again from where the page ended."""
        now = time.monotonic()
        entries = self.gossip.table.entries()
        total = len(entries)
        if page:
            chosen, size = [], 0
            for e in entries[offset:]:
                size += 128 + len(e.record.config_hash) + sum(len(a) + 4 for a in e.record.addrs)
                if chosen and (len(chosen) >= MAX_STATUS_RECORDS or size > STATUS_PAGE_BYTES):
                    break
                chosen.append(e)
            entries = chosen
        records = tuple(
            RecordView(
                owner=e.record.owner.digest,
                block=e.record.block,
                role=e.record.role,
                version=e.record.version,
                content_hash=e.record.content_hash,
                addrs=e.record.addrs,
                load=float(e.record.load),
                seq=e.record.seq,
                age_ms=int((now - e.received_at) * 1000),
                expires_in_ms=max(0, int((e.expires_at - now) * 1000)),
                departed=e.record.departed,
                n_blocks=e.record.n_blocks,
                config_hash=e.record.config_hash,
                context=e.record.context,
            )
            for e in entries
        )
        conns = tuple(
            ConnView(i.peer.digest, i.addr, i.outbound, i.rtt_ms, i.idle_ms)
            for i in self.peers.link_info()[:MAX_STATUS_CONNECTIONS]
        )
        return StatusResponse(
            request_id=request_id,
            agent=f"{AGENT} {self.key.peer_id}",
            uptime_ms=int((now - self.started_at) * 1000),
            records=records,
            connections=conns,
            dropped=tuple(sorted(self.gossip.table.dropped.items())),
            total=total,
        )


@contextlib.asynccontextmanager
async def running_node(config: NodeConfig, key: KeyPair | None = None) -> AsyncIterator[Node]:
    """A node running in this event loop (tests, benchmarks, the evaluator): started and
    ready on entry, stopped cleanly on exit. ``key``: the identity in ``config.key`` if None."""
    if key is None:
        key = load_or_create_identity(config.key)[0]
    node = Node(config, key)
    task = asyncio.get_running_loop().create_task(node.run())
    ready = asyncio.get_running_loop().create_task(node.ready.wait())
    await asyncio.wait({task, ready}, return_when=asyncio.FIRST_COMPLETED)
    if not node.ready.is_set():
        ready.cancel()
        await task  # raises why it failed to start
    try:
        yield node
    finally:
        node.stop()
        await task


def _request_cost(message: Message) -> float:
    """Tokens a request spends (security.md §S.4): a record batch one per record (each is a
    signature check), a traversal one per block-step it asks for, anything else one."""
    if isinstance(message, GossipRecords):
        return float(max(1, len(message.records)))
    if isinstance(message, Traverse):
        hop = message.route[message.hop]
        return float(message.steps_per_block * (hop.last_block - hop.first_block + 1))
    return 1.0


def _tensor_bytes(z: object, dtype_name: str) -> bytes:
    """Little-endian bytes of a (1, N, d) torch tensor in the wire dtype (bf16 as 16 bits)."""
    import torch

    assert isinstance(z, torch.Tensor)
    t = z[0].to(getattr(torch, dtype_name)).contiguous()
    if t.dtype == torch.bfloat16:
        t = t.view(torch.int16)
    return t.numpy().tobytes()
