"""Ownership gossip as a sans-I/O service (spec: ``protocol/07-ownership-gossip.md``).

Theory of operation
-------------------
Two mechanisms spread records, both over the node's existing connections:

* **Rumour push** (§7.5.1): a record that changes the table (our own publication, or a newer
  record from a peer) is pushed at once to ``fanout`` random connected peers other than the
  one it came from. Every peer does the same on first sight, so a change reaches all N peers
  in O(log N) hops; peers that already hold it drop it as a duplicate.
* **Anti-entropy pull** (§7.5.2): every ``interval_s`` we send a ``GOSSIP_SUMMARY`` (table hash
  and size) to one random peer. Equal hashes end the exchange (one small message); otherwise
  the peer answers with its digest, and each side sends the records the other lacks. This
  repairs anything the push missed (a peer that just joined, a dropped connection).

Our own records are refreshed (new ``seq``, re-signed) after ``refresh_fraction`` of their
ttl, so they never expire while we live; a clean shutdown publishes signed departures. The
service also learns peers from records and asks the glue to dial them while we have fewer
than ``target_peers`` connections.

Inputs: ``peer_connected``, ``peer_disconnected``, ``handle_message``, ``handle_timer``, each
with ``now`` (monotonic seconds). Outputs: lists of :mod:`actions`. Randomness comes from the
injected ``random.Random``. Nothing here reads a clock or touches a socket.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field

from spheroid_p2p.core.actions import Action, Dial, Probe, Send
from spheroid_p2p.core.gossip_params import GossipParams, LocalClaim
from spheroid_p2p.core.ownership import OwnershipTable, RecordKey
from spheroid_p2p.errors import RemoteProtocolError
from spheroid_p2p.params import (
    MAX_RECORDS_PER_ANSWER,
)
from spheroid_p2p.wire.gossip import (
    GossipDigest,
    GossipRecords,
    GossipRequest,
    GossipSummary,
    GossipSuspect,
    RelayedRecord,
    record_batches,
)
from spheroid_p2p.wire.message import Message
from spheroid_p2p.wire.records import OwnershipRecord, SignedRecord
from spheroid_p2p.wire.signing import KeyPair, PeerId

__all__ = ["GossipParams", "GossipService", "LocalClaim"]

log = logging.getLogger(__name__)


@dataclass
class _Own:
    claim: LocalClaim
    signed_at: float


@dataclass
class GossipStats:
    """Counters for benchmarks and the status command."""

    messages_out: int = 0
    records_out: int = 0
    accepted: int = 0
    duplicates: int = 0
    by_type: dict[str, int] = field(default_factory=dict)


#: Seconds between two scans of the table for peers to dial (each walks every record).
DIAL_SCAN_S = 0.25


class GossipService:
    """One node's side of ownership gossip."""

    def __init__(
        self,
        key: KeyPair,
        params: GossipParams,
        rng: random.Random,
        *,
        first_seq: int,
        addrs: tuple[str, ...] = (),
    ) -> None:
        self.key = key
        self.params = params
        self.rng = rng
        self.table = OwnershipTable(params.tombstone_s)
        self.addrs = addrs
        self.stats = GossipStats()
        self._seq = first_seq
        self._own: dict[int, _Own] = {}
        self._peers: set[PeerId] = set()
        self._next_round: float | None = None
        self._dial_after: dict[PeerId, float] = {}
        self._next_dials = 0.0
        self._departed = False
        self._outbox: list[tuple[SignedRecord, PeerId | None]] = []
        self._probing: set[PeerId] = set()
        self._flush_at: float | None = None

    # -- local claims -----------------------------------------------------------------------
    def publish(self, claim: LocalClaim, now: float) -> list[Action]:
        """Announce (or update) our record for ``claim.block`` and push it."""
        self._own[claim.block] = _Own(claim, now)
        return self._push([self._sign(claim, departed=False)], now, exclude=None)

    def depart(self, now: float) -> list[Action]:
        """Clean shutdown: signed departures for every claim, pushed to every peer."""
        self._departed = True
        signed = [self._sign(own.claim, departed=True) for own in self._own.values()]
        self._own.clear()
        for record in signed:
            self.table.offer(record, record.record.ttl_ms, now)
        relayed = [RelayedRecord(s.data, s.signature, s.record.ttl_ms) for s in signed]
        return (
            [
                self._send(peer, GossipRecords(records=tuple(relayed)))
                for peer in sorted(self._peers, key=lambda p: p.digest)
            ]
            if relayed
            else []
        )

    def _sign(self, claim: LocalClaim, *, departed: bool) -> SignedRecord:
        self._seq += 1
        log.debug(
            "[%s] published record owner=%s block=%d seq=%d",
            self.key.peer_id.short(),
            self.key.peer_id.short(),
            claim.block,
            self._seq,
        )
        ttl = self.params.departure_ttl_s if departed else self.params.record_ttl_s
        return OwnershipRecord(
            owner_key=self.key.public_key,
            block=claim.block,
            role=claim.role,
            version=claim.version,
            content_hash=claim.content_hash,
            addrs=self.addrs,
            load=claim.load,
            seq=self._seq,
            ttl_ms=int(ttl * 1000),
            departed=departed,
            n_blocks=claim.n_blocks,
            config_hash=claim.config_hash,
            context=claim.context,
        ).sign(self.key)

    # -- connections ------------------------------------------------------------------------
    def peer_connected(self, peer: PeerId, now: float) -> list[Action]:
        """A connection completed its handshake: sync with the peer at once."""
        self._peers.add(peer)
        self._dial_after.pop(peer, None)
        return [self._send(peer, GossipDigest(entries=self.table.digest()))]

    def peer_disconnected(
        self, peer: PeerId, now: float, *, clean: bool = False, overloaded: bool = False
    ) -> list[Action]:
        """A connection ended. Unless the peer closed it cleanly (it is alive), probe it, since
        it may have died (§7.6)."""
        self._peers.discard(peer)
        backoff = self.params.overloaded_backoff_s if overloaded else self.params.dial_backoff_s
        self._dial_after[peer] = now + backoff
        return [] if clean else self._probe(peer)

    def pick_eviction(self) -> PeerId | None:
        """A random gossip peer to drop when a newcomer needs room (§7.7)."""
        peers = sorted(self._peers, key=lambda p: p.digest)
        return self.rng.choice(peers) if peers else None

    def has_room(self) -> bool:
        """Whether another gossip connection is welcome (§7.7)."""
        return len(self._peers) < self.params.max_peers

    def _owned(self, peer: PeerId) -> list[OwnershipRecord]:
        return [e.record for e in self.table.live() if e.record.owner == peer]

    def _probe(self, peer: PeerId) -> list[Action]:
        records = self._owned(peer)
        if not records or peer in self._probing or self._departed:
            return []
        self._probing.add(peer)
        return [Probe(peer, records[0].addrs)]

    def probe_result(self, peer: PeerId, alive: bool, now: float) -> list[Action]:
        """The glue's answer to a :class:`Probe`. A dead peer's records are evicted here and
        a suspicion is pushed, so the others check for themselves."""
        self._probing.discard(peer)
        if alive:
            return []
        records = self._owned(peer)
        if not records:
            return []
        top = max(r.seq for r in records)
        self.table.evict(peer.digest, top, now)
        self.table.dropped["dead_peer"] += len(records)
        log.debug(
            "[%s] %s is unreachable: evicted %d records",
            self.key.peer_id.short(),
            peer.short(),
            len(records),
        )
        targets = sorted(self._peers, key=lambda p: p.digest)
        chosen = self.rng.sample(targets, min(self.params.fanout, len(targets)))
        return [self._send(t, GossipSuspect(peer=peer.digest, seq=top)) for t in chosen]

    @property
    def peers(self) -> frozenset[PeerId]:
        return frozenset(self._peers)

    # -- input ------------------------------------------------------------------------------
    def handle_message(self, peer: PeerId, message: Message, now: float) -> list[Action]:
        """React to a gossip message from a connected peer."""
        if isinstance(message, GossipSummary):
            if message.table_hash == self.table.table_hash():
                return []
            return [self._send(peer, GossipDigest(entries=self.table.digest()))]
        if isinstance(message, GossipDigest):
            return self._answer_digest(peer, message, now)
        if isinstance(message, GossipRequest):
            keys = [k for k in message.keys if self.table.get(k) is not None]
            return self._records_to(peer, keys[:MAX_RECORDS_PER_ANSWER], now)
        if isinstance(message, GossipRecords):
            return self._receive_records(peer, message, now)
        if isinstance(message, GossipSuspect):
            return self._on_suspect(message, now)
        return []

    def _on_suspect(self, message: GossipSuspect, now: float) -> list[Action]:
        suspect = PeerId(message.peer)
        if suspect == self.key.peer_id:
            # Someone thinks we are dead: re-sign our records (a higher seq beats tombstones).
            for own in self._own.values():
                own.signed_at = now
            return self._push(
                [self._sign(o.claim, departed=False) for o in self._own.values()], now, exclude=None
            )
        held = [r for r in self._owned(suspect) if r.seq <= message.seq]
        if not held or suspect in self._peers:
            return []  # nothing to drop, or we are connected to it right now
        return self._probe(suspect)

    def _answer_digest(self, peer: PeerId, digest: GossipDigest, now: float) -> list[Action]:
        theirs = {(e.owner, e.block): e.seq for e in digest.entries}
        send = [
            e.record.key
            for e in self.table.entries()
            if theirs.get(e.record.key, -1) < e.record.seq
        ]
        want = [key for key, seq in theirs.items() if not self.table.knows(key[0], key[1], seq)]
        # at most MAX_RECORDS_PER_ANSWER per answer (§7.5.2): anti-entropy converges over
        # rounds, and one small digest never makes us send the whole table
        actions = self._records_to(peer, send[:MAX_RECORDS_PER_ANSWER], now)
        if want:
            actions.append(self._send(peer, GossipRequest(keys=tuple(want[:4096]))))
        return actions

    def _records_to(self, peer: PeerId, keys: list[RecordKey], now: float) -> list[Action]:
        relayed = []
        for key in keys:
            entry = self.table.get(key)
            if entry is not None:
                relayed.append(
                    RelayedRecord(
                        entry.signed.data, entry.signed.signature, self.table.remaining_ms(key, now)
                    )
                )
        batches = record_batches(relayed)
        return [self._send(peer, GossipRecords(records=batch)) for batch in batches]

    def _receive_records(self, peer: PeerId, message: GossipRecords, now: float) -> list[Action]:
        fresh: list[SignedRecord] = []
        for relayed in message.records:
            try:
                signed = SignedRecord.decode(relayed.data, relayed.signature)
            except RemoteProtocolError as exc:
                self.table.dropped[exc.code.name.lower()] += 1
                continue
            if signed.record.owner == self.key.peer_id:
                continue  # our own record coming back: we are its only author
            if self.table.offer(signed, relayed.remaining_ms, now, source=peer.digest):
                self.stats.accepted += 1
                fresh.append(signed)
                log.debug(
                    "[%s] accepted record owner=%s block=%d seq=%d from=%s",
                    self.key.peer_id.short(),
                    signed.record.owner.short(),
                    signed.record.block,
                    signed.record.seq,
                    peer.short(),
                )
            else:
                self.stats.duplicates += 1
        actions = self._push(fresh, now, exclude=peer, already_offered=True)
        actions += self._dials(now)
        return actions

    # -- timers -----------------------------------------------------------------------------
    def next_deadline(self, now: float) -> float:
        if self._next_round is None:
            self._next_round = now + self.rng.uniform(0, self.params.interval_s)
        candidates = [self._next_round]
        if self._flush_at is not None:
            candidates.append(self._flush_at)
        expiry = self.table.next_expiry()
        if expiry is not None:
            candidates.append(expiry)
        refresh_after = self.params.record_ttl_s * self.params.refresh_fraction
        candidates += [own.signed_at + refresh_after for own in self._own.values()]
        return min(candidates)

    def handle_timer(self, now: float) -> list[Action]:
        """Expire records, refresh ours, flush pushes, run anti-entropy, dial missing peers."""
        self.table.expire(now)
        actions: list[Action] = []
        refresh_after = self.params.record_ttl_s * self.params.refresh_fraction
        due = [own for own in self._own.values() if now >= own.signed_at + refresh_after]
        if due:
            for own in due:
                own.signed_at = now
            actions += self._push(
                [self._sign(o.claim, departed=False) for o in due], now, exclude=None
            )
        if self._flush_at is not None and now >= self._flush_at:
            actions += self._flush(now)
        if self._next_round is None or now >= self._next_round:
            self._next_round = now + self.params.interval_s * self.rng.uniform(0.8, 1.2)
            if self._peers:
                peer = self.rng.choice(sorted(self._peers, key=lambda p: p.digest))
                actions.append(
                    self._send(
                        peer,
                        GossipSummary(table_hash=self.table.table_hash(), count=len(self.table)),
                    )
                )
            actions += self._dials(now)
        return actions

    # -- helpers ----------------------------------------------------------------------------
    def _push(
        self,
        records: list[SignedRecord],
        now: float,
        exclude: PeerId | None,
        already_offered: bool = False,
    ) -> list[Action]:
        """Queue records for the next rumour-push flush (§7.5.1).

        Pushes are batched for ``push_delay_s``: every flush sends everything pending to the
        same ``fanout`` random peers, so the messages a peer sends per second stay bounded
        however many records change, at the cost of up to ``push_delay_s`` per hop.
        """
        if not already_offered:
            for record in records:
                self.table.offer(record, record.record.ttl_ms, now)
        self._outbox.extend((r, exclude) for r in records)
        if records and self._flush_at is None:
            self._flush_at = now + self.params.push_delay_s
        return []

    def _flush(self, now: float) -> list[Action]:
        pending, self._outbox, self._flush_at = self._outbox, [], None
        current = []
        for record, source in pending:
            entry = self.table.get(record.record.key)
            if entry is not None and entry.signed.data == record.data:  # not superseded
                current.append((record, source))
        targets = sorted(self._peers, key=lambda p: p.digest)
        chosen = self.rng.sample(targets, min(self.params.fanout, len(targets)))
        actions: list[Action] = []
        for peer in chosen:
            relayed = tuple(
                RelayedRecord(r.data, r.signature, self.table.remaining_ms(r.record.key, now))
                for r, source in current
                if source != peer
            )
            for batch in record_batches(relayed):
                actions.append(self._send(peer, GossipRecords(records=batch)))
        return actions

    def _dials(self, now: float) -> list[Action]:
        if self._departed or len(self._peers) >= self.params.target_peers:
            return []
        if now < self._next_dials:  # at most every DIAL_SCAN_S: a scan walks the whole table
            return []
        self._next_dials = now + DIAL_SCAN_S
        self._dial_after = {p: t for p, t in self._dial_after.items() if t > now}
        known: dict[PeerId, tuple[str, ...]] = {}
        for entry in self.table.live():
            owner = entry.record.owner
            if owner != self.key.peer_id and owner not in self._peers and entry.record.addrs:
                known.setdefault(owner, entry.record.addrs)
        candidates = [
            p for p in sorted(known, key=lambda p: p.digest) if self._dial_after.get(p, 0.0) <= now
        ]
        room = self.params.target_peers - len(self._peers)
        chosen = self.rng.sample(candidates, min(room, len(candidates)))
        for peer in chosen:
            self._dial_after[peer] = now + self.params.dial_backoff_s
        return [Dial(peer, known[peer]) for peer in chosen]

    def _send(self, peer: PeerId, message: Message) -> Send:
        self.stats.messages_out += 1
        name = type(message).__name__
        self.stats.by_type[name] = self.stats.by_type.get(name, 0) + 1
        if isinstance(message, GossipRecords):
            self.stats.records_out += len(message.records)
        return Send(peer, message)

    def owners_of(self, block: int) -> list[OwnershipRecord]:
        """Live records for ``block`` (ours included)."""
        return [e.record for e in self.table.live() if e.record.block == block]
