"""The transfer services against in-memory peers (every message through the real codec):
a fetch from several holders with a bad one banned, answers failed at once when a peer goes,
shard streams in and out, and a stream chunk outside its layout."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest
import torch

from spheroid_p2p.core.fetch import FetchParams
from spheroid_p2p.errors import ErrorCode
from spheroid_p2p.node.store import VersionStore
from spheroid_p2p.node.transfer import FetchError, InStream, Payload, Transfers
from spheroid_p2p.wire.chunks import TensorChunk
from spheroid_p2p.wire.deltas import ShardDelta
from spheroid_p2p.wire.message import Message
from spheroid_p2p.wire.signing import PeerId
from tests.support.fakes import MemoryLink, MemoryNet


class Peer:
    """An in-memory endpoint with a store and the node's Transfers."""

    def __init__(self, net: MemoryNet, seed: int, tmp: Path) -> None:
        self.link: MemoryLink = net.endpoint(seed)
        self.store = VersionStore(tmp / f"p{seed}")
        self.transfers = Transfers(
            self.link,
            self.store,
            f"p{seed}",
            spawn=lambda work, what: bool(asyncio.get_running_loop().create_task(work)),
            compression="none",
        )
        self.link.handler = self.handle
        self.link.on_lost = self.transfers.lost

    def handle(self, peer: PeerId, message: Message) -> None:
        self.transfers.handle(peer, message)

    def close(self) -> None:
        self.transfers.close()
        self.store.close()


def _tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    return {"a": torch.randn(700_000, generator=g), "b": torch.randn(1000, generator=g)}


@pytest.fixture
def peers(tmp_path: Path):  # type: ignore[no-untyped-def]
    net = MemoryNet()
    made = [Peer(net, s, tmp_path) for s in (1, 2, 3)]
    yield made
    for p in made:
        p.close()


@pytest.mark.asyncio
async def test_a_fetch_from_two_holders_bans_the_one_serving_a_wrong_chunk(peers) -> None:  # type: ignore[no-untyped-def]
    me, good, bad = peers
    stored = good.store.put(
        good.link.key, _tensors(), block=0, version=1, parent=bytes(32), config_hash=""
    )
    bad.store.put(bad.link.key, _tensors(), block=0, version=1, parent=bytes(32), config_hash="")
    original = bad.link.send

    def corrupting(peer: PeerId, message: Message) -> bool:  # flips a byte of every chunk
        if isinstance(message, TensorChunk) and message.payload:
            data = bytearray(message.payload)
            data[0] ^= 0xFF
            message = TensorChunk(
                stream_id=message.stream_id,
                index=message.index,
                raw_len=message.raw_len,
                chunk_hash=message.chunk_hash,
                codec=message.codec,
                payload=bytes(data),
            )
        return original(peer, message)

    bad.link.send = corrupting  # type: ignore[method-assign]
    signed = await me.transfers.get_manifest(good.link.me, 0, stored.manifest.content)
    one_at_a_time = FetchParams(window=1, batch=1)  # each holder gets chunks of its own
    result = await me.transfers.fetch(signed, [bad.link.me, good.link.me], params=one_at_a_time)
    got = result.stored.tensors()
    assert all(torch.equal(got[k], v) for k, v in _tensors().items())
    assert [p for p, _ in me.link.closed] == [bad.link.me]  # HASH_MISMATCH closed it
    assert me.link.closed[0][1] == ErrorCode.HASH_MISMATCH
    assert result.bad_holders and result.bad_holders[0][0] == bad.link.me.short()


@pytest.mark.asyncio
async def test_a_request_fails_at_once_when_its_peer_goes(peers) -> None:  # type: ignore[no-untyped-def]
    me, other, _ = peers
    other.link.handler = lambda peer, message: None  # never answers
    task = asyncio.ensure_future(me.transfers.get_manifest(other.link.me, 0))
    await asyncio.sleep(0.01)
    me.transfers.lost(other.link.me, int(ErrorCode.NO_ERROR))
    with pytest.raises(FetchError, match="disconnected"):
        await asyncio.wait_for(task, 1.0)
    assert not me.transfers.requests


def _delta(sender: Peer, shard: int = 0, shards: int = 2) -> ShardDelta:
    return ShardDelta(
        stream_id=sender.transfers.streams.new_id(),
        block=0,
        round=2,
        base=bytes(32),
        base_version=1,
        shard=shard,
        shards=shards,
        steps=3,
        loss=0.0,
        encoding=0,
    )


