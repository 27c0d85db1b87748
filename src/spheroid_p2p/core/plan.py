"""A round's plan, its shards, and one replica's exchange of them (09 §9.2-9.5), sans-I/O.

**The plan** (:class:`RoundPlan`) of round ``r`` comes from version ``r - 1``'s manifest: a list
of peers in rank order and a shard count (or, without one, the live replicas in rendezvous
order and one shard). Shard ``i``'s rank-``k`` aggregator is ``ranks[(i + k) % m]``; the
rank-``k`` publisher is ``ranks[k]``. Every time in it is wall-clock seconds, like the
manifest's deadline ``D``; turns follow one grace period ``G`` after another.

**Shards** (:func:`shard_bounds`) cut the block's flat vector at multiples of
``SHARD_ALIGN_ELEMS``. A publisher plans ``SHARDS_PER_AGGREGATOR`` shards per aggregator: each
aggregator's shards arrive one after another (senders stream them in shard order), so the
first is averaged and its update streams back while the next still arrive — the round's
reduce-scatter and all-gather overlap instead of following each other.

**The exchange** (:class:`Exchange`) is one replica's side of one round: where it sent each
shard of its delta, which shard updates it holds, when a shard is overdue and goes to the next
rank, and when it publishes (if it is a publisher). The glue feeds it what happened and the
time, and carries out the actions it returns (:class:`SendShard`, :class:`Publish`); its next
deadline is :meth:`Exchange.next_deadline`. Tensors never enter this module.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

from spheroid_p2p.core.rounds import aggregator_order
from spheroid_p2p.params import MAX_REPORT_ENTRIES, MAX_SHARDS, SHARD_ALIGN_ELEMS
from spheroid_p2p.wire.reports import RoundReport, ShardRow, shard_mask
from spheroid_p2p.wire.signing import PeerId

#: Shards a publisher plans per aggregator (09 §9.2), when its shard setting allows.
SHARDS_PER_AGGREGATOR = 4

__all__ = [
    "SHARDS_PER_AGGREGATOR",
    "Exchange",
    "Publish",
    "RoundPlan",
    "SendShard",
    "next_plan",
    "shard_bounds",
    "version_report",
]


def shard_bounds(n_elems: int, shards: int) -> list[int]:
    """The element boundaries ``a_0 = 0 < ... < a_n = n_elems`` of the shards (09 §9.3):
    ``n = min(shards, ceil(n_elems / SHARD_ALIGN_ELEMS))`` shards (at least one)."""
    units = max(1, -(-n_elems // SHARD_ALIGN_ELEMS))
    n = max(1, min(shards, units))
    return [min(n_elems, SHARD_ALIGN_ELEMS * (i * units // n)) for i in range(n)] + [n_elems]


@dataclass(frozen=True)
class RoundPlan:
    """Who aggregates and publishes round ``round`` of ``block`` and when (09 §9.2, §9.5)."""

    block: int
    round: int
    ranks: tuple[PeerId, ...]
    shards: int
    deadline: float
    grace: float

    @classmethod
    def from_manifest(
        cls,
        block: int,
        round_: int,
        plan: Iterable[bytes],
        shards: int,
        deadline: float,
        grace: float,
        live: Iterable[PeerId],
    ) -> RoundPlan:
        """The plan a base manifest names, or (none) the single-aggregator plan over the
        replicas this peer sees live."""
        ranks = tuple(PeerId(p) for p in plan)
        if not ranks:
            return cls(
                block, round_, tuple(aggregator_order(block, round_, live)), 1, deadline, grace
            )
        return cls(block, round_, ranks, max(1, shards), deadline, grace)

    @property
    def size(self) -> int:
        return len(self.ranks)

    def aggregator(self, shard: int, rank: int) -> PeerId | None:
        """Shard ``shard``'s rank-``rank`` aggregator (None past the last rank)."""
        if not self.ranks or rank >= self.size:
            return None
        return self.ranks[(shard + rank) % self.size]

    def aggregator_rank(self, shard: int, peer: PeerId) -> int | None:
        """``peer``'s rank among shard ``shard``'s aggregators (None: not in the plan)."""
        if peer not in self.ranks:
            return None
        return (self.ranks.index(peer) - shard) % self.size

    def publisher_rank(self, peer: PeerId) -> int | None:
        return self.ranks.index(peer) if peer in self.ranks else None

    def turn_opens(self, rank: int) -> float:
        """When rank ``rank`` may begin: at once for rank 0, else ``D + (k - 1/2) G`` (half a
        grace period of allowance for clock skew)."""
        return -math.inf if rank == 0 else self.deadline + (rank - 0.5) * self.grace

    def shard_closes(self, rank: int) -> float:
        """When a rank-``rank`` aggregator closes its shard (unless the barrier does sooner)."""
        return self.deadline + rank * self.grace + (self.grace / 2 if rank else 0.0)

    def handover_at(self, rank: int) -> float:
        """When a replica with no update from rank ``rank`` sends its delta to the next."""
        return self.deadline + (rank + 1) * self.grace

    def publish_at(self, rank: int) -> float:
        """When a rank-``rank`` publisher publishes if no version arrived (given all shards)."""
        return -math.inf if rank == 0 else self.deadline + rank * self.grace

    def give_up_at(self, rank: int) -> float:
        """When a rank-``rank`` publisher publishes without the shards nobody averaged."""
        return self.deadline + (self.size + 1 + rank) * self.grace


