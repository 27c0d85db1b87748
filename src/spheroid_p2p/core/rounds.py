"""Averaging one shard of a round without a central server (spec: 09-averaging.md), sans-I/O.

Round ``r`` of block ``b`` turns version ``r-1`` into version ``r``. Peers are ranked for it by
rendezvous hashing on ``(b, r, peer id)`` (:func:`aggregator_order`); the round's plan
(``core.plan``) says which of them aggregates each shard, and who takes over when one stays
silent.

:class:`Aggregation` is one aggregator's view of one shard of one round: it takes delta
*descriptions* (who, which base, how many steps, the norm the glue measured, any problem the
decoder found) and the clock, and decides what is accepted, when the shard closes, the
weights, and the shard's report. The tensors themselves never enter this module.

Staleness rule (09 §9.5): a delta for round ``r`` built on version ``r-1`` has staleness 0; one
built on ``r-2`` (its sender missed round ``r-1`` and resubmits) has staleness 1 and counts at
``late_weight`` (½) of its steps; older ones are refused with ``ROUND_CLOSED``. A delta that
arrives after its round closed is refused with ``ROUND_CLOSED``; its sender resubmits it to the
next round, where it has staleness 1.
"""

from __future__ import annotations

import statistics
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final

import blake3

from spheroid_p2p.errors import ErrorCode
from spheroid_p2p.wire.signing import PeerId

__all__ = [
    "Aggregation",
    "DeltaOffer",
    "Outcome",
    "RoundParams",
    "aggregator_order",
    "preferred_manifest",
]

_ORDER_DOMAIN: Final = b"spheroid/v1/aggregator"


def _score(block: int, round_: int, peer: PeerId) -> bytes:
    return blake3.blake3(_ORDER_DOMAIN + struct.pack(">HQ", block, round_) + peer.digest).digest()


def aggregator_order(block: int, round_: int, replicas: Iterable[PeerId]) -> list[PeerId]:
    """The live replicas in aggregator order for (block, round): highest score first."""
    return sorted(set(replicas), key=lambda p: _score(block, round_, p), reverse=True)


def preferred_manifest(block: int, round_: int, a: PeerId, b: PeerId) -> PeerId:
    """Of two signers of a version for (block, round), the one every peer keeps (§9.3)."""
    return a if _score(block, round_, a) >= _score(block, round_, b) else b


@dataclass(frozen=True)
class RoundParams:
    """Round timing and the rejection bounds (09 §9.7)."""

    #: Seconds from one version's publication to the next round's deadline.
    period_s: float = 30.0
    #: Seconds each candidate aggregator waits beyond the previous one before taking over.
    grace_s: float = 5.0
    #: A delta whose norm exceeds this many times the median norm of the round's other
    #: deltas is rejected.
    norm_ratio: float = 10.0
    #: A delta whose norm exceeds this times the base weights' norm is rejected.
    max_relative_norm: float = 1.0
    #: Weight factor of a delta with staleness 1.
    late_weight: float = 0.5
    #: Close as soon as every live replica has delivered (the synchronous variant).
    barrier: bool = True
    #: A delta's steps count for at most this many times the median of the shard's accepted
    #: deltas (09 §9.8): no contributor takes a shard by claiming a huge step count.
    max_steps_ratio: float = 2.0
    #: Shards a publisher plans for the next round (09 §9.2; 1: one aggregator per round).
    max_shards: int = 64


@dataclass(frozen=True)
class DeltaOffer:
    """What the glue learnt about one received delta."""

    sender: PeerId
    round: int
    base_version: int
    base_hash: bytes
    steps: int
    norm: float
    problem: str | None = None
    nbytes: int = 0


@dataclass
class Outcome:
    """A closed shard: the weights of the accepted deltas and the report's lists."""

    round: int
    shard: int
    weights: dict[PeerId, float]
    contributors: list[tuple[PeerId, float, int, int]]
    rejected: list[tuple[PeerId, int, str]]
    late: list[PeerId]
    bytes_in: int
    closed_at: float
    early: bool  # closed by the barrier rather than the deadline


