"""The ownership table: signed (peer, block) records with a merge rule and expiry.

Spec: ``protocol/07-ownership-gossip.md`` §7.4. Theory of operation:

* Records are keyed by ``(owner peer id, block)``. A record with a higher ``seq`` replaces the
  one held; an equal ``seq`` is a duplicate (no change); a lower one is stale. The merge is
  therefore idempotent, commutative and associative: any two peers that saw the same set of
  records hold the same table, whatever the order.
* Expiry runs on the receiver's monotonic clock: a record accepted at ``now`` with
  ``remaining_ms`` left (the relay's remaining lifetime, never more than the record's own
  ``ttl``) expires at ``now + remaining``. Relays pass on the remaining time, not the full
  ttl, so a record cannot outlive its owner's last refresh by more than one ttl plus transit.
* An expired key leaves a tombstone holding its last ``seq`` for ``tombstone_s``; a record with
  that ``seq`` or lower is not accepted again, so an expired record does not come back from a
  peer that still holds it.
* Departure records (``dep = true``) merge like any other, so they overwrite the owner's last
  record everywhere; they are not part of the live view.

No clock is read here: every method takes ``now`` (monotonic seconds).
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass

from spheroid_p2p.wire.messages import DigestEntry
from spheroid_p2p.wire.records import OwnershipRecord, SignedRecord

__all__ = ["Entry", "OwnershipTable", "RecordKey"]

RecordKey = tuple[bytes, int]


@dataclass(frozen=True, slots=True)
class Entry:
    """A record held, with when it was accepted and when it expires (monotonic seconds)."""

    signed: SignedRecord
    received_at: float
    expires_at: float

    @property
    def record(self) -> OwnershipRecord:
        return self.signed.record


class OwnershipTable:
    """The merge rule and expiry of §7.4, as a plain data structure."""

    def __init__(self, tombstone_s: float = 60.0) -> None:
        self._entries: dict[RecordKey, Entry] = {}
        self._tombstones: dict[RecordKey, tuple[int, float]] = {}
        self.tombstone_s = tombstone_s
        #: Records refused, by reason (``stale``, ``expired``, ``bad_signature``, ...).
        self.dropped: Counter[str] = Counter()

    def offer(self, signed: SignedRecord, remaining_ms: int, now: float) -> bool:
        """Merge one verified record; True if it changed the table (new information)."""
        record = signed.record
        key = record.key
        remaining_ms = min(remaining_ms, record.ttl_ms)
        if remaining_ms <= 0:
            self.dropped["expired"] += 1
            return False
        current = self._entries.get(key)
        if current is not None and record.seq <= current.record.seq:
            if record.seq < current.record.seq:
                self.dropped["stale"] += 1
            return False
        tomb = self._tombstones.get(key)
        if tomb is not None and record.seq <= tomb[0]:
            self.dropped["stale"] += 1
            return False
        self._entries[key] = Entry(signed, now, now + remaining_ms / 1000.0)
        self._tombstones.pop(key, None)
        return True

    def expire(self, now: float) -> list[RecordKey]:
        """Remove records whose time is up (leaving tombstones); returns their keys."""
        gone = [k for k, e in self._entries.items() if e.expires_at <= now]
        for key in gone:
            self._tombstones[key] = (self._entries.pop(key).record.seq, now + self.tombstone_s)
        for key in [k for k, (_, until) in self._tombstones.items() if until <= now]:
            del self._tombstones[key]
        return gone

    def evict(self, owner: bytes, up_to_seq: int, now: float) -> list[RecordKey]:
        """Drop every record of ``owner`` with ``seq <= up_to_seq`` (it was found dead),
        leaving tombstones so the same records are not accepted again."""
        gone = [k for k, e in self._entries.items() if k[0] == owner and e.record.seq <= up_to_seq]
        for key in gone:
            self._tombstones[key] = (self._entries.pop(key).record.seq, now + self.tombstone_s)
        return gone

    def get(self, key: RecordKey) -> Entry | None:
        return self._entries.get(key)

    def entries(self) -> list[Entry]:
        """Every held record, departures included, in key order."""
        return [self._entries[k] for k in sorted(self._entries)]

    def live(self) -> list[Entry]:
        """Held records that announce a present owner (no departures)."""
        return [e for e in self.entries() if not e.record.departed]

    def remaining_ms(self, key: RecordKey, now: float) -> int:
        entry = self._entries[key]
        return max(0, int((entry.expires_at - now) * 1000))

    def digest(self) -> tuple[DigestEntry, ...]:
        return tuple(
            DigestEntry(o, b, self._entries[(o, b)].record.seq) for o, b in sorted(self._entries)
        )

    def knows(self, owner: bytes, block: int, seq: int) -> bool:
        """Whether a record (owner, block, seq) would bring nothing new."""
        current = self._entries.get((owner, block))
        if current is not None and current.record.seq >= seq:
            return True
        tomb = self._tombstones.get((owner, block))
        return tomb is not None and tomb[0] >= seq

    def table_hash(self) -> bytes:
        """SHA-256 over the sorted (owner, block, seq) triples: equal tables, equal hashes."""
        h = hashlib.sha256()
        for entry in self.digest():
            h.update(entry.owner + entry.block.to_bytes(2, "big") + entry.seq.to_bytes(8, "big"))
        return h.digest()

    def next_expiry(self) -> float | None:
        times = [e.expires_at for e in self._entries.values()]
        times += [until for _, until in self._tombstones.values()]
        return min(times) if times else None

    def __len__(self) -> int:
        return len(self._entries)
