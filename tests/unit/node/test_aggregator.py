"""The shard aggregator against in-memory peers and a manual clock: deltas in through the
real codec and streams, judged, the shard closed by the barrier or its deadline, the update
streamed to the other replicas and handed to our own round."""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
from dataclasses import dataclass, field

import pytest
import torch

from spheroid_p2p.core.plan import RoundPlan
from spheroid_p2p.core.rounds import RoundParams
from spheroid_p2p.errors import ErrorCode
from spheroid_p2p.ml.averaging import FlatLayout, SliceEncoder, decode_slice, tensors_norm
from spheroid_p2p.node.aggregator import Aggregators, ShardResult
from spheroid_p2p.node.installer import Base
from spheroid_p2p.node.shards import from_payload, to_payload
from spheroid_p2p.node.tensor_bridge import raw_of
from spheroid_p2p.node.transfer import InStream, Payload
from spheroid_p2p.node.transfer.codecs import Codecs
from spheroid_p2p.node.transfer.streams import Streams
from spheroid_p2p.wire.chunks import TensorChunk
from spheroid_p2p.wire.deltas import DeltaAck, ShardDelta, ShardUpdate
from spheroid_p2p.wire.manifests import Manifest, tensor_entry, weights_hash
from spheroid_p2p.wire.message import Message
from spheroid_p2p.wire.signing import KeyPair, PeerId
from tests.support.fakes import FakeSwarm, ManualClock, MemoryLink, MemoryNet

N = 3000
DEADLINE = 1_000_000.0


def _base(key: KeyPair, flat: torch.Tensor) -> Base:
    tensors = {"w": flat.clone()}
    entries = (tensor_entry("w", raw_of(tensors["w"])),)
    signed = Manifest(
        signer_key=key.public_key,
        block=0,
        version=4,
        parent=bytes(32),
        config_hash="",
        kind=0,
        encoding=0,
        result=weights_hash(entries),
        tensors=entries,
        created_ms=0,
        next_deadline_ms=int(DEADLINE * 1000),
    ).sign(key)
    return Base(signed, key.peer_id, tensors, flat.clone(), tensors_norm(flat))


@dataclass
class FakeInstaller:
    """What the aggregator asks of a replica's installer."""

    base: Base
    ranks: tuple[PeerId, ...]
    live_set: set[PeerId]
    block: int = 0
    previous: Base | None = None
    grace: float = 10.0
    layout: FlatLayout = field(default_factory=lambda: FlatLayout({"w": torch.zeros(N)}))

    def plan(self) -> RoundPlan:
        return RoundPlan(0, self.base.version + 1, self.ranks, 1, self.base.deadline, self.grace)

    def live(self) -> set[PeerId]:
        return set(self.live_set)


class Replica:
    """One in-memory replica: its link, streams, and (for the aggregator) its Aggregators."""

    def __init__(self, net: MemoryNet, seed: int, worker: concurrent.futures.Executor) -> None:
        self.link: MemoryLink = net.endpoint(seed)
        self.streams = Streams(self.link, Codecs("none"), worker, f"r{seed}")
        self.received: list[InStream] = []
        self.acks: list[DeltaAck] = []
        self.aggregators: Aggregators | None = None
        self.link.handler = self.handle

    def handle(self, peer: PeerId, message: Message) -> None:
        if isinstance(message, TensorChunk):
            self.streams.chunk(peer, message)
        elif isinstance(message, DeltaAck):
            self.acks.append(message)
            self.streams.acked(peer, message)
        elif isinstance(message, ShardDelta) and self.aggregators is not None:
            self.aggregators.admit(peer, message)
        elif isinstance(message, ShardUpdate):
            self.streams.accept(
                peer, message, len(to_payload(_encode(torch.zeros(N)))), self.received.append
            )


def _encode(values: torch.Tensor) -> object:
    return SliceEncoder("bfloat16", error_feedback=False).encode(values.clone(), 0, N)


def _header(replica: Replica, base: Base, steps: int = 10) -> ShardDelta:
    return ShardDelta(
        stream_id=replica.streams.new_id(),
        block=0,
        round=base.version + 1,
        base=base.weights,
        base_version=base.version,
        shard=0,
        shards=1,
        steps=steps,
        loss=0.5,
        encoding=2,
    )


async def _setup(clock: ManualClock) -> tuple[Replica, Replica, Replica, list[ShardResult], Base]:
    net = MemoryNet()
    worker = concurrent.futures.ThreadPoolExecutor(1)
    a, b, c = (Replica(net, s, worker) for s in (1, 2, 3))
    g = torch.Generator().manual_seed(0)
    base = _base(a.link.key, torch.randn(N, generator=g))
    peers = (a.link.me, b.link.me, c.link.me)
    installer = FakeInstaller(base, peers, set(peers))
    delivered: list[ShardResult] = []
    a.aggregators = Aggregators(
        FakeSwarm(a.link),
        installer,  # type: ignore[arg-type]
        a.streams,
        encoding="bfloat16",
        params=RoundParams(grace_s=10.0),
        deliver=delivered.append,
        spawn=lambda work, what: bool(asyncio.get_running_loop().create_task(work)),
        tag="a",
        clock=clock,
    )
    return a, b, c, delivered, base


