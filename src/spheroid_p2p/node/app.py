"""The node: the composition root. It builds the services, wires them, and owns every task.

``Node.run()`` holds one ``TaskGroup``: the gossip timer, the bootstrap dials, the training
of each block, and every task a peer's message starts (:meth:`Node.spawn`, guarded: a failure
is logged and counted, never fatal). Connections are not tasks: they are protocol callbacks
of the listener (``net.peers``), closed by :meth:`PeerManager.close` on the way out.
``Node.ready`` is set once the listener is bound (``bound_address`` then holds the real port).
``Node.stop()`` publishes signed departures, cancels the long-running work, closes every
connection with NO_ERROR, and returns from ``run()``.

The services, each behind a small interface:

* ``gossip_glue.GossipGlue``: gossip under asyncio, and the ``SwarmView`` the others use;
* ``transfer.Transfers``: versions and chunks served and fetched, shard streams;
* ``serving.TraversalServer``: traversals and pipeline steps;
* ``blocks.TrainedBlocks``: training, averaging rounds (``replica``, ``aggregator``,
  ``installer``);
* ``intake.Intake``: what each peer may ask; ``status``: the STATUS_RESPONSE.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import AsyncIterator, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING

from spheroid_p2p import __version__
from spheroid_p2p.core.connection import ConnectionLost, ConnectionParams, FrameSigner
from spheroid_p2p.core.freshness import initial_seq
from spheroid_p2p.core.gossip import GossipService
from spheroid_p2p.core.gossip_params import LocalClaim
from spheroid_p2p.core.traversal import from_route
from spheroid_p2p.errors import ErrorCode
from spheroid_p2p.identity import load_or_create_identity
from spheroid_p2p.net.peers import PeerManager
from spheroid_p2p.net.sockets import parse_addr
from spheroid_p2p.node.config import NodeConfig
from spheroid_p2p.node.gossip_glue import GOSSIP_CAPABILITY, GossipGlue
from spheroid_p2p.node.intake import Intake
from spheroid_p2p.node.preflight import listen_error
from spheroid_p2p.node.serving import TraversalServer
from spheroid_p2p.node.status import status_response
from spheroid_p2p.node.store import VersionStore
from spheroid_p2p.node.transfer import Transfers
from spheroid_p2p.node.turns import ComputeTurns
from spheroid_p2p.wire.codec import Envelope
from spheroid_p2p.wire.gossip import (
    GossipDigest,
    GossipRecords,
    GossipRequest,
    GossipSummary,
    GossipSuspect,
)
from spheroid_p2p.wire.pipeline import PipeStep
from spheroid_p2p.wire.signing import KeyPair
from spheroid_p2p.wire.status import StatusRequest, StatusResponse
from spheroid_p2p.wire.traversal import Traverse

if TYPE_CHECKING:
    from spheroid_p2p.node.blocks import TrainedBlocks
    from spheroid_p2p.node.compute import ArStageRuntime, BlockRuntime
    from spheroid_p2p.node.evaluator import SwarmEvaluator
    from spheroid_p2p.node.web import WebServer
    from spheroid_p2p.wire.signing import PeerId

__all__ = ["Node", "running_node"]

log = logging.getLogger(__name__)

AGENT = f"spheroid_p2p/{__version__}"
_GOSSIP_TYPES = (GossipSummary, GossipDigest, GossipRecords, GossipRequest, GossipSuspect)
#: What a node lists in its HELLO (06 §6.6): every service it answers.
NODE_CAPABILITIES = (GOSSIP_CAPABILITY, "transfer/1", "average/1", "traverse/1")
#: Requests of one peer that may wait for compute (more: OVERLOADED), and requests that
#: compute at once (as many as the runtime has traversal threads).
MAX_WAITING_PER_PEER = 8
TRAVERSAL_SLOTS = 4


class Node:
    """A long-lived peer."""

    def __init__(self, config: NodeConfig, key: KeyPair) -> None:
        self.config = config
        self.key = key
        self.tag = key.peer_id.short()
        self.ready = asyncio.Event()
        self.bound_address: tuple[str, int] | None = None
        #: HOST:PORT of the metrics and swarm page server once it listens (``--http``)
        self.http_address: str | None = None
        #: the swarm evaluator running in this node (``node eval``), shown on its page
        self.evaluator: SwarmEvaluator | None = None
        self.started_at = time.monotonic()
        self._stop = asyncio.Event()
        self._group: asyncio.TaskGroup | None = None
        self._long: list[asyncio.Task[None]] = []
        #: guarded tasks that raised (see :meth:`spawn`); 0 on a healthy node
        self.task_failures = 0
        seq0 = initial_seq(time.time())
        self.gossip = GossipService(key, config.gossip, random.Random(), first_seq=seq0)
        self.peers = PeerManager(
            FrameSigner(key, seq0),
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
        allow = config.allow_peers if isinstance(config.allow_peers, frozenset) else None
        self.swarm = GossipGlue(
            self.gossip,
            self.peers,
            spawn=self.spawn,
            tag=self.tag,
            allow_peers=allow,
            next_hops=self._next_hops,
            warm_next_hops=config.warm_next_hops,
        )
        self.intake = Intake(self.peers, self.tag)
        self.turns = ComputeTurns(slots=TRAVERSAL_SLOTS, per_peer=MAX_WAITING_PER_PEER)
        self.store = VersionStore(config.data_dir / "versions")
        self.transfers = Transfers(
            self.peers, self.store, self.tag, compression=config.compression, spawn=self.spawn
        )
        self.runtime: BlockRuntime | None = None
        self.ar_stage: ArStageRuntime | None = None
        self.blocks: TrainedBlocks | None = None
        #: version of each block we trained in rounds and now serve (its store holds it)
        self.served_versions: dict[int, int] = {}
        self._build_compute()
        #: answers traversals (BLOCK_NOT_SERVED on a node that serves no blocks)
        self.server = TraversalServer(
            self.peers,
            self.swarm,
            self.turns,
            runtime=self.runtime,
            ar_stage=self.ar_stage,
            keep_hot_s=config.keep_hot_s,
            tag=self.tag,
        )

    def _build_compute(self) -> None:
        """The torch side, only when the node computes (a gossip-only peer loads no torch)."""
        cfg = self.config
        if not (cfg.checkpoints or (cfg.train_blocks and cfg.corpus) or cfg.ar_checkpoint):
            return
        from spheroid_p2p.node.blocks import TrainedBlocks
        from spheroid_p2p.node.compute import ArStageRuntime, BlockRuntime

        if cfg.threads:
            import torch

            torch.set_num_threads(cfg.threads)
        self.runtime = BlockRuntime(cfg.checkpoints)
        if cfg.ar_checkpoint is not None:
            stage, _, stages = (cfg.ar_stage or "0/1").partition("/")
            self.ar_stage = ArStageRuntime(
                cfg.ar_checkpoint, int(stage), int(stages), self.runtime.pool
            )
        if cfg.train_blocks and cfg.corpus:
            self.blocks = TrainedBlocks(
                cfg,
                self.key,
                self.swarm,
                self.transfers,
                self.store,
                self.runtime,
                spawn=self.spawn,
                on_trained=self._trained,
                tag=self.tag,
            )

    # -- lifecycle --------------------------------------------------------------------------
    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def stop(self) -> None:
        """Ask :meth:`run` to shut down cleanly (safe from a signal handler)."""
        self._stop.set()
        self.swarm.stop()
        if self.blocks is not None:
            self.blocks.stop()
        for task in self._long:
            task.cancel()

    async def run(self) -> None:
        """Run until :meth:`stop`. Propagates failures of node-wide tasks."""
        host, port = parse_addr(self.config.listen, allow_any_port=True)
        try:
            self.bound_address = await self.peers.listen(host, port)
        except OSError as exc:
            raise listen_error(self.config.listen, exc) from None
        web = await self._start_web() if self.config.http is not None else None
        async with asyncio.TaskGroup() as group:
            self._group = group
            advertised = self.config.advertise or f"{self.bound_address[0]}:{self.bound_address[1]}"
            self.gossip.addrs = (advertised,)
            log.info(
                "[%s] listening on %s:%d (peer id %s)",
                self.tag,
                *self.bound_address,
                self.key.peer_id,
            )
            self._announce()
            if self.runtime is not None:  # generation sessions dropped as they go idle
                known = self._guarded(self.runtime.known.expire_when_idle(), "session expiry")
                self._long.append(group.create_task(known))
            if self.blocks is not None:
                for block in self.config.train_blocks:
                    work = self._guarded(self.blocks.train(block), f"training of block {block}")
                    self._long.append(group.create_task(work))
            for addr in self.config.bootstrap:
                self._long.append(group.create_task(self.swarm.bootstrap(addr)))
            self.ready.set()
            await self.swarm.run()
            for task in self._long:
                task.cancel()
            self.swarm.depart()
            if web is not None:
                await web.close()
            await self.peers.close()
            self.transfers.close()
            await asyncio.to_thread(self.store.close)  # waits for pending fsyncs
            if self.runtime is not None:
                # a training slice ends after its current step and writes its checkpoint
                await asyncio.to_thread(self.runtime.close, True)
            log.info("[%s] stopped", self.tag)

    async def _start_web(self) -> WebServer:
        """Metrics and the swarm page (``--http``); aiohttp is loaded only then."""
        from spheroid_p2p.node.web import WebServer

        assert self.config.http is not None
        web = WebServer(self)
        try:
            self.http_address = await web.start(self.config.http)
        except OSError as exc:
            await web.close()
            await self.peers.close()
            raise listen_error(self.config.http, exc, "--http") from None
        self.server.on_hop = web.hop
        log.info("[%s] metrics and swarm page on http://%s/", self.tag, self.http_address)
        return web

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
        except asyncio.CancelledError:
            if not self._stop.is_set():
                raise
        except Exception:  # a bug or a peer's input we failed to reject at the edge
            self.task_failures += 1
            log.exception("[%s] %s failed; the node goes on", self.tag, what)

    # -- what we announce -------------------------------------------------------------------
    def _announce(self) -> None:
        for block in self.config.serve_blocks:
            self.swarm.announce(LocalClaim(block=block, role="serve"))
        self._announce_served()
        stage = self.ar_stage
        if stage is not None:
            self.swarm.announce(
                LocalClaim(
                    block=stage.stage,
                    role="serve",
                    n_blocks=stage.stages,
                    config_hash=stage.config_hash,
                    context=stage.context,
                )
            )
        model = self.config.model
        for block in self.config.train_blocks:
            self.swarm.announce(
                LocalClaim(
                    block=block,
                    role="train",
                    n_blocks=model.n_blocks,
                    config_hash=model.config_hash(),
                )
            )

    def _announce_served(self) -> None:
        runtime = self.runtime
        if runtime is None or runtime.config is None:
            return
        for block, digest in sorted(runtime.hashes.items()):
            self.swarm.announce(
                LocalClaim(
                    block=block,
                    role="serve",
                    version=self.served_versions.get(block, 0),
                    content_hash=digest,
                    n_blocks=runtime.config.n_blocks,
                    config_hash=runtime.config_hash,
                    context=runtime.config.context,
                )
            )
        log.info(
            "[%s] serving blocks %s (model config %s)",
            self.tag,
            sorted(runtime.blocks),
            runtime.config_hash[:12],
        )

    def _trained(self, block: int, path: Path, version: int) -> None:
        """A block finished training: serve it (loaded on a worker thread)."""
        if version:
            self.served_versions[block] = version

        async def load() -> None:
            assert self.runtime is not None
            await asyncio.to_thread(self.runtime.add, path)
            self._announce_served()

        self.spawn(load(), f"serving trained block {block}")

    def _next_hops(self) -> list[tuple[int, str]]:
        """(block, config hash) of the blocks (or pipeline stages) after the last one we serve."""
        wanted: list[tuple[int, str]] = []
        runtime = self.runtime
        if runtime is not None and runtime.config is not None and runtime.blocks:
            nxt = max(runtime.blocks) + 1
            if nxt < runtime.config.n_blocks:
                wanted.append((nxt, runtime.config_hash))
        stage = self.ar_stage
        if stage is not None and stage.stage + 1 < stage.stages:
            wanted.append((stage.stage + 1, stage.config_hash))
        return wanted

    # -- connections and messages -----------------------------------------------------------
    def _on_open(self, peer: PeerId, capabilities: tuple[str, ...]) -> None:
        self.swarm.opened(peer, capabilities)

    def _on_close(self, peer: PeerId, lost: ConnectionLost) -> None:
        self.transfers.lost(peer, lost.code)
        self.intake.forget(peer)
        self.swarm.closed(peer, lost)

    def _on_message(self, peer: PeerId, envelope: Envelope) -> None:
        message = envelope.message
        if not self.intake.admit(peer, message):
            return
        if self.transfers.handle(peer, message):
            return
        if isinstance(message, _GOSSIP_TYPES):
            self.swarm.message(peer, message)
        elif isinstance(message, StatusRequest):
            self.peers.send(peer, self.status(message.request_id, message.offset, page=True))
        elif isinstance(message, Traverse | PipeStep):
            server = self.server
            if not from_route(peer.digest, message.client, message.route, message.hop):
                why = "sender is not this hop's predecessor"
                self.intake.refuse(peer, message, why, ErrorCode.PROTOCOL_VIOLATION)
            elif isinstance(message, Traverse):
                work = server.answering_failure(server.traverse(message, peer), message)
                self.spawn(work, f"traversal {message.traversal_id:x} from {peer}")
            else:
                work = server.answering_failure(server.pipe(message), message)
                self.spawn(work, f"pipeline step from {peer}")
        else:
            log.debug("[%s] ignoring %s from %s", self.tag, type(message).__name__, peer.short())

    def status(self, request_id: int = 0, offset: int = 0, page: bool = False) -> StatusResponse:
        """This node's view of the swarm (``node.status``)."""
        return status_response(
            self.gossip,
            self.peers,
            agent=f"{AGENT} {self.key.peer_id}",
            started_at=self.started_at,
            request_id=request_id,
            offset=offset,
            page=page,
            jobs=self.blocks.job_views() if self.blocks is not None else (),
        )


@contextlib.asynccontextmanager
async def running_node(config: NodeConfig, key: KeyPair | None = None) -> AsyncIterator[Node]:
    """A node running in this event loop (tests, benchmarks, the evaluator): started and
    ready on entry, stopped cleanly on exit. ``key``: the identity in ``config.key`` if None.

    The node's task is owned here: awaited on exit, so its failure is raised to the caller
    (a TaskGroup would wrap the caller's own exceptions in an ExceptionGroup)."""
    if key is None:
        key = load_or_create_identity(config.key)[0]
    node = Node(config, key)
    loop = asyncio.get_running_loop()
    task = loop.create_task(node.run())
    ready = loop.create_task(node.ready.wait())
    await asyncio.wait({task, ready}, return_when=asyncio.FIRST_COMPLETED)
    if not node.ready.is_set():
        ready.cancel()
        await task  # raises why it failed to start
    try:
        yield node
    finally:
        node.stop()
        await task