@pytest.mark.asyncio
async def test_a_shard_stream_lands_in_a_pooled_buffer_and_is_acked(peers) -> None:  # type: ignore[no-untyped-def]
    a, b, _ = peers
    data = bytes(range(256)) * 9000  # 2.2 MiB: three chunks
    arrived: list[InStream] = []

    def admit(peer: PeerId, header: ShardDelta) -> None:
        assert b.transfers.streams.accept(peer, header, len(data), arrived.append) is None

    b.transfers.on_stream = admit  # type: ignore[assignment]
    sending = asyncio.ensure_future(
        a.transfers.streams.send_delta(b.link.me, _delta(a), Payload.of(data), 5)
    )
    async with asyncio.timeout(5):
        while not arrived:  # noqa: ASYNC110 - chunks are placed on the worker thread
            await asyncio.sleep(0.005)
    (stream,) = arrived
    assert bytes(stream.payload) == data and len(stream.lengths) == 3
    b.transfers.streams.ack(stream.sender, stream.header, 0)  # type: ignore[arg-type]
    b.transfers.streams.release(stream)
    ack = await sending
    assert ack.code == 0
    # the next round's stream of the same size reuses the buffer
    b.transfers.streams.accept(a.link.me, _delta(a), len(data), arrived.append)
    assert b.transfers.streams.pool.reused == 1


@pytest.mark.asyncio
async def test_a_refusal_at_the_header_stops_the_stream(peers) -> None:  # type: ignore[no-untyped-def]
    a, b, _ = peers

    def refuse(peer: PeerId, header: ShardDelta) -> None:
        b.transfers.streams.ack(peer, header, ErrorCode.DELTA_REJECTED, "not here")

    b.transfers.on_stream = refuse  # type: ignore[assignment]
    ack = await a.transfers.streams.send_delta(b.link.me, _delta(a), Payload.of(bytes(8 << 20)), 5)
    assert ack.code == ErrorCode.DELTA_REJECTED
    chunks = a.link.of(b.link.me, TensorChunk)
    assert len(chunks) < 8  # the sender stopped early instead of sending all eight


@pytest.mark.asyncio
async def test_a_chunk_outside_its_streams_layout_closes_the_connection(peers) -> None:  # type: ignore[no-untyped-def]
    a, b, _ = peers
    header = _delta(a)
    b.transfers.on_stream = lambda peer, h: b.transfers.streams.accept(peer, h, 1000, print)  # type: ignore[assignment, misc]
    a.link.send(b.link.me, header)
    from spheroid_p2p.wire.tensors import chunk_digest

    payload = bytes(2000)  # twice the length the receiver computed
    a.link.send(
        b.link.me,
        TensorChunk(
            stream_id=header.stream_id,
            index=0,
            raw_len=2000,
            chunk_hash=chunk_digest(payload),
            codec=0,
            payload=payload,
        ),
    )
    await asyncio.sleep(0.05)
    assert b.link.closed == [(a.link.me, ErrorCode.HASH_MISMATCH)]
    assert not b.transfers.streams.open


@pytest.mark.asyncio
async def test_streams_to_a_peer_go_one_at_a_time_and_a_slow_receiver_holds_the_sender(
    peers,  # type: ignore[no-untyped-def]
) -> None:
    """Three shard streams sent at once reach the receiver one after another, lowest shard
    first (09 §9.5 "Order"); while its worker thread lags the receiver stops reading the
    sender (flow control) and reads again once the chunks are placed."""
    a, b, _ = peers
    data = bytes(range(256)) * 20_000  # 5 MiB: five chunks each
    opened: list[int] = []
    arrived: list[InStream] = []
    gate = threading.Event()

    def admit(peer: PeerId, header: ShardDelta) -> None:
        opened.append(header.shard)
        b.transfers.streams.accept(peer, header, len(data), arrived.append)

    b.transfers.on_stream = admit  # type: ignore[assignment]
    b.transfers.worker.submit(gate.wait)  # the worker is busy: chunks wait for it
    sends = [
        asyncio.ensure_future(
            a.transfers.streams.send(b.link.me, _delta(a, s, 4), Payload.of(data))
        )
        for s in (2, 0, 1)
    ]
    async with asyncio.timeout(5):
        while (a.link.me, True) not in b.link.holds:  # noqa: ASYNC110
            await asyncio.sleep(0.005)
    assert (a.link.me, True) in b.link.holds  # b stopped reading a
    gate.set()
    await asyncio.gather(*sends)
    async with asyncio.timeout(5):
        while len(arrived) < 3:  # noqa: ASYNC110 - chunks are placed on the worker thread
            await asyncio.sleep(0.005)
    assert b.link.holds[-1] == (a.link.me, False)  # and reads it again
    # the first send took the lane at once; the other two waited and went lowest shard first
    assert opened == [2, 0, 1]
    assert [s.header.shard for s in arrived] == [2, 0, 1]