@dataclass
class Aggregation:
    """One aggregator's view of shard ``shard`` of round ``round`` of ``block``.

    It takes deltas from ``opens_at`` on (its turn, 09 §9.5) and closes the shard at
    ``closes_at``, or earlier once every live replica delivered (the barrier). ``known`` maps
    the version numbers it can check deltas against to their weights hashes (at least
    ``round - 1``; ``round - 2`` too for staleness-1 deltas); ``base_norm`` is the norm of the
    base's shard (the bound of 09 §9.6).
    """

    block: int
    round: int
    shard: int
    known: dict[int, bytes]
    base_norm: float
    replicas: set[PeerId]
    opens_at: float
    closes_at: float
    params: RoundParams
    accepted: dict[PeerId, DeltaOffer] = field(default_factory=dict)
    rejected: dict[PeerId, tuple[int, str]] = field(default_factory=dict)
    bytes_in: int = 0
    closed: Outcome | None = None

    def offer(self, delta: DeltaOffer, now: float) -> tuple[int, str]:
        """Take or refuse a delta; returns (error code, reason), code 0 when taken. Before the
        turn opens the answer is ``NOT_READY`` and nothing is recorded (09 §9.5)."""
        if now < self.opens_at and self.closed is None:
            return ErrorCode.NOT_READY, f"shard {self.shard}: this aggregator's turn has not begun"
        self.bytes_in += delta.nbytes
        verdict = self._judge(delta)
        if verdict[0] == 0:
            self.accepted[delta.sender] = delta
        elif verdict[0] != ErrorCode.ROUND_CLOSED and delta.sender not in self.accepted:
            # (a second delta from a contributor is refused without undoing its first)
            self.rejected[delta.sender] = verdict
        return verdict

    def _judge(self, delta: DeltaOffer) -> tuple[int, str]:
        if self.closed is not None:
            return ErrorCode.ROUND_CLOSED, f"round {self.round} shard {self.shard} closed"
        if delta.round != self.round:
            return ErrorCode.ROUND_CLOSED, f"delta for round {delta.round}, this is {self.round}"
        stale = self.round - 1 - delta.base_version
        if stale not in (0, 1):
            return ErrorCode.ROUND_CLOSED, f"base version {delta.base_version} is too old"
        if self.known.get(delta.base_version) != delta.base_hash:
            return ErrorCode.DELTA_REJECTED, f"unknown base version {delta.base_version}"
        if delta.sender not in self.replicas:
            return ErrorCode.DELTA_REJECTED, "sender is not a live replica of this block"
        if delta.sender in self.accepted:
            return ErrorCode.DELTA_REJECTED, "one delta per replica and shard"
        if delta.problem is not None:
            return ErrorCode.DELTA_REJECTED, delta.problem
        if delta.steps == 0:
            return ErrorCode.DELTA_REJECTED, "a delta of zero local steps"
        return 0, ""

    def due(self, now: float) -> bool:
        """Whether the shard should close now."""
        if self.closed is not None:
            return False
        if now >= self.closes_at:
            return True
        delivered = set(self.accepted) | set(self.rejected)
        return self.params.barrier and bool(self.replicas) and self.replicas <= delivered

    def close(self, now: float) -> Outcome:
        """Close the shard: drop norm outliers, weigh the rest by steps (× staleness factor)."""
        if self.closed is not None:
            return self.closed
        norms = {p: d.norm for p, d in self.accepted.items()}
        for peer, norm in list(norms.items()):
            others = [n for q, n in norms.items() if q != peer]
            if others:
                median = statistics.median(others)
                if median > 0 and norm > self.params.norm_ratio * median:
                    self.rejected[peer] = (
                        ErrorCode.DELTA_REJECTED,
                        f"norm {norm:.4g} is over {self.params.norm_ratio:g} x the median "
                        f"{median:.4g} of the other deltas",
                    )
        for peer in self.rejected:
            self.accepted.pop(peer, None)
        cap = (
            self.params.max_steps_ratio * statistics.median(d.steps for d in self.accepted.values())
            if self.accepted
            else 0.0
        )
        raw = {
            p: min(d.steps, cap)
            * (self.params.late_weight if d.base_version < self.round - 1 else 1.0)
            for p, d in self.accepted.items()
        }
        total = sum(raw.values())
        weights = {p: w / total for p, w in raw.items()} if total > 0 else {}
        early = now < self.closes_at
        late = sorted(self.replicas - set(self.accepted) - set(self.rejected), key=_key)
        self.closed = Outcome(
            round=self.round,
            shard=self.shard,
            weights=weights,
            contributors=[
                (p, weights[p], d.steps, self.round - 1 - d.base_version)
                for p, d in sorted(self.accepted.items(), key=lambda kv: kv[0].digest)
            ],
            rejected=[(p, int(c), r) for p, (c, r) in sorted(self.rejected.items(), key=_key0)],
            late=late,
            bytes_in=self.bytes_in,
            closed_at=now,
            early=early,
        )
        return self.closed


def _key(peer: PeerId) -> bytes:
    return peer.digest


def _key0(item: tuple[PeerId, object]) -> bytes:
    return item[0].digest
