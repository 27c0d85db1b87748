"""Streams a node opens itself (09 §9.4): shard deltas and shard updates, out and in.

**Out.** A :class:`Payload` is a buffer being filled from the front (a shard's values, as the
round code computes them block by block) with a watermark of the bytes ready; :meth:`Streams.send`
writes the header, then each chunk as soon as its bytes are ready, behind the connection's
bulk backpressure (01 §1.4). Sending one payload to several peers runs one such sender per
peer, so a slow peer holds up only its own copy: the shard's update goes out chunk by chunk
while it is still being computed, and while other shards' streams still arrive. Streams of one
kind to one peer take turns, lowest shard first (:class:`~.lanes.Lane`, 09 §9.5 "Order").

**In.** The round code admits a header (it alone knows the shard's exact size, from its own
base) and calls :meth:`Streams.accept` with that size: the bytes land in a buffer from a pool
of same-sized buffers (reused round after round), each chunk checked against its hash and
copied into place on the transfer worker thread, and ``on_done`` gets the complete payload.
A stream not complete ``STREAM_TIMEOUT_S`` after its header is dropped. A peer whose chunks
wait for the worker thread (``MAX_PENDING_CHUNKS_PER_PEER``) is not read from until they are
placed: flow control, so its streams wait in TCP rather than pile up here.

Acks: a shard delta's sender waits for its ``DELTA_ACK`` through the request table, keyed by
the stream id (bit 63 clear, from this table's own counter).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from spheroid_p2p.errors import ErrorCode, RemoteProtocolError
from spheroid_p2p.net.requests import PeerLostError, RequestTable
from spheroid_p2p.node.transfer.codecs import Codecs, encode_chunk
from spheroid_p2p.node.transfer.common import BulkLink, FetchError
from spheroid_p2p.node.transfer.fetching import place_chunk
from spheroid_p2p.node.transfer.lanes import Lane
from spheroid_p2p.params import TENSOR_CHUNK_BYTES
from spheroid_p2p.wire.chunks import TensorChunk
from spheroid_p2p.wire.deltas import DeltaAck, ShardDelta, ShardUpdate
from spheroid_p2p.wire.dtypes import Codec
from spheroid_p2p.wire.signing import PeerId
from spheroid_p2p.wire.tensors import chunk_digest

__all__ = ["InStream", "Payload", "Streams"]

log = logging.getLogger(__name__)

#: Streams being received at once, in all and from one peer (each holds one shard in memory).
MAX_OPEN_STREAMS = 128
MAX_OPEN_STREAMS_PER_PEER = 8
#: A peer's chunks received but not yet placed (checked, copied, decoded) above which the node
#: stops reading from it until they are down to RESUME_PENDING_CHUNKS (flow control: a sender
#: ahead of the worker thread waits in TCP, and its streams never pile up here).
MAX_PENDING_CHUNKS_PER_PEER = 4
RESUME_PENDING_CHUNKS = 1
#: A stream not complete this long after its header is dropped (``TIMEOUT``).
STREAM_TIMEOUT_S = 60.0
#: Idle buffers the pool keeps for reuse.
POOL_BUFFERS = 64

Header = ShardDelta | ShardUpdate


class Payload:
    """A payload filled from the front: chunks are sent as soon as their bytes are in."""

    def __init__(self, size: int, elem: int = 1) -> None:
        self.buffer = bytearray(size)
        self.view = memoryview(self.buffer)
        self.elem = elem  # element size, for shuffle+zstd
        self.ready = 0  # bytes [0, ready) are final
        self.failed: BaseException | None = None
        self._changed = asyncio.Event()
        self._digests: dict[int, asyncio.Future[bytes]] = {}

    @classmethod
    def of(
        cls, data: memoryview | bytes | bytearray, elem: int = 1, ready: int | None = None
    ) -> Payload:
        """A payload over ``data``: ready at once, or (``ready`` 0) as its writer advances."""
        payload = cls(0, elem)
        payload.view = memoryview(data).cast("B")
        payload.ready = len(payload.view) if ready is None else ready
        return payload

    def advance(self, ready: int) -> None:
        """Bytes up to ``ready`` are final (call on the event loop)."""
        self.ready = max(self.ready, ready)
        self._changed.set()

    def fail(self, exc: BaseException) -> None:
        self.failed = exc
        self._changed.set()

    async def wait_for(self, end: int) -> None:
        while self.ready < end:
            if self.failed is not None:
                raise FetchError(f"the payload could not be computed: {self.failed}")
            self._changed.clear()
            await self._changed.wait()

    async def digest(self, index: int) -> bytes:
        """The BLAKE3 of chunk ``index`` (once ready), computed once for every receiver."""
        job = self._digests.get(index)
        if job is None:
            start = index * TENSOR_CHUNK_BYTES
            piece = self.view[start : start + TENSOR_CHUNK_BYTES]
            job = asyncio.get_running_loop().run_in_executor(None, chunk_digest, piece)
            self._digests[index] = job
        return await asyncio.shield(job)


@dataclass(eq=False)
class InStream:
    """A stream being received into a pooled buffer."""

    sender: PeerId
    header: Header
    buffer: bytearray
    lengths: list[int]
    on_done: Callable[[InStream], None]
    #: called on the worker thread with (byte offset, bytes) as each chunk lands
    tap: Callable[[int, memoryview], None] | None = None
    #: called if the stream is dropped before it completes (timeout, a bad chunk, peer gone)
    on_drop: Callable[[InStream], None] | None = None
    have: set[int] = field(default_factory=set)
    pending: set[int] = field(default_factory=set)
    wire_bytes: int = 0
    opened_at: float = field(default_factory=time.monotonic)
    seconds: float = 0.0
    timer: asyncio.TimerHandle | None = None

    @property
    def payload(self) -> memoryview:
        return memoryview(self.buffer)[: sum(self.lengths)]


class BufferPool:
    """Receive buffers by size, reused across rounds (a round's shards have the same sizes)."""

    def __init__(self, keep: int = POOL_BUFFERS) -> None:
        self.keep = keep
        self._idle: dict[int, list[bytearray]] = {}
        self._lock = threading.Lock()  # given back on worker threads too
        self.reused = 0

    def take(self, size: int) -> bytearray:
        with self._lock:
            idle = self._idle.get(size)
            if idle:
                self.reused += 1
                return idle.pop()
        return bytearray(size)

    def give(self, buffer: bytearray) -> None:
        with self._lock:
            idle = self._idle.setdefault(len(buffer), [])
            if sum(len(v) for v in self._idle.values()) < self.keep and all(
                b is not buffer for b in idle
            ):
                idle.append(buffer)


class Streams:
    """This node's shard streams, out and in."""

    def __init__(
        self,
        link: BulkLink,
        codecs: Codecs,
        worker: concurrent.futures.Executor,
        tag: str,
    ) -> None:
        self.link = link
        self.codecs = codecs
        self.worker = worker
        self.tag = tag
        self.acks: RequestTable[object] = RequestTable()
        #: (peer, kind) -> its streams' turns (deltas and updates each have their own)
        self.lanes: dict[tuple[PeerId, type], Lane] = {}
        self.open: dict[tuple[PeerId, int], InStream] = {}
        #: peer -> its chunks being placed on the worker thread (flow control)
        self.placing: dict[PeerId, int] = {}
        self.pool = BufferPool()
        self.bytes_out = 0
        self.bytes_in = 0

    # -- out ------------------------------------------------------------------------------------
    def new_id(self) -> int:
        return self.acks.new_id()

    async def send(self, peer: PeerId, header: Header, payload: Payload) -> None:
        """Write ``header``, then the payload's chunks as they become ready, in this peer's
        lane for its kind (:class:`Lane`, lowest shard first). Raises :class:`FetchError` if
        the connection goes away."""
        lane = self.lanes.get((peer, type(header)))
        if lane is None:
            lane = self.lanes[(peer, type(header))] = Lane()
        async with lane.turn(header.shard):
            await self._send(peer, header, payload)
        if not lane.busy:
            self.lanes.pop((peer, type(header)), None)

    async def _send(self, peer: PeerId, header: Header, payload: Payload) -> None:
        if not self.link.send(peer, header):
            raise FetchError(f"{peer.short()} is not connected")
        total = len(payload.view)
        codec = Codec.NONE
        for index, start in enumerate(range(0, total, TENSOR_CHUNK_BYTES)):
            end = min(total, start + TENSOR_CHUNK_BYTES)
            await payload.wait_for(end)
            if index == 0:  # the link's codec, chosen on the first chunk's data
                codec = await self.codecs.for_sending(peer, payload.view[start:end], payload.elem)
            piece = payload.view[start:end]
            digest = await payload.digest(index)
            chosen, data = await encode_chunk(piece, codec, payload.elem)
            message = TensorChunk(
                stream_id=header.stream_id,
                index=index,
                raw_len=end - start,
                chunk_hash=digest,
                codec=chosen,
                elem_size=payload.elem if chosen == Codec.SHUFFLE_ZSTD else 1,
                payload=data,
            )
            if not await self.link.send_bulk(peer, message):
                raise FetchError(f"{peer.short()} disconnected while receiving a stream")
            self.bytes_out += len(data)

    async def send_delta(
        self, peer: PeerId, header: ShardDelta, payload: Payload, timeout_s: float
    ) -> DeltaAck:
        """Stream a shard delta and wait for its ack; a refusal at its header stops the
        stream. Raises :class:`FetchError` (disconnected, or not answered in time)."""
        future: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        self.acks.add(header.stream_id, peer, future)
        try:
            async with asyncio.TaskGroup() as group:
                sending = group.create_task(self.send(peer, header, payload))
                async with asyncio.timeout(timeout_s):
                    answer = await future
                sending.cancel()  # answered: refused at its header, or every chunk went
        except* (FetchError, PeerLostError, TimeoutError) as failed:
            raise FetchError(f"delta to {peer.short()}: {failed.exceptions[0]}") from None
        finally:
            self.acks.pop(header.stream_id)
        assert isinstance(answer, DeltaAck)
        return answer

    def acked(self, peer: PeerId, ack: DeltaAck) -> None:
        self.acks.resolve(peer, ack.stream_id, ack)

    # -- in -------------------------------------------------------------------------------------
    def accept(
        self,
        peer: PeerId,
        header: Header,
        size: int,
        on_done: Callable[[InStream], None],
        tap: Callable[[int, memoryview], None] | None = None,
        on_drop: Callable[[InStream], None] | None = None,
    ) -> tuple[int, str] | None:
        """Open a stream of ``size`` bytes the round code admitted; (code, reason) when the
        limits refuse it (the caller answers), None when it is open. ``tap`` sees each chunk
        as it lands (on the worker thread: decode it while it is in cache)."""
        key = (peer, header.stream_id)
        if key in self.open:
            self.link.close_peer(peer, ErrorCode.PROTOCOL_VIOLATION, "stream id reused")
            return int(ErrorCode.PROTOCOL_VIOLATION), "stream id reused"
        mine = sum(1 for k in self.open if k[0] == peer)
        if mine >= MAX_OPEN_STREAMS_PER_PEER or len(self.open) >= MAX_OPEN_STREAMS:
            return int(ErrorCode.OVERLOADED), "too many streams in flight"
        lengths = [min(TENSOR_CHUNK_BYTES, size - s) for s in range(0, size, TENSOR_CHUNK_BYTES)]
        stream = InStream(peer, header, self.pool.take(size), lengths, on_done, tap, on_drop)
        self.open[key] = stream
        if not lengths:
            self._done(key)
            return None
        stream.timer = asyncio.get_running_loop().call_later(
            STREAM_TIMEOUT_S, self._expired, key, stream
        )
        return None

    def release(self, stream: InStream) -> None:
        """The round code is done with a complete stream's bytes: its buffer is reused."""
        self.pool.give(stream.buffer)

    def chunk(self, peer: PeerId, chunk: TensorChunk) -> None:
        key = (peer, chunk.stream_id)
        stream = self.open.get(key)
        if stream is None:
            return  # refused at its header, dropped, or never opened (08 §8.5): dropped
        if chunk.index >= len(stream.lengths) or chunk.raw_len != stream.lengths[chunk.index]:
            self._drop(key)
            self.link.close_peer(peer, ErrorCode.HASH_MISMATCH, "stream chunk out of its layout")
            return
        if chunk.index in stream.have or chunk.index in stream.pending:
            return
        stream.pending.add(chunk.index)
        placing = self.placing[peer] = self.placing.get(peer, 0) + 1
        if placing >= MAX_PENDING_CHUNKS_PER_PEER:
            self.link.hold(peer, True)
        start = chunk.index * TENSOR_CHUNK_BYTES
        dest = memoryview(stream.buffer)[start : start + chunk.raw_len]
        job = asyncio.get_running_loop().run_in_executor(
            self.worker, _place_and_tap, chunk, dest, start, stream.tap
        )
        index, wire_len = chunk.index, len(chunk.payload)  # not ``chunk``: its buffer is pooled
        job.add_done_callback(lambda done: self._placed(key, stream, index, wire_len, done, dest))

    def _placed(
        self,
        key: tuple[PeerId, int],
        stream: InStream,
        index: int,
        wire_len: int,
        job: asyncio.Future[tuple[float, float] | None],
        dest: memoryview,
    ) -> None:
        dest.release()
        stream.pending.discard(index)
        placing = self.placing.get(stream.sender, 0) - 1
        if placing > 0:
            self.placing[stream.sender] = placing
        else:
            self.placing.pop(stream.sender, None)
        if placing <= RESUME_PENDING_CHUNKS:
            self.link.hold(stream.sender, False)
        if job.cancelled() or self.open.get(key) is not stream:
            return
        exc = job.exception()
        if exc is not None:
            self._drop(key)
            if isinstance(exc, RemoteProtocolError):
                self.link.close_peer(stream.sender, exc.code, str(exc.args[0]))
            else:
                log.error("[%s] placing a stream chunk failed: %s", self.tag, exc)
            return
        stream.have.add(index)
        stream.wire_bytes += wire_len
        self.bytes_in += wire_len
        if len(stream.have) == len(stream.lengths):
            self._done(key)

    def _drop(self, key: tuple[PeerId, int]) -> InStream | None:
        stream = self.open.pop(key, None)
        if stream is not None:
            if stream.timer is not None:
                stream.timer.cancel()
            if not stream.pending:  # a chunk still being placed keeps its buffer
                self.pool.give(stream.buffer)
            if stream.on_drop is not None:
                stream.on_drop(stream)
        return stream

    def _done(self, key: tuple[PeerId, int]) -> None:
        stream = self.open.pop(key)
        if stream.timer is not None:
            stream.timer.cancel()
        stream.seconds = time.monotonic() - stream.opened_at
        stream.on_done(stream)

    def _expired(self, key: tuple[PeerId, int], stream: InStream) -> None:
        if self.open.get(key) is not stream:
            return
        self._drop(key)
        log.warning(
            "[%s] stream %d from %s incomplete after %.0f s (%d of %d chunks); dropped",
            self.tag,
            key[1],
            key[0],
            STREAM_TIMEOUT_S,
            len(stream.have),
            len(stream.lengths),
        )
        if isinstance(stream.header, ShardDelta):
            self.ack(stream.sender, stream.header, ErrorCode.TIMEOUT, "delta stream incomplete")

    def ack(self, peer: PeerId, header: ShardDelta, code: int, reason: str = "") -> None:
        """Answer a shard delta (at its header, or once judged)."""
        self.link.send(
            peer,
            DeltaAck(
                stream_id=header.stream_id,
                block=header.block,
                round=header.round,
                code=int(code),
                reason=reason[:300],
            ),
        )

    def peer_lost(self, peer: PeerId) -> None:
        self.placing.pop(peer, None)
        for key in [k for k in self.open if k[0] == peer]:
            self._drop(key)
        self.acks.peer_lost(peer)


def _place_and_tap(
    chunk: TensorChunk,
    dest: memoryview,
    offset: int,
    tap: Callable[[int, memoryview], None] | None,
) -> None:
    """Worker thread: check and place a chunk, then let the stream's tap see it."""
    place_chunk(chunk, dest)
    if tap is not None:
        tap(offset, dest)
