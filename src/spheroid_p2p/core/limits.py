"""Per-peer resource limits as plain state machines (spec: ``protocol/security.md`` §S.4).

* :class:`TokenBucket`: ``rate`` tokens a second up to ``burst``; an action that costs more
  than is left is refused (the caller answers ``OVERLOADED`` or drops it). Time is passed in.
* :class:`PeerLimits`: one bucket per (peer, kind of request), created on first use and
  forgotten when the peer disconnects, with the rates of :data:`REQUEST_RATES`.
* :class:`FairQueue`: turns for a scarce resource (the compute thread), handed out round-robin
  over the peers waiting, so one peer's flood waits behind itself, not in front of others.

No clock is read here: callers pass ``now`` (monotonic seconds).
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Final, Generic, TypeVar

__all__ = ["REQUEST_RATES", "FairQueue", "PeerLimits", "TokenBucket"]

#: kind -> (tokens per second, burst): what one peer may ask of a node (security.md §S.4).
REQUEST_RATES: Final = {
    "status": (5.0, 20.0),
    # records (a GOSSIP_RECORDS message costs one token per record: each is a signature check)
    "gossip": (128.0, 256.0),
    "gossip_sync": (1.0, 3.0),
    # block-steps (a TRAVERSE costs m x the blocks it asks for)
    "traverse": (4000.0, 8000.0),
    "version_get": (20.0, 40.0),
    # unsolicited VERSION_INFO (id 0): one a round from each publisher; a replica fetches one
    # only from the round's publisher in its turn (09 §9.8), once per version
    "version_push": (8.0, 32.0),
    # chunks asked for (a CHUNK_GET costs one per chunk it names): what a peer may take of
    # our upload, about 2 GiB/s; its connection's flow control bounds it further
    "chunk_get": (2048.0, 4096.0),
    # SHARD_DELTA headers: one per shard a peer sends us per round
    "delta": (16.0, 32.0),
    # SHARD_UPDATE headers: one per shard an aggregator averaged, to each replica, per round;
    # the burst is MAX_SHARDS, for an aggregator that took every shard over
    "update": (16.0, 64.0),
}

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")


@dataclass
class TokenBucket:
    rate: float
    burst: float
    tokens: float = -1.0
    last: float = 0.0

    def take(self, now: float, cost: float = 1.0) -> bool:
        """Spend ``cost`` tokens if there are that many; refill at ``rate`` up to ``burst``."""
        if self.tokens < 0:
            self.tokens, self.last = self.burst, now
        self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
        self.last = now
        if self.tokens < cost:
            return False
        self.tokens -= cost
        return True


@dataclass
class PeerLimits(Generic[K]):
    """Token buckets per (peer, kind); ``refused`` counts what each kind refused."""

    rates: dict[str, tuple[float, float]] = field(default_factory=lambda: dict(REQUEST_RATES))
    _buckets: dict[tuple[K, str], TokenBucket] = field(default_factory=dict)
    refused: dict[str, int] = field(default_factory=dict)

    def allow(self, peer: K, kind: str, now: float, cost: float = 1.0) -> bool:
        bucket = self._buckets.get((peer, kind))
        if bucket is None:
            rate, burst = self.rates[kind]
            bucket = self._buckets[(peer, kind)] = TokenBucket(rate, burst)
        if bucket.take(now, cost):
            return True
        self.refused[kind] = self.refused.get(kind, 0) + 1
        return False

    def forget(self, peer: K) -> None:
        for key in [k for k in self._buckets if k[0] == peer]:
            del self._buckets[key]


class FairQueue(Generic[K, T]):
    """Round-robin turns over waiting peers: ``join(peer, ticket)`` queues a ticket; when a
    turn is free, :meth:`next_ticket` returns the ticket of the next peer in rotation (each
    peer's own tickets in arrival order). At most ``per_peer`` tickets wait per peer; a
    :meth:`join` beyond that returns False (the caller answers ``OVERLOADED``)."""

    def __init__(self, per_peer: int) -> None:
        self.per_peer = per_peer
        self._waiting: OrderedDict[K, deque[T]] = OrderedDict()

    def join(self, peer: K, ticket: T) -> bool:
        queue = self._waiting.get(peer)
        if queue is None:
            queue = self._waiting[peer] = deque()
        if len(queue) >= self.per_peer:
            return False
        queue.append(ticket)
        return True

    def leave(self, peer: K, ticket: T) -> None:
        """Withdraw a ticket that no longer waits (its request gave up)."""
        queue = self._waiting.get(peer)
        if queue is not None and ticket in queue:
            queue.remove(ticket)
            if not queue:
                del self._waiting[peer]

    def next_ticket(self, eligible: Callable[[K], bool] | None = None) -> tuple[K, T] | None:
        """The next (eligible) peer's oldest ticket; that peer moves to the back of the
        rotation. ``eligible`` skips peers that may not take a turn now."""
        for peer, queue in self._waiting.items():
            if eligible is not None and not eligible(peer):
                continue
            ticket = queue.popleft()
            del self._waiting[peer]
            if queue:
                self._waiting[peer] = queue  # to the back
            return peer, ticket
        return None

    def __len__(self) -> int:
        return sum(len(q) for q in self._waiting.values())
