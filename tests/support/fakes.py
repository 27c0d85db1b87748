"""Fakes for testing the node's services without sockets: links joined in memory (every
message crosses the real codec, payloads included), a swarm view, a manual clock."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

from spheroid_p2p.core.gossip_params import LocalClaim
from spheroid_p2p.errors import ErrorCode
from spheroid_p2p.wire.codec import decode_frame, encode_frame
from spheroid_p2p.wire.framing import join_frame
from spheroid_p2p.wire.message import Message
from spheroid_p2p.wire.records import OwnershipRecord
from spheroid_p2p.wire.signing import KeyPair, PeerId

__all__ = ["FakeSwarm", "ManualClock", "MemoryNet", "train_record"]


class ManualClock:
    """A clock the test moves: ``clock()`` is its time."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class MemoryLink:
    """One endpoint's view of the in-memory network: ``send`` encodes a frame with its key,
    decodes it (chunks unverified, as a node's connections do) and hands it to the peer's
    handler on the next loop turn; it records what it sent."""

    def __init__(self, net: MemoryNet, key: KeyPair) -> None:
        self.net = net
        self.key = key
        self.sent: list[tuple[PeerId, Message]] = []
        self.closed: list[tuple[PeerId, ErrorCode]] = []
        self.holds: list[tuple[PeerId, bool]] = []
        self.handler: Callable[[PeerId, Message], object] = lambda peer, message: None
        #: told when a connection of this endpoint closes (as ``PeerManager``'s on_close)
        self.on_lost: Callable[[PeerId, int], object] = lambda peer, code: None
        self._seq = 0

    @property
    def me(self) -> PeerId:
        return self.key.peer_id

    def connected(self) -> list[PeerId]:
        return [p for p in self.net.links if p != self.me and self.net.up(self.me, p)]

    def send(self, peer: PeerId, message: Message) -> bool:
        if not self.net.up(self.me, peer):
            return False
        self._seq += 1
        frame = join_frame(encode_frame(self.key, message, seq=self._seq, timestamp_ms=0))
        received = decode_frame(frame[4:], verify_chunks=False).message
        self.sent.append((peer, message))
        target = self.net.links[peer]
        asyncio.get_running_loop().call_soon(target.handler, self.me, received)
        return True

    async def send_bulk(self, peer: PeerId, message: Message) -> bool:
        await asyncio.sleep(0)  # a bulk write yields, as backpressure would
        return self.send(peer, message)

    def close_peer(self, peer: PeerId, code: ErrorCode, reason: str) -> None:
        if not self.net.up(self.me, peer):
            return
        self.closed.append((peer, code))
        self.net.cut(self.me, peer)
        loop = asyncio.get_running_loop()
        loop.call_soon(self.on_lost, peer, int(code))
        loop.call_soon(self.net.links[peer].on_lost, self.me, int(code))

    def keep_hot(self, peer: PeerId, seconds: float) -> None:
        pass

    def hold(self, peer: PeerId, held: bool) -> None:
        """Recorded only: in memory, a held peer's frames are already here."""
        self.holds.append((peer, held))

    def of(self, peer: PeerId, kind: type[Message]) -> list[Message]:
        """What this endpoint sent ``peer`` of one message type."""
        return [m for p, m in self.sent if p == peer and isinstance(m, kind)]


class MemoryNet:
    """Endpoints joined pairwise by instant, lossless links (until ``cut``)."""

    def __init__(self) -> None:
        self.links: dict[PeerId, MemoryLink] = {}
        self.down: set[frozenset[PeerId]] = set()

    def endpoint(self, seed: int) -> MemoryLink:
        link = MemoryLink(self, KeyPair.from_seed(bytes([seed]) * 32))
        self.links[link.me] = link
        return link

    def up(self, a: PeerId, b: PeerId) -> bool:
        return b in self.links and frozenset((a, b)) not in self.down

    def cut(self, a: PeerId, b: PeerId) -> None:
        self.down.add(frozenset((a, b)))


def train_record(peer: KeyPair, block: int = 0, config_hash: str = "") -> OwnershipRecord:
    return OwnershipRecord(
        owner_key=peer.public_key,
        block=block,
        role="train",
        version=0,
        content_hash=b"",
        addrs=("127.0.0.1:1",),
        load=0.0,
        seq=1,
        ttl_ms=60_000,
        config_hash=config_hash,
    )


@dataclass
class FakeSwarm:
    """A ``SwarmView`` over a fixed list of records."""

    link: MemoryLink
    records: list[OwnershipRecord] = field(default_factory=list)
    announced: list[LocalClaim] = field(default_factory=list)
    stopping: bool = False
    allow_peers: frozenset[PeerId] | None = None

    @property
    def me(self) -> PeerId:
        return self.link.me

    def owners(self, block: int) -> list[OwnershipRecord]:
        return [r for r in self.records if r.block == block]

    async def connect(self, peers: list[PeerId]) -> list[PeerId]:
        return [p for p in peers if p != self.me and self.link.net.up(self.me, p)]

    def announce(self, claim: LocalClaim) -> None:
        self.announced.append(claim)

    async def changed(self, timeout_s: float) -> None:
        await asyncio.sleep(0)

    async def dial_learned(self, addr: str, expected: PeerId) -> PeerId:
        return expected
