"""The node: composes identity, connections and gossip; owns every task (composition root).

``Node.run()`` holds one ``TaskGroup`` with the listener, the gossip timer, bootstrap dials and
every connection. ``Node.ready`` is set once the listener is bound (``bound_address`` then
holds the real port). ``Node.stop()`` publishes signed departures, lets them drain, closes
every connection with NO_ERROR and returns from ``run()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time

from spheroid_p2p import __version__
from spheroid_p2p.core.actions import Action, Dial, Send
from spheroid_p2p.core.connection import ConnectionLost, FrameSigner
from spheroid_p2p.core.freshness import initial_seq
from spheroid_p2p.core.gossip import GossipService, LocalClaim
from spheroid_p2p.net.peers import DialError, PeerManager, parse_addr
from spheroid_p2p.node.config import NodeConfig
from spheroid_p2p.wire.codec import Envelope
from spheroid_p2p.wire.messages import (
    ConnView,
    GossipDigest,
    GossipRecords,
    GossipRequest,
    GossipSummary,
    RecordView,
    StatusRequest,
    StatusResponse,
)
from spheroid_p2p.wire.signing import KeyPair, PeerId

__all__ = ["Node"]

log = logging.getLogger(__name__)

AGENT = f"spheroid_p2p/{__version__}"
_GOSSIP_TYPES = (GossipSummary, GossipDigest, GossipRecords, GossipRequest)
GOSSIP_CAPABILITY = "gossip/1"
MAX_PARALLEL_DIALS = 8


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
            capabilities=(GOSSIP_CAPABILITY,),
            max_connections=config.max_connections,
            versions=config.versions,
        )
        self._stop = asyncio.Event()
        self._wake = asyncio.Event()
        self._dialing: set[PeerId] = set()
        self._dial_slots = asyncio.Semaphore(MAX_PARALLEL_DIALS)
        self._group: asyncio.TaskGroup | None = None
        self.tag = key.peer_id.short()

    # -- lifecycle --------------------------------------------------------------------------
    def stop(self) -> None:
        """Ask :meth:`run` to shut down cleanly (safe from a signal handler)."""
        self._stop.set()
        self._wake.set()

    async def run(self) -> None:
        """Run until :meth:`stop`. Propagates failures of node-wide tasks."""
        async with asyncio.TaskGroup() as group:
            self._group = group
            self.peers.attach(group)
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
            for block in self.config.train_blocks:
                self._apply(self.gossip.publish(LocalClaim(block=block, role="train"), now))
            for addr in self.config.bootstrap:
                group.create_task(self._bootstrap(addr))
            self.ready.set()
            await self._timer_loop()
            self._apply(self.gossip.depart(time.monotonic()))
            await self.peers.close()
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
            if self.gossip.next_deadline(now) <= now:
                self._apply(self.gossip.handle_timer(now))

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
            ):
                self._dialing.add(action.peer)
                self._group.create_task(self._dial(action.addrs[0], action.peer))
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

    async def _dial(self, addr: str, expected: PeerId) -> None:
        async with self._dial_slots:
            try:
                await self.peers.dial(addr, expected)
            except DialError as exc:
                log.info("[%s] %s", self.tag, exc)
            finally:
                self._dialing.discard(expected)

    def _on_open(self, peer: PeerId, capabilities: tuple[str, ...]) -> None:
        if GOSSIP_CAPABILITY in capabilities:
            self._apply(self.gossip.peer_connected(peer, time.monotonic()))

    def _on_close(self, peer: PeerId, lost: ConnectionLost) -> None:
        if peer in self.gossip.peers:
            self.gossip.peer_disconnected(peer, time.monotonic())

    def _on_message(self, peer: PeerId, envelope: Envelope) -> None:
        message = envelope.message
        if isinstance(message, _GOSSIP_TYPES) and peer in self.gossip.peers:
            self._apply(self.gossip.handle_message(peer, message, time.monotonic()))
        elif isinstance(message, StatusRequest):
            self.peers.send(peer, self.status(message.request_id))
        else:
            log.debug("[%s] ignoring %s from %s", self.tag, type(message).__name__, peer.short())

    # -- status -----------------------------------------------------------------------------
    def status(self, request_id: int = 0) -> StatusResponse:
        """This node's view of the swarm, as the status command shows it."""
        now = time.monotonic()
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
            )
            for e in self.gossip.table.entries()
        )
        conns = tuple(
            ConnView(i.peer.digest, i.addr, i.outbound, i.rtt_ms, i.idle_ms)
            for i in self.peers.link_info()
        )
        return StatusResponse(
            request_id=request_id,
            agent=f"{AGENT} {self.key.peer_id}",
            uptime_ms=int((now - self.started_at) * 1000),
            records=records,
            connections=conns,
            dropped=tuple(sorted(self.gossip.table.dropped.items())),
        )
