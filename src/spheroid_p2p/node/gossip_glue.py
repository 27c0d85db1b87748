"""The gossip service under asyncio, and the :class:`~spheroid_p2p.node.swarm.SwarmView` the
node's services use (07).

:class:`GossipGlue` feeds the sans-I/O :class:`~spheroid_p2p.core.gossip.GossipService` the
connections that open and close and the messages that arrive, carries out the actions it
returns (sends, dials within the dial budget, probes), and runs its timer: one task that
sleeps until the service's next deadline or until an input wakes it. It also keeps the
connections to the next block's servers warm (``warm_next_hops``), and answers what the
services ask of the swarm: owners of a block, connecting to peers, announcing our records,
and waiting for the table to change.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine

from spheroid_p2p.core.actions import Action, Dial, Probe, Send
from spheroid_p2p.core.connection import ConnectionLost
from spheroid_p2p.core.gossip import GossipService
from spheroid_p2p.core.gossip_params import LocalClaim
from spheroid_p2p.core.limits import TokenBucket
from spheroid_p2p.errors import ErrorCode
from spheroid_p2p.net.peers import PeerManager
from spheroid_p2p.net.sockets import DialError
from spheroid_p2p.wire.message import Message
from spheroid_p2p.wire.records import OwnershipRecord
from spheroid_p2p.wire.signing import PeerId

__all__ = ["GOSSIP_CAPABILITY", "GossipGlue"]

log = logging.getLogger(__name__)

GOSSIP_CAPABILITY = "gossip/1"
#: How long a probe of a possibly dead peer may take (connect and handshake).
PROBE_TIMEOUT_S = 3.0
MAX_PARALLEL_DIALS = 8
#: Seconds between checks that the next block's servers are connected (warm_next_hops); the
#: check runs when the timer task wakes (a gossip event or deadline), at most this often.
WARM_CHECK_S = 1.0
#: Dials a second (and burst) to addresses learned from peers (records, routes, replies), so
#: records cannot turn the node into a tool that dials anything (security.md §S.4).
DIAL_RATE = 5.0
DIAL_BURST = 20.0
#: Longest backoff between bootstrap dials.
MAX_BOOTSTRAP_BACKOFF_S = 30.0


class GossipGlue:
    """Gossip under asyncio; the node's :class:`SwarmView`."""

    def __init__(
        self,
        gossip: GossipService,
        peers: PeerManager,
        *,
        spawn: Callable[[Coroutine[object, object, None], str], bool],
        tag: str,
        allow_peers: frozenset[PeerId] | None = None,
        next_hops: Callable[[], list[tuple[int, str]]] = list,
        warm_next_hops: int = 0,
    ) -> None:
        self.gossip = gossip
        self.peers = peers
        self.spawn = spawn
        self.tag = tag
        self._allow = allow_peers
        #: (block, config hash) of the blocks after ours, whose servers we keep connected to
        self.next_hops = next_hops
        self.warm_next_hops = warm_next_hops
        self._stop = asyncio.Event()
        self._wake = asyncio.Event()
        self._changed = asyncio.Event()
        #: called after gossip changed something (the swarm page samples versions then)
        self.on_change: list[Callable[[], None]] = []
        self._dialing: set[PeerId] = set()
        self._dial_slots = asyncio.Semaphore(MAX_PARALLEL_DIALS)
        self._dial_budget = TokenBucket(DIAL_RATE, DIAL_BURST)
        self._next_warm = 0.0
        #: failures of the gossip timer (logged, retried)
        self.failures = 0

    # -- SwarmView ------------------------------------------------------------------------------
    @property
    def me(self) -> PeerId:
        return self.peers.me

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    @property
    def allow_peers(self) -> frozenset[PeerId] | None:
        return self._allow

    def owners(self, block: int) -> list[OwnershipRecord]:
        return self.gossip.owners_of(block)

    def announce(self, claim: LocalClaim) -> None:
        self.apply(self.gossip.publish(claim, time.monotonic()))

    async def changed(self, timeout_s: float) -> None:
        self._changed.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(0.0, timeout_s)):
                await self._changed.wait()

    async def connect(self, peers: list[PeerId]) -> list[PeerId]:
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

        unique = list(dict.fromkeys(p for p in peers if p != self.me))
        reached = await asyncio.gather(*(one(p) for p in unique))
        return [p for p in reached if p is not None]

    async def dial_learned(self, addr: str, expected: PeerId) -> PeerId:
        """Dial an address learned from the network, within the dial budget (a DialError
        when it is spent); a connected peer costs nothing."""
        if expected in self.peers.connected():
            return expected
        if not self._dial_budget.take(time.monotonic()):
            raise DialError(f"dial {addr} skipped: dial budget ({DIAL_RATE:g}/s) spent")
        return await self.peers.dial(addr, expected)

    # -- the service's inputs -------------------------------------------------------------------
    def opened(self, peer: PeerId, capabilities: tuple[str, ...]) -> None:
        if GOSSIP_CAPABILITY not in capabilities:
            return
        if not self.gossip.has_room():
            # Make room rather than turn the newcomer away (it may know no one else): drop a
            # random current gossip peer, which has other connections and will find more.
            victim = self.gossip.pick_eviction()
            if victim is not None:
                self.gossip.peer_disconnected(victim, time.monotonic(), clean=True, overloaded=True)
                self.peers.close_peer(victim, ErrorCode.OVERLOADED, "making room for a new peer")
        self.apply(self.gossip.peer_connected(peer, time.monotonic()))

    def closed(self, peer: PeerId, lost: ConnectionLost) -> None:
        if peer in self.gossip.peers and not self.stopping:
            overloaded = lost.code == ErrorCode.OVERLOADED
            now = time.monotonic()
            self.apply(
                self.gossip.peer_disconnected(peer, now, clean=lost.clean, overloaded=overloaded)
            )

    def message(self, peer: PeerId, message: Message) -> None:
        if peer in self.gossip.peers:
            self.apply(self.gossip.handle_message(peer, message, time.monotonic()))

    def apply(self, actions: list[Action]) -> None:
        """Carry out the service's actions; wake the timer task (the deadline may move)."""
        for action in actions:
            if isinstance(action, Send):
                self.peers.send(action.peer, action.message)
            elif (
                isinstance(action, Dial)
                and action.peer not in self._dialing
                and not self.stopping
                and self._dial_budget.take(time.monotonic())
            ):
                self._dialing.add(action.peer)
                if not self.spawn(self._dial(action.addrs[0], action.peer), "gossip dial"):
                    self._dialing.discard(action.peer)
            elif isinstance(action, Probe):
                self.spawn(self._probe(action.peer, action.addrs), f"probe of {action.peer}")
        self._wake.set()
        self._changed.set()
        for listener in self.on_change:
            listener()

    async def _dial(self, addr: str, expected: PeerId) -> None:
        async with self._dial_slots:
            try:
                await self.peers.dial(addr, expected)  # the budget was spent in apply()
            except DialError as exc:
                log.info("[%s] %s", self.tag, exc)
            finally:
                self._dialing.discard(expected)

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
        self.apply(self.gossip.probe_result(peer, alive, time.monotonic()))

    # -- tasks ----------------------------------------------------------------------------------
    async def bootstrap(self, addr: str) -> None:
        """Dial a bootstrap address until it answers or we are connected to someone else;
        retries back off from 1 s to 30 s, and every failure says why."""
        delay = 1.0
        while not self.stopping:
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
            delay = min(MAX_BOOTSTRAP_BACKOFF_S, delay * 2)

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._changed.set()

    async def run(self) -> None:
        """The timer task: sleep until the service's next deadline or an input, until stop."""
        while not self.stopping:
            now = time.monotonic()
            deadline = self.gossip.next_deadline(now)
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, deadline - now)):
                    await self._wake.wait()
            if self.stopping:
                return
            now = time.monotonic()
            if now >= self._next_warm:
                self._next_warm = now + WARM_CHECK_S
                self._warm()
            if self.gossip.next_deadline(now) <= now:
                try:
                    self.apply(self.gossip.handle_timer(now))
                except Exception:  # a bug (perhaps on a peer's record): log it, back off, go on
                    self.failures += 1
                    log.exception("[%s] gossip timer failed; retrying in 1 s", self.tag)
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(1.0):
                            await self._stop.wait()

    def depart(self) -> None:
        """Publish signed departures (a clean stop)."""
        self.apply(self.gossip.depart(time.monotonic()))

    # -- warm next hops -------------------------------------------------------------------------
    def next_hop_servers(self) -> list[tuple[PeerId, str]]:
        """Live servers of the blocks (or pipeline stages) after the last one we serve."""
        out = []
        for block, config_hash in self.next_hops():
            found = [
                (r.owner, r.addrs[0])
                for r in self.gossip.owners_of(block)
                if r.role == "serve"
                and r.addrs
                and r.owner != self.me
                and (not r.config_hash or r.config_hash == config_hash)
            ]
            out.extend(sorted(found, key=lambda f: f[0].digest)[: self.warm_next_hops])
        return out

    def _warm(self) -> None:
        """Keep connections open to servers of the next block, so a traversal's forward does
        not wait for a dial and a handshake (two round trips on a WAN): dialled within the
        dial budget, like any learned address."""
        if not self.warm_next_hops:
            return
        connected = set(self.peers.connected())
        dials: list[Action] = [
            Dial(peer, (addr,)) for peer, addr in self.next_hop_servers() if peer not in connected
        ]
        if dials:
            self.apply(dials)
