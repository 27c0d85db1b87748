"""Ownership gossip on a simulated network with a manual clock (no sockets, no sleeps)."""

from __future__ import annotations

import itertools
import random
from collections import deque

from spheroid_p2p.core.actions import Dial, Probe, Send
from spheroid_p2p.core.gossip import GossipService
from spheroid_p2p.core.gossip_params import GossipParams, LocalClaim
from spheroid_p2p.core.ownership import OwnershipTable
from spheroid_p2p.wire.codec import decode_frame, encode_frame
from spheroid_p2p.wire.framing import join_frame
from spheroid_p2p.wire.gossip import GossipRecords, RelayedRecord
from spheroid_p2p.wire.message import Message
from spheroid_p2p.wire.records import OwnershipRecord, SignedRecord
from spheroid_p2p.wire.signing import KeyPair, PeerId

PARAMS = GossipParams(interval_s=1.0, fanout=2, record_ttl_s=9.0, target_peers=3)


class SimNet:
    """N gossip services joined by instant, lossless links; every message crosses the codec."""

    def __init__(self, n: int, seed: int = 0, params: GossipParams = PARAMS) -> None:
        self.rng = random.Random(seed)
        self.keys = [KeyPair.from_seed(bytes([i + 1]) * 32) for i in range(n)]
        self.nodes = {
            k.peer_id: GossipService(
                k, params, random.Random(seed * 100 + i), first_seq=1000, addrs=(f"10.0.0.{i}:1",)
            )
            for i, k in enumerate(self.keys)
        }
        self.queue: deque[tuple[PeerId, PeerId, Message]] = deque()
        self.links: set[frozenset[PeerId]] = set()
        self.now = 0.0
        self.dials: list[Dial] = []
        self.probes: list[tuple[PeerId, PeerId, bool]] = []
        self.messages = 0

    def connect(self, a: PeerId, b: PeerId) -> None:
        self.links.add(frozenset((a, b)))
        self.apply(a, self.nodes[a].peer_connected(b, self.now))
        self.apply(b, self.nodes[b].peer_connected(a, self.now))

    def disconnect_all(self, peer: PeerId) -> None:
        for link in [link for link in self.links if peer in link]:
            self.links.discard(link)
            (other,) = link - {peer}
            self.apply(other, self.nodes[other].peer_disconnected(peer, self.now))

    def apply(self, src: PeerId, actions: list) -> None:  # type: ignore[type-arg]
        for action in actions:
            if isinstance(action, Send):
                if frozenset((src, action.peer)) in self.links:
                    frame = join_frame(
                        encode_frame(self.nodes[src].key, action.message, seq=1, timestamp_ms=0)
                    )
                    self.queue.append((src, action.peer, decode_frame(frame[4:]).message))
            elif isinstance(action, Probe):
                alive = action.peer in self.nodes
                self.probes.append((src, action.peer, alive))
                self.apply(src, self.nodes[src].probe_result(action.peer, alive, self.now))
            else:
                self.dials.append(action)

    def run(self, until: float, step: float = 0.05) -> None:
        while self.now < until:
            self.deliver()
            self.now = round(self.now + step, 6)
            for peer, node in self.nodes.items():
                if node.next_deadline(self.now) <= self.now:
                    self.apply(peer, node.handle_timer(self.now))
        self.deliver()

    def deliver(self) -> None:
        for _ in range(100_000):
            if not self.queue:
                return
            src, dst, message = self.queue.popleft()
            self.messages += 1
            if frozenset((src, dst)) in self.links:
                self.apply(dst, self.nodes[dst].handle_message(src, message, self.now))

    def views(self) -> set[tuple[tuple[bytes, int, int], ...]]:
        return {
            tuple(
                (e.owner, e.block, e.seq)
                for e in n.table.digest()
                if not n.table.get((e.owner, e.block)).record.departed
            )  # type: ignore[union-attr]
            for p, n in self.nodes.items()
        }


def _ring(net: SimNet) -> None:
    ids = list(net.nodes)
    for a, b in zip(ids, ids[1:] + ids[:1], strict=True):
        net.connect(a, b)