def next_plan(
    block: int, round_: int, peers: Iterable[PeerId], max_shards: int
) -> tuple[tuple[bytes, ...], int]:
    """The plan a publisher writes for round ``round_`` (09 §9.2): ``peers`` in rendezvous
    order, at most ``MAX_SHARDS`` of them, and the shard count: ``SHARDS_PER_AGGREGATOR`` per
    peer, at most ``max_shards`` (1: the single aggregator of r9) and ``MAX_SHARDS``."""
    order = aggregator_order(block, round_, peers)[:MAX_SHARDS]
    per = SHARDS_PER_AGGREGATOR if len(order) > 1 else 1
    return tuple(p.digest for p in order), max(1, min(per * len(order), max_shards, MAX_SHARDS))


@dataclass(frozen=True, slots=True)
class SendShard:
    """Send shard ``shard`` of our delta to ``to``, its rank-``rank`` aggregator (or offer it
    to ourselves when ``to`` is us)."""

    shard: int
    rank: int
    to: PeerId


@dataclass(frozen=True, slots=True)
class Publish:
    """Publish version ``round`` now; ``missing`` shards have no update and keep their
    base's values (09 §9.5 step 4)."""

    missing: tuple[int, ...]


@dataclass
class Exchange:
    """One replica's side of one round: its delta's shards out, the shards' updates in."""

    plan: RoundPlan
    me: PeerId
    #: effective shard count (``min(plan.shards, units)``, from :func:`shard_bounds`)
    n_shards: int
    sent: dict[int, int] = field(default_factory=dict)  # shard -> rank we sent it to
    updates: dict[int, set[PeerId]] = field(default_factory=dict)  # shard -> aggregators
    published: bool = False
    version_seen: bool = False

    def start(self, now: float) -> list[SendShard]:
        """Send every shard to its rank-0 aggregator (ours we offer to ourselves)."""
        actions = []
        for shard in range(self.n_shards):
            to = self.plan.aggregator(shard, 0)
            if to is not None:
                self.sent[shard] = 0
                actions.append(SendShard(shard, 0, to))
        return actions

    def update_arrived(self, shard: int, aggregator: PeerId) -> None:
        """An update of ``shard`` from ``aggregator`` was received and judged good."""
        self.updates.setdefault(shard, set()).add(aggregator)

    def version_arrived(self) -> None:
        """A version of this round reached us (from a publisher whose turn has begun)."""
        self.version_seen = True

    @property
    def complete(self) -> bool:
        return all(self.updates.get(s) for s in range(self.n_shards))

    @property
    def missing(self) -> tuple[int, ...]:
        return tuple(s for s in range(self.n_shards) if not self.updates.get(s))

    def _overdue(self) -> list[tuple[int, float]]:
        """(shard, when it goes to its next rank) for every shard still without an update."""
        out = []
        for shard in self.missing:
            rank = self.sent.get(shard)
            if rank is not None and rank + 1 < self.plan.size:
                out.append((shard, self.plan.handover_at(rank)))
        return out

    def _publish_times(self) -> list[float]:
        rank = self.plan.publisher_rank(self.me)
        if rank is None or self.published or self.version_seen:
            return []
        times = [self.plan.give_up_at(rank)]
        if self.complete:
            times.append(self.plan.publish_at(rank))
        return times

    def next_deadline(self) -> float | None:
        times = [t for _, t in self._overdue()] + self._publish_times()
        return min(times) if times else None

    def handle_timer(self, now: float) -> list[SendShard | Publish]:
        actions: list[SendShard | Publish] = []
        for shard, at in self._overdue():
            if at <= now:
                rank = self.sent[shard] + 1
                to = self.plan.aggregator(shard, rank)
                assert to is not None
                self.sent[shard] = rank
                actions.append(SendShard(shard, rank, to))
        times = self._publish_times()
        if times and min(times) <= now:
            self.published = True
            actions.append(Publish(self.missing))
        return actions


def version_report(
    shards: dict[int, tuple[bytes, RoundReport]], missing: Iterable[int]
) -> RoundReport:
    """A version's report from the reports of the shard updates it uses (09 §9.6): every
    contributor with its weight averaged over the shards, the refusals (first per peer),
    the peers late in every shard, and the shard table saying whom each shard averaged."""
    missing = tuple(sorted(missing))
    count = len(shards) + len(missing)
    weights: dict[bytes, float] = {}
    steps: dict[bytes, tuple[int, int]] = {}
    rejected: dict[bytes, tuple[bytes, int, str]] = {}
    late: set[bytes] | None = None
    for index, (_, report) in sorted(shards.items()):
        for peer, weight, n_steps, stale in report.contributors:
            weights[peer] = weights.get(peer, 0.0) + weight / max(1, count)
            steps.setdefault(peer, (n_steps, stale))
        for peer, code, why in report.rejected:
            rejected.setdefault(peer, (peer, code, f"shard {index}: {why}"[:200]))
        late = set(report.late) if late is None else late & set(report.late)
    order = sorted(weights)[:MAX_REPORT_ENTRIES]
    rows = []
    for index, (aggregator, report) in sorted(shards.items()):
        members = {c[0] for c in report.contributors}
        rows.append(
            ShardRow(index, aggregator, shard_mask([p in members for p in order]), report.bytes_in)
        )
    room = MAX_REPORT_ENTRIES - len(order)
    refused = [rejected[p] for p in sorted(rejected) if p not in weights][:room]
    room -= len(refused)
    return RoundReport(
        contributors=tuple((p, min(1.0, weights[p]), steps[p][0], steps[p][1]) for p in order),
        rejected=tuple(refused),
        late=tuple(sorted(late or ()))[: max(0, room)],
        bytes_in=sum(r.bytes_in for _, r in shards.values()),
        shards=tuple(rows),
        missing=missing,
    )
