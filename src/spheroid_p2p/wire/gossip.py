"""Ownership gossip messages (spec: ``protocol/07-ownership-gossip.md`` §7.5-7.6): summaries,
digests, records, requests and suspicions. The records themselves are ``wire.records``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from spheroid_p2p.params import MAX_GOSSIP_BATCH_BYTES, MAX_RECORDS_PER_MESSAGE
from spheroid_p2p.wire.message import (
    Message,
    MessageType,
    bad,
    check_bytes,
    check_uint,
    pairs,
    register,
    wire,
)

__all__ = [
    "DigestEntry",
    "GossipDigest",
    "GossipRecords",
    "GossipRequest",
    "GossipSummary",
    "GossipSuspect",
    "RelayedRecord",
    "record_batches",
]


@dataclass(frozen=True, slots=True)
class DigestEntry:
    """(owner peer id, block, seq) of one record a peer holds."""

    owner: bytes
    block: int
    seq: int


@register
@dataclass(frozen=True, slots=True, kw_only=True)
class GossipSummary(Message):
    """Anti-entropy opener: a hash of the sender's live table and its size (§7.5)."""

    TYPE: ClassVar[MessageType] = MessageType.GOSSIP_SUMMARY
    table_hash: bytes = wire("h")
    count: int = wire("n")

    def __post_init__(self) -> None:
        check_bytes("table_hash", self.table_hash, 32)
        check_uint("count", self.count)


@register
@dataclass(frozen=True, slots=True, kw_only=True)
class GossipDigest(Message):
    """Every (owner, block, seq) the sender holds, answering a summary that differed."""

    TYPE: ClassVar[MessageType] = MessageType.GOSSIP_DIGEST
    entries: tuple[DigestEntry, ...] = wire(
        "d",
        encode=lambda es: [[e.owner, e.block, e.seq] for e in es],
        decode=lambda v: tuple(DigestEntry(*e) for e in pairs(v, "d", 3)),
    )

    def __post_init__(self) -> None:
        for e in self.entries:
            check_bytes("owner", e.owner, 32)
            check_uint("block", e.block, 0xFFFF)
            check_uint("seq", e.seq)


@dataclass(frozen=True, slots=True)
class RelayedRecord:
    """A signed record as relayed: its exact bytes, the owner's signature, and how long the
    relay still considers it valid (never more than the record's own ttl)."""

    data: bytes
    signature: bytes
    remaining_ms: int


@register
@dataclass(frozen=True, slots=True, kw_only=True)
class GossipRecords(Message):
    """Signed ownership records, pushed on change or sent to fill a peer's gaps."""

    TYPE: ClassVar[MessageType] = MessageType.GOSSIP_RECORDS
    records: tuple[RelayedRecord, ...] = wire(
        "r",
        encode=lambda rs: [[r.data, r.signature, r.remaining_ms] for r in rs],
        decode=lambda v: tuple(RelayedRecord(*r) for r in pairs(v, "r", 3)),
    )

    def __post_init__(self) -> None:
        if len(self.records) > MAX_RECORDS_PER_MESSAGE:
            raise bad(f"more than {MAX_RECORDS_PER_MESSAGE} records in one message")
        for r in self.records:
            check_bytes("record", r.data)
            check_bytes("signature", r.signature)
            check_uint("remaining_ms", r.remaining_ms)


@register
@dataclass(frozen=True, slots=True, kw_only=True)
class GossipRequest(Message):
    """Keys (owner, block) whose records the sender lacks or holds older."""

    TYPE: ClassVar[MessageType] = MessageType.GOSSIP_REQUEST
    keys: tuple[tuple[bytes, int], ...] = wire(
        "k",
        encode=lambda ks: [[o, b] for o, b in ks],
        decode=lambda v: tuple((o, b) for o, b in pairs(v, "k", 2)),
    )

    def __post_init__(self) -> None:
        for owner, block in self.keys:
            check_bytes("owner", owner, 32)
            check_uint("block", block, 0xFFFF)


@register
@dataclass(frozen=True, slots=True, kw_only=True)
class GossipSuspect(Message):
    """ "I cannot reach ``peer``; the newest record of it I held had ``seq``" (§7.6)."""

    TYPE: ClassVar[MessageType] = MessageType.GOSSIP_SUSPECT
    peer: bytes = wire("p")
    seq: int = wire("seq")

    def __post_init__(self) -> None:
        check_bytes("peer", self.peer, 32)
        check_uint("seq", self.seq)


#: msgpack framing of one relayed record ([bin, bin(64), uint]) beyond its bytes.
_RELAYED_OVERHEAD = 16


def record_batches(relayed: Sequence[RelayedRecord]) -> list[tuple[RelayedRecord, ...]]:
    """Split records into GOSSIP_RECORDS batches of at most ``MAX_RECORDS_PER_MESSAGE``
    records and ``MAX_GOSSIP_BATCH_BYTES`` bytes (§7.5), so no batch nears the signed-size
    limit a receiver enforces."""
    out: list[tuple[RelayedRecord, ...]] = []
    batch: list[RelayedRecord] = []
    size = 0
    for r in relayed:
        n = len(r.data) + len(r.signature) + _RELAYED_OVERHEAD
        if batch and (len(batch) >= MAX_RECORDS_PER_MESSAGE or size + n > MAX_GOSSIP_BATCH_BYTES):
            out.append(tuple(batch))
            batch, size = [], 0
        batch.append(r)
        size += n
    if batch:
        out.append(tuple(batch))
    return out