def test_a_sparse_swarm_converges_to_one_view() -> None:
    """Eight nodes on a ring, each publishing a block, all end with the same 8 records."""
    net = SimNet(8)
    _ring(net)
    for i, (peer, node) in enumerate(net.nodes.items()):
        net.apply(peer, node.publish(LocalClaim(block=i % 4, role="serve"), net.now))
    net.run(until=2.5)  # before the first refresh (at ttl/3 = 3 s) changes any seq
    views = net.views()
    assert len(views) == 1 and len(next(iter(views))) == 8


def test_a_change_spreads_by_push_within_a_few_flushes() -> None:
    """With anti-entropy far away (60 s), rumour push alone reaches most of a full mesh of 16
    within a few push delays (push with fanout f misses about e^-f of the nodes; anti-entropy
    repairs those), and each node sends at most fanout messages for it."""
    params = GossipParams(
        interval_s=60.0, fanout=3, record_ttl_s=300.0, push_delay_s=0.1, target_peers=32
    )
    net = SimNet(16, params=params)
    ids = list(net.nodes)
    for a, b in itertools.combinations(ids, 2):
        net.connect(a, b)
    net.run(until=0.5)
    first = ids[0]
    net.apply(
        first, net.nodes[first].publish(LocalClaim(block=0, role="serve", version=7), net.now)
    )
    sent_before = sum(n.stats.by_type.get("GossipRecords", 0) for n in net.nodes.values())
    net.run(until=net.now + 1.0)
    holders = [n for n in net.nodes.values() if any(r.version == 7 for r in n.owners_of(0))]
    assert len(holders) >= 12
    sent = sum(n.stats.by_type.get("GossipRecords", 0) for n in net.nodes.values()) - sent_before
    assert sent <= 16 * params.fanout


def test_silent_nodes_records_expire_everywhere_within_the_ttl() -> None:
    """A node that stops refreshing (killed) vanishes from every view within one ttl."""
    net = SimNet(5)
    _ring(net)
    for i, (peer, node) in enumerate(net.nodes.items()):
        net.apply(peer, node.publish(LocalClaim(block=i, role="serve"), net.now))
    net.run(until=2.0)
    dead = list(net.nodes)[2]
    net.disconnect_all(dead)
    del net.nodes[dead]
    net.run(until=2.0 + PARAMS.record_ttl_s + 0.2)
    for node in net.nodes.values():
        assert all(e.record.owner != dead for e in node.table.live())
        assert len(node.table.live()) == 4  # the living keep refreshing


def test_departure_replaces_the_record_at_once() -> None:
    """A clean shutdown's signed departure removes the owner from every live view."""
    net = SimNet(4)
    _ring(net)
    for i, (peer, node) in enumerate(net.nodes.items()):
        net.apply(peer, node.publish(LocalClaim(block=i, role="train"), net.now))
    net.run(until=1.5)
    leaver = next(iter(net.nodes))
    net.apply(leaver, net.nodes[leaver].depart(net.now))
    net.run(until=net.now + 1.5)
    for peer, node in net.nodes.items():
        if peer != leaver:
            assert all(e.record.owner != leaver for e in node.table.live())


def test_nodes_learn_peers_from_gossip_and_ask_to_dial_them() -> None:
    """A node connected to one peer learns the others' addresses and emits Dial actions."""
    net = SimNet(4)
    ids = list(net.nodes)
    for a, b in itertools.pairwise(ids):
        net.connect(a, b)
    for i, (peer, node) in enumerate(net.nodes.items()):
        net.apply(peer, node.publish(LocalClaim(block=i, role="serve"), net.now))
    net.run(until=2.0)
    dialled = {(d.peer, d.addrs) for d in net.dials}
    assert (ids[3], ("10.0.0.3:1",)) in dialled


def _signed(key: KeyPair, seq: int, ttl_ms: int = 5000, version: int = 0) -> SignedRecord:
    return OwnershipRecord(
        owner_key=key.public_key,
        block=1,
        role="serve",
        version=version,
        content_hash=b"",
        addrs=(),
        load=0.0,
        seq=seq,
        ttl_ms=ttl_ms,
    ).sign(key)


