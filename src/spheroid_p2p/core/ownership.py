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
* The table is bounded (§7.4.1): at most ``MAX_TABLE_RECORDS`` records, at most
  ``MAX_RECORDS_PER_OWNER`` of one owner, and as many tombstones as records. When it is full,
  a record for a new key evicts the oldest record (first introduced) among those introduced
  by the source (the peer that relayed it first) that introduced the most; our own records
  are never evicted. Both choices take constant time (a queue of keys per source). A flood
  of fresh keys from one peer therefore displaces that peer's own records, not those other
  peers brought.

No clock is read here: every method takes ``now`` (monotonic seconds).
"""

from __future__ import annotations

import hashlib
from collections import Counter, deque
from dataclasses import dataclass

from spheroid_p2p.params import MAX_RECORDS_PER_OWNER, MAX_TABLE_RECORDS
from spheroid_p2p.wire.gossip import DigestEntry
from spheroid_p2p.wire.records import OwnershipRecord, SignedRecord

__all__ = ["SELF", "Entry", "OwnershipTable", "RecordKey"]

RecordKey = tuple[bytes, int]
#: The source of our own records (never evicted).
SELF = b""


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

    def __init__(
        self,
        tombstone_s: float = 60.0,
        max_records: int = MAX_TABLE_RECORDS,
        max_per_owner: int = MAX_RECORDS_PER_OWNER,
    ) -> None:
        self._entries: dict[RecordKey, Entry] = {}
        self._tombstones: dict[RecordKey, tuple[int, float]] = {}
        self.tombstone_s = tombstone_s
        self.max_records = max_records
        self.max_per_owner = max_per_owner
        #: who introduced each held key (``SELF`` for our own records), and how many each did
        self._source: dict[RecordKey, bytes] = {}
        self._by_source: Counter[bytes] = Counter()
        #: keys in the order each source introduced them (stale entries skipped lazily)
        self._introduced: dict[bytes, deque[RecordKey]] = {}
        self._by_owner: Counter[bytes] = Counter()
        #: Records refused, by reason (``stale``, ``expired``, ``bad_signature``, ...).
        self.dropped: Counter[str] = Counter()

    def offer(
        self, signed: SignedRecord, remaining_ms: int, now: float, source: bytes = SELF
    ) -> bool:
        """Merge one verified record relayed by ``source`` (a peer id's bytes; ``SELF`` for
        ours); True if it changed the table (new information)."""
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
        if current is None and not self._make_room(key, source):
            return False
        self._entries[key] = Entry(signed, now, now + remaining_ms / 1000.0)
        self._tombstones.pop(key, None)
        return True

    def _make_room(self, key: RecordKey, source: bytes) -> bool:
        """Account a new key, evicting per the rule of §7.4.1; False if it is refused."""
        if self._by_owner[key[0]] >= self.max_per_owner:
            self.dropped["owner_full"] += 1
            return False
        if len(self._entries) >= self.max_records:
            others = [(n, s) for s, n in self._by_source.items() if s != SELF and n > 0]
            if not others:
                self.dropped["table_full"] += 1
                return False
            _, top = max(others)
            queue = self._introduced[top]
            while self._source.get(queue[0]) != top or queue[0] not in self._entries:
                queue.popleft()  # removed or expired since: skip
            self._remove(queue.popleft())
            self.dropped["evicted"] += 1
        self._source[key] = source
        self._by_source[source] += 1
        queue = self._introduced.setdefault(source, deque())
        queue.append(key)
        if len(queue) > 2 * self.max_records:  # drop the stale entries now and then
            live = [k for k in queue if self._source.get(k) == source]
            self._introduced[source] = deque(live)
        self._by_owner[key[0]] += 1
        return True

    def _remove(self, key: RecordKey) -> Entry:
        entry = self._entries.pop(key)
        source = self._source.pop(key)
        self._by_source[source] -= 1
        if self._by_source[source] <= 0:
            del self._by_source[source]
            self._introduced.pop(source, None)
        self._by_owner[key[0]] -= 1
        if self._by_owner[key[0]] <= 0:
            del self._by_owner[key[0]]
        return entry

    def _bury(self, key: RecordKey, now: float) -> None:
        self._tombstones[key] = (self._remove(key).record.seq, now + self.tombstone_s)
        if len(self._tombstones) > self.max_records:  # the oldest tombstones go first
            oldest = min(self._tombstones, key=lambda k: self._tombstones[k][1])
            del self._tombstones[oldest]

    def expire(self, now: float) -> list[RecordKey]:
        """Remove records whose time is up (leaving tombstones); returns their keys."""
        gone = [k for k, e in self._entries.items() if e.expires_at <= now]
        for key in gone:
            self._bury(key, now)
        for key in [k for k, (_, until) in self._tombstones.items() if until <= now]:
            del self._tombstones[key]
        return gone

    def evict(self, owner: bytes, up_to_seq: int, now: float) -> list[RecordKey]:
        """Drop every record of ``owner`` with ``seq <= up_to_seq`` (it was found dead),
        leaving tombstones so the same records are not accepted again."""
        gone = [k for k, e in self._entries.items() if k[0] == owner and e.record.seq <= up_to_seq]
        for key in gone:
            self._bury(key, now)
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