async def _until(predicate, timeout_s: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    """Let the loop run (stream chunks are placed on a worker thread) until ``predicate``."""
    async with asyncio.timeout(timeout_s):
        while not predicate():  # noqa: ASYNC110 - the worker thread sets no event we own
            await asyncio.sleep(0.005)


def _deltas() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [1e-3 * torch.randn(N, generator=g) for _ in range(3)]


@pytest.mark.asyncio
async def test_the_barrier_closes_the_shard_and_everyone_gets_the_mean() -> None:
    clock = ManualClock(DEADLINE - 30)
    a, b, c, delivered, base = await _setup(clock)
    da, db, dc = _deltas()
    assert a.aggregators is not None
    assert a.aggregators.offer_own(5, 0, 1, da, 10) == 0
    acks = await asyncio.gather(
        b.streams.send_delta(a.link.me, _header(b, base), Payload.of(to_payload(_encode(db))), 5),
        c.streams.send_delta(a.link.me, _header(c, base), Payload.of(to_payload(_encode(dc))), 5),
    )
    assert [x.code for x in acks] == [0, 0]
    await _until(lambda: delivered and len(b.received) == 1 and len(c.received) == 1)
    (mine,) = delivered
    sent_b = [decode_slice(_encode(d)) for d in (db, dc)]  # what the wire carried
    want = (da + sent_b[0] + sent_b[1]) / 3
    assert torch.allclose(mine.update, want, atol=2e-5)
    assert len(mine.report.contributors) == 3 and not mine.report.late
    # b and c got exactly the bytes whose decoding a handed itself
    got, problem = from_payload(b.received[0].payload, N, "bfloat16")
    assert problem is None and torch.equal(decode_slice(got), mine.update)
    assert bytes(b.received[0].payload) == bytes(c.received[0].payload)
    assert a.aggregators.outcomes[0].early  # the barrier, not the deadline


@pytest.mark.asyncio
async def test_a_silent_replica_is_late_when_the_deadline_closes_the_shard() -> None:
    clock = ManualClock(DEADLINE - 0.05)  # the deadline is 50 ms away (a real timer)
    a, b, c, delivered, base = await _setup(clock)
    da, db, _ = _deltas()
    assert a.aggregators is not None
    a.aggregators.offer_own(5, 0, 1, da, 10)
    ack = await b.streams.send_delta(
        a.link.me, _header(b, base), Payload.of(to_payload(_encode(db))), 5
    )
    assert ack.code == 0 and not delivered
    clock.now = DEADLINE
    await _until(lambda: bool(delivered and c.received))
    outcome = a.aggregators.outcomes[0]
    assert not outcome.early and outcome.late == [c.link.me]
    assert len(c.received) == 1  # the silent replica still gets the update


@pytest.mark.asyncio
async def test_a_nan_delta_is_refused_and_left_out_of_the_mean() -> None:
    clock = ManualClock(DEADLINE - 30)
    a, b, c, delivered, base = await _setup(clock)
    da, db, _ = _deltas()
    assert a.aggregators is not None
    a.aggregators.offer_own(5, 0, 1, da, 10)
    nan = to_payload(_encode(torch.full((N,), float("nan"))))
    bad, good = await asyncio.gather(
        c.streams.send_delta(a.link.me, _header(c, base), Payload.of(nan), 5),
        b.streams.send_delta(a.link.me, _header(b, base), Payload.of(to_payload(_encode(db))), 5),
    )
    assert bad.code == ErrorCode.DELTA_REJECTED and "NaN" in bad.reason
    assert good.code == 0
    await _until(lambda: bool(delivered))  # everyone delivered or was refused: the barrier
    (mine,) = delivered
    assert torch.allclose(mine.update, (da + decode_slice(_encode(db))) / 2, atol=2e-5)
    assert [r[0] for r in mine.report.rejected] == [c.link.me.digest]


@pytest.mark.asyncio
async def test_a_rank_that_takes_over_answers_not_ready_before_its_turn() -> None:
    clock = ManualClock(DEADLINE - 30)
    a, b, c, _, base = await _setup(clock)
    assert a.aggregators is not None
    installer = a.aggregators.installer
    installer.ranks = (c.link.me, a.link.me, b.link.me)  # type: ignore[attr-defined]
    _, db, _ = _deltas()
    early = await b.streams.send_delta(
        a.link.me, _header(b, base), Payload.of(to_payload(_encode(db))), 5
    )
    assert early.code == ErrorCode.NOT_READY and "turn" in early.reason
    clock.now = DEADLINE + 5.0  # rank 1's turn opens at D + G/2
    ack = await b.streams.send_delta(
        a.link.me, _header(b, base), Payload.of(to_payload(_encode(db))), 5
    )
    assert ack.code == 0


@pytest.mark.asyncio
async def test_a_delta_for_another_shard_count_is_refused_at_its_header() -> None:
    clock = ManualClock(DEADLINE - 30)
    a, b, _, _, base = await _setup(clock)
    wrong = dataclasses.replace(_header(b, base), shard=3, shards=4)
    ack = await b.streams.send_delta(a.link.me, wrong, Payload.of(bytes(2 * N)), 5)
    assert ack.code == ErrorCode.DELTA_REJECTED and "shards" in ack.reason
    assert not a.streams.open  # nothing allocated for it