def test_bad_records_are_dropped_and_counted_never_stored() -> None:
    """Bad signature, stale seq and a ttl beyond the limit are dropped with a reason."""
    owner = KeyPair.from_seed(bytes([9]) * 32)
    node = GossipService(KeyPair.from_seed(bytes([8]) * 32), PARAMS, random.Random(0), first_seq=1)
    sender = owner.peer_id
    node.peer_connected(sender, 0.0)
    good = _signed(owner, seq=10)
    forged = RelayedRecord(good.data, bytes(64), 5000)
    node.handle_message(sender, GossipRecords(records=(forged,)), 0.0)
    assert node.table.dropped["bad_signature"] == 1 and len(node.table) == 0
    node.handle_message(
        sender, GossipRecords(records=(RelayedRecord(good.data, good.signature, 5000),)), 0.0
    )
    old = _signed(owner, seq=9)
    node.handle_message(
        sender, GossipRecords(records=(RelayedRecord(old.data, old.signature, 5000),)), 0.0
    )
    assert node.table.dropped["stale"] == 1 and node.owners_of(1)[0].seq == 10
    too_long = _signed(owner, seq=11, ttl_ms=5000)
    raw = too_long.data.replace(
        b"\xcd" + (5000).to_bytes(2, "big"), b"\xce" + (10**6).to_bytes(4, "big")
    )  # ttl 1000 s
    resigned = RelayedRecord(raw, owner.sign(b"spheroid/v1/record", raw), 5000)
    node.handle_message(sender, GossipRecords(records=(resigned,)), 0.0)
    assert node.owners_of(1)[0].seq == 10  # the over-long record was not stored
    assert node.table.dropped["stale_record"] == 1


def test_merge_is_idempotent_commutative_and_relays_cannot_extend_life() -> None:
    """Any order of the same records gives the same table; remaining time only shrinks."""
    owner = KeyPair.from_seed(bytes([5]) * 32)
    records = [_signed(owner, seq=s, version=s) for s in (3, 1, 2, 2)]
    hashes = set()
    for order in itertools.permutations(records):
        table = OwnershipTable()
        for r in order:
            table.offer(r, 5000, now=0.0)
        hashes.add(table.table_hash())
    assert len(hashes) == 1
    table = OwnershipTable()
    table.offer(records[0], remaining_ms=10**9, now=0.0)  # a relay claiming too much time
    assert table.get(records[0].record.key).expires_at == 5.0  # type: ignore[union-attr]
    table.expire(now=5.0)
    assert not table.offer(records[0], 5000, now=5.1)  # tombstone: does not come back


def test_a_killed_neighbour_is_evicted_at_once_and_suspicion_spreads() -> None:
    """Records live 300 s, yet a dead peer vanishes everywhere within a second: its
    neighbours probe it when the connection drops, evict it, and tell others, who probe too."""
    params = GossipParams(interval_s=1.0, fanout=2, record_ttl_s=300.0, target_peers=3)
    net = SimNet(6, params=params)
    _ring(net)
    for i, (peer, node) in enumerate(net.nodes.items()):
        net.apply(peer, node.publish(LocalClaim(block=i, role="serve"), net.now))
    net.run(until=2.0)
    dead = list(net.nodes)[2]
    del net.nodes[dead]
    net.disconnect_all(dead)
    net.run(until=3.0)
    for node in net.nodes.values():
        assert all(e.record.owner != dead for e in node.table.live())
    assert any(probed == dead and not alive for _, probed, alive in net.probes)


def test_a_false_suspicion_evicts_nothing_and_the_suspect_refreshes() -> None:
    """A suspect that answers its probe keeps its records; if told it is suspected, it
    re-signs its records so any tombstone elsewhere is overridden."""
    from spheroid_p2p.wire.gossip import GossipSuspect

    net = SimNet(3)
    _ring(net)
    for i, (peer, node) in enumerate(net.nodes.items()):
        net.apply(peer, node.publish(LocalClaim(block=i, role="serve"), net.now))
    net.run(until=1.0)
    a, b, _ = list(net.nodes)
    seq_before = max(r.seq for r in net.nodes[b].owners_of(1))
    actions = net.nodes[b].handle_message(a, GossipSuspect(peer=b.digest, seq=seq_before), 1.0)
    net.apply(b, actions)
    net.run(until=2.0)
    assert max(r.seq for r in net.nodes[a].owners_of(1)) > seq_before
    net.apply(a, net.nodes[a].peer_disconnected(b, net.now))  # the probe finds b alive
    assert net.probes[-1] == (a, b, True)
    assert net.nodes[a].owners_of(1)
