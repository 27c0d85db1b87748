"""Moving tensor sets between peers: serving and fetching versions, sending deltas (08, 09).

Thin asyncio glue around the sans-I/O :class:`~spheroid_p2p.core.fetch.Fetcher` and the
:class:`~spheroid_p2p.node.store.VersionStore`. The node routes the messages of 08/09 here
(:meth:`Transfers.handle`) and tells it about closed connections (:meth:`Transfers.lost`).

* Serving: ``VERSION_GET`` -> ``VERSION_INFO`` (a full manifest of the wanted weights, signed
  by us) or ``TRANSFER_ERROR``; ``CHUNK_GET`` -> one ``TENSOR_CHUNK`` per chunk, read from the
  blob's memory map, compressed on a worker thread when the requester asked for it.
* Fetching: :meth:`Transfers.fetch` pulls a set from several holders at once into a partial
  file, resumes one, and installs the result atomically.
* Received chunks are hashed and written (to the partial file, or into a delta's buffer) on a
  worker thread, so the event loop only receives frames and checks their signatures; the
  connections of a node decode frames with ``verify_chunks=False`` for this.
* Deltas: :meth:`Transfers.send_delta` streams ``DELTA_HEADER`` and its chunks and waits for
  the ``DELTA_ACK``; received delta streams are assembled and handed to ``on_delta``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import logging
import os
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from spheroid_p2p.core.fetch import Fetcher, FetchParams
from spheroid_p2p.core.linkrate import LinkRates, choose_codec
from spheroid_p2p.errors import ErrorCode, RemoteProtocolError, SpheroidError, code_name
from spheroid_p2p.params import MAX_CHUNKS_PER_REQUEST
from spheroid_p2p.wire.chunks import TensorChunk
from spheroid_p2p.wire.codec import verify_chunk
from spheroid_p2p.wire.compression import encode_payload
from spheroid_p2p.wire.deltas import DeltaAck, DeltaHeader
from spheroid_p2p.wire.dtypes import DTYPES, Codec
from spheroid_p2p.wire.manifests import (
    KIND_FULL,
    SignedManifest,
    TensorEntry,
    chunk_spans,
    tensor_entry,
)
from spheroid_p2p.wire.message import Message
from spheroid_p2p.wire.signing import KeyPair, PeerId
from spheroid_p2p.wire.tensors import RawTensor
from spheroid_p2p.wire.transfer import (
    REQUEST_ID_BIT,
    ChunkGet,
    TransferError,
    VersionGet,
    VersionInfo,
)

if TYPE_CHECKING:
    from spheroid_p2p.net.peers import PeerManager
    from spheroid_p2p.node.admission import SetCheck
    from spheroid_p2p.node.store import StoredSet, VersionStore

__all__ = ["FetchError", "FetchResult", "ReceivedDelta", "Transfers", "VersionRejected"]

log = logging.getLogger(__name__)

#: Delta streams being assembled at once (each holds its bytes in memory) ...
MAX_OPEN_DELTAS = 16
#: ... and from one peer (09 §9.4: a replica has at most one delta per round in flight, and
#: may start the next round's before the last ack).
MAX_OPEN_DELTAS_PER_PEER = 2
#: A delta stream not complete this long after its header is dropped (``TIMEOUT``).
DELTA_STREAM_TIMEOUT_S = 60.0
#: How long a manifest request may take.
MANIFEST_TIMEOUT_S = 10.0


class FetchError(SpheroidError):
    """A fetch could not complete; the message says which chunks and why."""


class VersionRejected(FetchError):  # noqa: N818 (a FetchError: what was fetched is refused)
    """The fetched set arrived whole but its content failed the caller's check; nothing of
    it was installed or kept."""


@dataclass
class FetchResult:
    stored: StoredSet
    seconds: float
    bytes_fetched: int
    per_holder: dict[str, int]
    resumed_chunks: int
    bad_holders: list[tuple[str, str]]


@dataclass
class ReceivedDelta:
    """A complete, hash-checked delta stream."""

    sender: PeerId
    header: DeltaHeader
    tensors: dict[str, tuple[TensorEntry, memoryview]]
    nbytes: int
    #: From its header's arrival to its last chunk's (the round reports show it per delta).
    seconds: float = 0.0


@dataclass
class _Fetch:
    fetcher: Fetcher
    signed: SignedManifest
    fd: int
    wake: asyncio.Event
    codec: dict[PeerId, Codec]
    bytes_by: dict[PeerId, int] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)
    on_chunk: Callable[[int], None] | None = None
    #: chunks being hashed and written on the worker thread
    pending: dict[int, asyncio.Future[None]] = field(default_factory=dict)
    error: BaseException | None = None
    #: holders whose codec ``auto`` chose with no measured link rate: chosen again once
    #: enough of this fetch came from them (08 §8.7)
    blind: set[PeerId] = field(default_factory=set)


@dataclass
class _DeltaIn:
    sender: PeerId
    header: DeltaHeader
    buffer: bytearray
    spans: list
    have: set[int] = field(default_factory=set)
    pending: set[int] = field(default_factory=set)
    wire_bytes: int = 0
    timer: asyncio.TimerHandle | None = None
    opened_at: float = field(default_factory=time.monotonic)


class Transfers:
    """One node's tensor-set traffic."""

    def __init__(
        self,
        key: KeyPair,
        peers: PeerManager,
        store: VersionStore,
        tag: str,
        *,
        spawn: Callable[[Coroutine[object, object, None], str], bool],
        compression: str = "auto",
        dial: Callable[[PeerId, str], Awaitable[bool]] | None = None,
    ) -> None:
        self.key = key
        self.peers = peers
        self.store = store
        self.tag = tag
        self.compression = compression
        self.dial = dial
        #: runs a peer's request as a guarded task (the node's :meth:`Node.spawn`)
        self.spawn = spawn
        self.rates = LinkRates()
        self._ids = itertools.count(1)
        self._last_id = 0  # the newest request id issued (without REQUEST_ID_BIT)
        self._requests: dict[int, tuple[_Fetch | asyncio.Future[Message], PeerId]] = {}
        self._fetches: list[_Fetch] = []
        self._deltas_in: dict[tuple[PeerId, int], _DeltaIn] = {}
        self._acks: dict[tuple[PeerId, int], asyncio.Future[DeltaAck]] = {}
        self.on_delta: Callable[[ReceivedDelta], None] | None = None
        #: Judges a delta header before anything is allocated for it: (code, reason) to
        #: refuse it (not trained here, tensors other than the block's), or None to accept.
        self.admit_delta: Callable[[PeerId, DeltaHeader], tuple[int, str] | None] | None = None
        self.on_manifest: Callable[[PeerId, SignedManifest], None] | None = None
        self.bytes_served = 0
        self.bytes_fetched = 0
        self.bytes_delta_out = 0
        self.bytes_delta_in = 0
        self._codec_probe: tuple[float, float] | None = None  # (bytes/s, ratio)
        self._tasks: set[asyncio.Task[None]] = set()  # background: codec probe, persisting
        self._probe_started = False
        # one thread: chunk hashing and writing overlap the network, in arrival order
        self._worker = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="chunks")

    def close(self) -> None:
        """Stop the worker thread (queued chunk jobs are dropped)."""
        self._worker.shutdown(wait=False, cancel_futures=True)
        for task in self._tasks:
            task.cancel()

    def _background(self, work: Coroutine[object, object, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _rid(self) -> int:
        self._last_id = next(self._ids)
        return REQUEST_ID_BIT | self._last_id

    # -- dispatch -----------------------------------------------------------------------------
    def handle(self, peer: PeerId, message: Message) -> bool:
        """Take a message of 08/09; False if it is not ours."""
        if isinstance(message, TensorChunk):
            if message.stream_id & REQUEST_ID_BIT:
                self._fetched_chunk(peer, message)
            else:
                self._delta_chunk(peer, message)
        elif isinstance(message, ChunkGet):
            self.spawn(self._serve_chunks(peer, message), f"chunks for {peer}")
        elif isinstance(message, VersionGet):
            self._serve_version(peer, message)
        elif isinstance(message, VersionInfo):
            self._answer(peer, message.request_id, message)
            if message.request_id == 0 and self.on_manifest is not None:
                self.on_manifest(peer, message.manifest)
        elif isinstance(message, TransferError):
            self._answer(peer, message.request_id, message)
        elif isinstance(message, DeltaHeader):
            self._delta_header(peer, message)
        elif isinstance(message, DeltaAck):
            fut = self._acks.pop((peer, message.stream_id), None)
            if fut is not None and not fut.done():
                fut.set_result(message)
        else:
            return False
        return True

    def lost(self, peer: PeerId, code: int) -> None:
        """The connection to ``peer`` closed (``code`` as in its Close)."""
        for fetch in self._fetches:
            if peer in fetch.fetcher.holders:
                bad = code == ErrorCode.HASH_MISMATCH
                why = f"connection closed: {code_name(code)}"
                fetch.fetcher.holder_failed(peer, why, ban=bad)
                fetch.wake.set()
        for rid, (target, holder) in list(self._requests.items()):
            if holder == peer:
                del self._requests[rid]
                if isinstance(target, asyncio.Future) and not target.done():
                    target.set_exception(FetchError(f"{peer.short()} disconnected"))
        for k in [k for k in self._deltas_in if k[0] == peer]:
            self._drop_delta(k)
        for k, fut in list(self._acks.items()):
            if k[0] == peer and not fut.done():
                fut.set_exception(FetchError(f"{peer.short()} disconnected before acking"))

    def _answer(self, peer: PeerId, rid: int, message: Message) -> None:
        entry = self._requests.get(rid)
        if entry is None or entry[1] != peer:
            return
        target, _ = entry
        if isinstance(target, asyncio.Future):
            del self._requests[rid]
            if not target.done():
                target.set_result(message)
        elif isinstance(message, TransferError):
            del self._requests[rid]
            target.fetcher.chunk_refused(peer, f"{code_name(message.code)}: {message.reason}")
            target.wake.set()

    # -- serving ------------------------------------------------------------------------------
    def _serve_version(self, peer: PeerId, req: VersionGet) -> None:
        stored = self.store.full(req.block, req.weights)
        if stored is None:
            what = req.weights.hex()[:12] if req.weights else "any version"
            self.peers.send(
                peer,
                TransferError(
                    request_id=req.request_id,
                    code=int(ErrorCode.VERSION_UNKNOWN),
                    reason=f"block {req.block}: {what} not held here",
                ),
            )
            return
        self.peers.send(peer, VersionInfo(request_id=req.request_id, manifest=stored.signed))

    async def _serve_chunks(self, peer: PeerId, req: ChunkGet) -> None:
        stored = self.store.get(req.weights)
        if stored is None or any(i >= len(stored.spans) for i in req.indices):
            self.peers.send(
                peer,
                TransferError(
                    request_id=req.request_id,
                    code=int(ErrorCode.VERSION_UNKNOWN),
                    reason=f"set {req.weights.hex()[:12]} not held here",
                ),
            )
            return
        for index in req.indices:
            elem = _elem_size(stored, index)
            span = stored.spans[index]
            raw = stored.chunk(index)
            codec, payload = Codec.NONE, raw
            if req.codec != Codec.NONE:
                encoded = await asyncio.to_thread(encode_payload, raw, Codec(req.codec), elem, 1)
                if len(encoded) < len(raw):
                    codec, payload = Codec(req.codec), encoded
            msg = TensorChunk(
                stream_id=req.request_id,
                index=index,
                raw_len=span.length,
                chunk_hash=span.digest,
                codec=codec,
                elem_size=elem if codec == Codec.SHUFFLE_ZSTD else 1,
                payload=payload,
            )
            if not await self.peers.send_bulk(peer, msg):
                return
            self.bytes_served += len(payload)

    # -- fetching -----------------------------------------------------------------------------
    async def request(self, peer: PeerId, make: Callable[[int], Message]) -> Message:
        """Send a request carrying a fresh id; wait for the answer with that id."""
        rid = self._rid()
        fut: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self._requests[rid] = (fut, peer)
        try:
            if not self.peers.send(peer, make(rid)):
                raise FetchError(f"{peer.short()} is not connected")
            async with asyncio.timeout(MANIFEST_TIMEOUT_S):
                return await fut
        finally:
            self._requests.pop(rid, None)

    async def get_manifest(self, peer: PeerId, block: int, weights: bytes = b"") -> SignedManifest:
        """The full manifest of ``block`` (these weights, or the newest) held by ``peer``."""
        answer = await self.request(
            peer, lambda rid: VersionGet(request_id=rid, block=block, weights=weights)
        )
        if isinstance(answer, TransferError):
            raise FetchError(f"{peer.short()}: {code_name(answer.code)}: {answer.reason}")
        assert isinstance(answer, VersionInfo)
        m = answer.manifest.manifest
        if m.block != block or m.kind != KIND_FULL or (weights and m.content != weights):
            raise FetchError(f"{peer.short()} answered with another version")
        return answer.manifest

    async def fetch(
        self,
        signed: SignedManifest,
        holders: list[PeerId],
        *,
        params: FetchParams | None = None,
        timeout_s: float = 600.0,
        on_chunk: Callable[[int], None] | None = None,
        check: SetCheck | None = None,
    ) -> FetchResult:
        """Fetch the set ``signed`` names from ``holders`` (connected peers) and install it.

        ``check`` judges the complete set's tensors (on a worker thread) before it is
        installed: a problem it names raises :class:`VersionRejected` and the set is
        discarded, never installed or persisted.

        Raises :class:`FetchError` when every holder failed or was banned; the verified
        chunks stay in the partial file, and the next fetch of the same set resumes there.
        """
        m = signed.manifest
        existing = self.store.get(m.content)
        if existing is not None:
            return FetchResult(existing, 0.0, 0, {}, len(existing.spans), [])
        path, have = await asyncio.to_thread(self.store.begin_partial, signed)
        spans = chunk_spans(m.tensors)
        fetcher = Fetcher(spans, have, params)
        fd = os.open(path, os.O_RDWR)
        fetch = _Fetch(fetcher, signed, fd, asyncio.Event(), {}, on_chunk=on_chunk)
        for peer in holders:
            fetcher.add_holder(peer)
            probe = self._codec_probe or (0.0, 1.0)
            fetch.codec[peer] = choose_codec(self.compression, self.rates.get(peer), *probe)
            if self.compression == "auto" and self.rates.get(peer) is None:
                fetch.blind.add(peer)
        if have:
            log.info(
                "[%s] block %d v%d: resuming a fetch, %d of %d chunks already here",
                self.tag,
                m.block,
                m.version,
                len(have),
                len(spans),
            )
        self._fetches.append(fetch)
        try:
            async with asyncio.timeout(timeout_s):
                while not fetcher.done:
                    if fetch.error is not None:
                        raise FetchError(
                            f"block {m.block} v{m.version}: writing a chunk failed: {fetch.error}"
                        ) from fetch.error
                    now = time.monotonic()
                    self._pump(fetch, now)
                    if fetcher.done:
                        break
                    if not fetcher.usable:
                        raise FetchError(
                            f"block {m.block} v{m.version}: no usable holder left, "
                            f"{len(spans) - len(fetcher.have)} of {len(spans)} chunks "
                            f"missing (kept for resume); bad holders: {fetcher.reports}"
                        )
                    fetch.wake.clear()
                    deadline = fetcher.next_deadline()
                    wait = 1.0 if deadline is None else max(0.01, deadline - now)
                    try:
                        async with asyncio.timeout(wait):
                            await fetch.wake.wait()
                    except TimeoutError:
                        pass
        except TimeoutError as exc:
            raise FetchError(
                f"block {m.block} v{m.version}: fetch timed out after {timeout_s:.0f} s with "
                f"{len(spans) - len(fetcher.have)} chunks missing"
            ) from exc
        finally:
            self._fetches.remove(fetch)
            for rid in [r for r, (t, _) in self._requests.items() if t is fetch]:
                del self._requests[rid]
            if fetch.pending:  # never close the file under a write still queued
                await asyncio.wait(list(fetch.pending.values()))
            os.close(fd)
        if check is not None:
            tensors = await asyncio.to_thread(self.store.partial_tensors, signed, path)
            problem = await asyncio.to_thread(check, tensors)
            if problem is not None:
                await asyncio.to_thread(self.store.discard_partial, path)
                raise VersionRejected(
                    f"block {m.block} v{m.version} by {m.signer.short()} rejected: {problem}"
                )
        stored = await asyncio.to_thread(self.store.finish_partial, signed, path)
        if self._codec_probe is None and stored.spans and not self._probe_started:
            self._probe_started = True
            self._background(self._probe(stored))
        seconds = time.monotonic() - fetch.started
        total = sum(fetch.bytes_by.values())
        self.bytes_fetched += total
        for peer, n in fetch.bytes_by.items():
            self.rates.observe(peer, n, seconds)
        return FetchResult(
            stored,
            seconds,
            total,
            {p.short(): n for p, n in fetch.bytes_by.items()},
            len(have),
            [(p.short(), why) for p, why in fetcher.reports],
        )

    def _pump(self, fetch: _Fetch, now: float | None = None) -> None:
        """Send the requests the fetcher wants now. Called from the fetch's loop and straight
        from chunk arrival, so a freed window slot is refilled without waiting for the loop
        to schedule the fetch task (a busy receive can delay that by several chunks)."""
        for action in fetch.fetcher.poll(time.monotonic() if now is None else now):
            self._send_chunk_get(fetch, action.holder, action.indices)

    def _send_chunk_get(self, fetch: _Fetch, holder: PeerId, indices: tuple[int, ...]) -> None:
        for start in range(0, len(indices), MAX_CHUNKS_PER_REQUEST):
            part = indices[start : start + MAX_CHUNKS_PER_REQUEST]
            rid = self._rid()
            self._requests[rid] = (fetch, holder)
            sent = self.peers.send(
                holder,
                ChunkGet(
                    request_id=rid,
                    weights=fetch.signed.manifest.content,
                    indices=part,
                    codec=fetch.codec.get(holder, Codec.NONE),
                ),
            )
            if not sent:
                del self._requests[rid]
                fetch.fetcher.holder_failed(holder, "not connected")
                fetch.wake.set()
                return

    async def _probe(self, stored: StoredSet) -> None:
        """Measure shuffle+zstd on a chunk we hold, for the next ``auto`` codec choice."""
        self._codec_probe = await asyncio.to_thread(_probe_codec, stored)

    def _fetched_chunk(self, peer: PeerId, chunk: TensorChunk) -> None:
        entry = self._requests.get(chunk.stream_id)
        if entry is None or not isinstance(entry[0], _Fetch) or entry[1] != peer:
            if chunk.stream_id & ~REQUEST_ID_BIT > self._last_id:  # we never asked for it
                self.peers.close_peer(
                    peer, ErrorCode.PROTOCOL_VIOLATION, "chunk for a request never made"
                )
            return  # an answer to a request we gave up on (08 §8.5): dropped
        fetch = entry[0]
        spans = fetch.fetcher.spans
        index = chunk.index
        if index >= len(spans) or chunk.chunk_hash != spans[index].digest:
            fetch.fetcher.chunk_received(peer, index, chunk.chunk_hash)  # bans the holder
            fetch.wake.set()
            self.peers.close_peer(peer, ErrorCode.HASH_MISMATCH, "chunk not in the manifest")
            return
        if index in fetch.fetcher.have or index in fetch.pending:
            return  # an endgame duplicate
        # the first unmeasured chunk from a holder ``auto`` chose blindly also gives the codec
        # measurement (08 §8.7), on the worker, from the bytes as they arrived
        itemsize = 0
        measure = peer in fetch.blind and chunk.codec == Codec.NONE
        if measure and self._codec_probe is None and not self._probe_started:
            self._probe_started = True
            entry = fetch.signed.manifest.tensors[spans[index].tensor]
            itemsize = DTYPES[entry.dtype].itemsize
        job = asyncio.get_running_loop().run_in_executor(
            self._worker, _check_and_write, chunk, fetch.fd, spans[index].offset, itemsize
        )
        fetch.pending[index] = job
        # the callback must not keep ``chunk``: its payload is a view of a pooled receive
        # buffer, which is reused only once nothing refers to it
        digest, wire_len, raw_len = chunk.chunk_hash, len(chunk.payload), chunk.raw_len
        job.add_done_callback(
            lambda done: self._chunk_written(fetch, peer, index, digest, wire_len, raw_len, done)
        )
        fetch.fetcher.chunk_arrived(peer, index)
        self._pump(fetch)  # its window slot is free: ask for the next chunk at once

    def _chunk_written(
        self,
        fetch: _Fetch,
        peer: PeerId,
        index: int,
        digest: bytes,
        wire_len: int,
        raw_len: int,
        job: asyncio.Future[tuple[float, float] | None],
    ) -> None:
        fetch.pending.pop(index, None)
        if job.cancelled() or fetch not in self._fetches:
            return
        exc = job.exception()
        if isinstance(exc, RemoteProtocolError):  # the payload does not match its hash
            self.peers.close_peer(peer, exc.code, str(exc.args[0]))
            fetch.fetcher.chunk_failed(index)
            fetch.fetcher.holder_failed(peer, str(exc.args[0]), ban=True)
        elif exc is not None:  # our disk: the fetch cannot go on
            fetch.error = exc
        if exc is not None and self._codec_probe is None:
            self._probe_started = False  # the chunk that was to be measured may be this one
        if exc is None and fetch.fetcher.chunk_received(peer, index, digest):
            probe = job.result()
            if probe is not None and self._codec_probe is None:
                self._codec_probe = probe
            fetch.bytes_by[peer] = fetch.bytes_by.get(peer, 0) + wire_len
            if peer in fetch.blind and fetch.bytes_by[peer] >= self.rates.min_bytes:
                self._choose_again(fetch, peer)
            if fetch.on_chunk is not None:
                fetch.on_chunk(raw_len)
            self._pump(fetch)  # room under max_unverified again
        fetch.wake.set()

    def _choose_again(self, fetch: _Fetch, peer: PeerId) -> None:
        """``auto`` with a holder we had no rate for: now measured, choose its codec again
        for the rest of the fetch (a first transfer over a slow link gets compressed too)."""
        fetch.blind.discard(peer)
        seconds = time.monotonic() - fetch.started
        self.rates.observe(peer, fetch.bytes_by[peer], seconds)
        probe = self._codec_probe or (0.0, 1.0)
        codec = choose_codec(self.compression, self.rates.get(peer), *probe)
        if codec != fetch.codec.get(peer):
            log.info(
                "[%s] %s delivers %.1f MB/s; asking it for %s from now on",
                self.tag,
                peer.short(),
                (self.rates.get(peer) or 0.0) / 1e6,
                codec.name,
            )
            fetch.codec[peer] = codec

    # -- deltas -------------------------------------------------------------------------------
    async def send_delta(
        self,
        peer: PeerId,
        *,
        block: int,
        round_: int,
        base: bytes,
        base_version: int,
        steps: int,
        loss: float,
        encoding: int,
        tensors: Mapping[str, RawTensor],
        timeout_s: float,
    ) -> DeltaAck:
        """Stream a delta to ``peer`` and wait for its ack."""
        sid = next(self._ids)
        entries = tuple(tensor_entry(n, t) for n, t in tensors.items())
        header = DeltaHeader(
            stream_id=sid,
            block=block,
            round=round_,
            base=base,
            base_version=base_version,
            steps=steps,
            loss=float(loss),
            encoding=encoding,
            tensors=entries,
        )
        codec = await self._delta_codec(peer, tensors)
        fut: asyncio.Future[DeltaAck] = asyncio.get_running_loop().create_future()
        self._acks[(peer, sid)] = fut
        try:
            if not self.peers.send(peer, header):
                raise FetchError(f"{peer.short()} is not connected")
            for span in chunk_spans(entries):
                entry = entries[span.tensor]
                raw = memoryview(tensors[entry.name].data).cast("B")
                start = span.offset - sum(e.raw_len for e in entries[: span.tensor])
                piece = raw[start : start + span.length]
                elem = DTYPES[entry.dtype].itemsize
                chosen, payload = Codec.NONE, piece
                if codec != Codec.NONE:
                    encoded = await asyncio.to_thread(encode_payload, piece, codec, elem, 1)
                    if len(encoded) < len(piece):
                        chosen, payload = codec, encoded
                ok = await self.peers.send_bulk(
                    peer,
                    TensorChunk(
                        stream_id=sid,
                        index=span.index,
                        raw_len=span.length,
                        chunk_hash=span.digest,
                        codec=chosen,
                        elem_size=elem if chosen == Codec.SHUFFLE_ZSTD else 1,
                        payload=payload,
                    ),
                )
                if not ok:
                    raise FetchError(f"{peer.short()} disconnected while sending a delta")
                self.bytes_delta_out += len(payload)
            async with asyncio.timeout(timeout_s):
                return await fut
        finally:
            self._acks.pop((peer, sid), None)

    async def _delta_codec(self, peer: PeerId, tensors: Mapping[str, RawTensor]) -> Codec:
        if self.compression != "auto":
            return choose_codec(self.compression, None)
        link = self.rates.get(peer)
        if link is None:
            return Codec.NONE
        biggest = max(tensors.values(), key=lambda t: len(memoryview(t.data).cast("B")))
        sample = memoryview(biggest.data).cast("B")[: 1 << 20]
        speed, ratio = await asyncio.to_thread(_measure_codec, sample, biggest.dtype.itemsize)
        self._codec_probe = (speed, ratio)
        return choose_codec("auto", link, speed, ratio)

    def _delta_header(self, peer: PeerId, header: DeltaHeader) -> None:
        """Open a delta stream, allocating its buffer only once the header is known to name
        exactly the tensors the block's deltas have (09 §9.4), within the slot limits."""
        key = (peer, header.stream_id)
        if key in self._deltas_in:
            self.peers.close_peer(peer, ErrorCode.PROTOCOL_VIOLATION, "delta stream id reused")
            return
        if self.admit_delta is None:
            verdict: tuple[int, str] | None = (int(ErrorCode.DELTA_REJECTED), "not training")
        else:
            verdict = self.admit_delta(peer, header)
        if verdict is not None:
            self._ack(peer, header, verdict[0], verdict[1])
            return
        mine = sum(1 for k in self._deltas_in if k[0] == peer)
        if mine >= MAX_OPEN_DELTAS_PER_PEER or len(self._deltas_in) >= MAX_OPEN_DELTAS:
            self._ack(peer, header, ErrorCode.OVERLOADED, "too many deltas in flight")
            return
        spans = chunk_spans(header.tensors)
        state = _DeltaIn(peer, header, bytearray(header.total_bytes), spans)
        self._deltas_in[key] = state
        if not spans:
            self._delta_done(key)
            return
        state.timer = asyncio.get_running_loop().call_later(
            DELTA_STREAM_TIMEOUT_S, self._delta_expired, key, state
        )

    def _delta_expired(self, key: tuple[PeerId, int], state: _DeltaIn) -> None:
        if self._deltas_in.get(key) is not state:
            return
        self._drop_delta(key)
        log.warning(
            "[%s] delta %d from %s incomplete after %.0f s (%d of %d chunks); dropped",
            self.tag,
            key[1],
            key[0],
            DELTA_STREAM_TIMEOUT_S,
            len(state.have),
            len(state.spans),
        )
        self._ack(state.sender, state.header, ErrorCode.TIMEOUT, "delta stream incomplete")

    def _delta_chunk(self, peer: PeerId, chunk: TensorChunk) -> None:
        key = (peer, chunk.stream_id)
        state = self._deltas_in.get(key)
        if state is None:
            return
        span = state.spans[chunk.index] if chunk.index < len(state.spans) else None
        if span is None or span.digest != chunk.chunk_hash or span.length != chunk.raw_len:
            self._drop_delta(key)
            self._ack(peer, state.header, ErrorCode.HASH_MISMATCH, "chunk not in the header")
            self.peers.close_peer(peer, ErrorCode.HASH_MISMATCH, "delta chunk not in its header")
            return
        if chunk.index in state.have or chunk.index in state.pending:
            return
        state.pending.add(chunk.index)
        job = asyncio.get_running_loop().run_in_executor(
            self._worker, _check_and_copy, chunk, state.buffer, state.spans[chunk.index].offset
        )
        index, wire_len = chunk.index, len(chunk.payload)  # not ``chunk``: see _fetched_chunk
        job.add_done_callback(
            lambda done: self._delta_chunk_placed(key, state, index, wire_len, done)
        )

    def _delta_chunk_placed(
        self,
        key: tuple[PeerId, int],
        state: _DeltaIn,
        index: int,
        wire_len: int,
        job: asyncio.Future[None],
    ) -> None:
        state.pending.discard(index)
        if job.cancelled() or self._deltas_in.get(key) is not state:
            return
        exc = job.exception()
        if exc is not None:
            self._drop_delta(key)
            if isinstance(exc, RemoteProtocolError):
                self.peers.close_peer(state.sender, exc.code, str(exc.args[0]))
            else:
                log.error("[%s] placing a delta chunk failed: %s", self.tag, exc)
            return
        state.have.add(index)
        state.wire_bytes += wire_len
        self.bytes_delta_in += wire_len
        if len(state.have) == len(state.spans):
            self._delta_done(key)

    def _drop_delta(self, key: tuple[PeerId, int]) -> _DeltaIn | None:
        """Close a delta stream (its timer too); returns its state, if it was open."""
        state = self._deltas_in.pop(key, None)
        if state is not None and state.timer is not None:
            state.timer.cancel()
        return state

    def _delta_done(self, key: tuple[PeerId, int]) -> None:
        state = self._drop_delta(key)
        assert state is not None
        view = memoryview(state.buffer)
        tensors: dict[str, tuple[TensorEntry, memoryview]] = {}
        offset = 0
        for entry in state.header.tensors:
            tensors[entry.name] = (entry, view[offset : offset + entry.raw_len])
            offset += entry.raw_len
        if self.on_delta is None:
            self._ack(state.sender, state.header, ErrorCode.DELTA_REJECTED, "not training")
            return
        seconds = time.monotonic() - state.opened_at
        self.on_delta(ReceivedDelta(state.sender, state.header, tensors, state.wire_bytes, seconds))

    def _ack(self, peer: PeerId, header: DeltaHeader, code: int, reason: str) -> None:
        self.peers.send(
            peer,
            DeltaAck(
                stream_id=header.stream_id,
                block=header.block,
                round=header.round,
                code=int(code),
                reason=reason[:300],
            ),
        )

    def refuse_delta(self, peer: PeerId, header: DeltaHeader, code: int, reason: str) -> None:
        """Refuse a delta stream at its header (its chunks are then dropped as they come)."""
        self._ack(peer, header, code, reason)

    def ack(self, delta: ReceivedDelta, code: int, reason: str = "") -> None:
        """Answer a received delta (the round code calls this once it has judged it)."""
        self._ack(delta.sender, delta.header, code, reason)

    def push_manifest(self, peer: PeerId, signed: SignedManifest) -> bool:
        return self.peers.send(peer, VersionInfo(request_id=0, manifest=signed))


def _check_and_write(
    chunk: TensorChunk, fd: int, offset: int, measure_itemsize: int = 0
) -> tuple[float, float] | None:
    """Worker thread: verify a fetched chunk against its hash, then write it in place. With
    ``measure_itemsize``, also measure shuffle+zstd on it (for ``auto``; 08 §8.7)."""
    data = verify_chunk(chunk).data
    if os.pwrite(fd, data, offset) != len(data):
        raise OSError(f"short write of chunk {chunk.index}")
    return _measure_codec(memoryview(data), measure_itemsize) if measure_itemsize else None


def _check_and_copy(chunk: TensorChunk, buffer: bytearray, offset: int) -> None:
    """Worker thread: verify a delta chunk against its hash, then copy it into the delta."""
    data = verify_chunk(chunk).data
    memoryview(buffer)[offset : offset + len(data)] = data


def _measure_codec(sample: memoryview, itemsize: int) -> tuple[float, float]:
    """(bytes/s, ratio) of shuffle+zstd level 1 on ``sample``."""
    start = time.perf_counter()
    encoded = encode_payload(
        sample, Codec.SHUFFLE_ZSTD, itemsize if itemsize in (2, 4, 8) else 1, 1
    )
    seconds = max(1e-6, time.perf_counter() - start)
    return len(sample) / seconds, len(sample) / max(1, len(encoded))


def _probe_codec(stored: StoredSet) -> tuple[float, float]:
    biggest = max(range(len(stored.spans)), key=lambda i: stored.spans[i].length)
    return _measure_codec(stored.chunk(biggest), _elem_size(stored, biggest))


def _elem_size(stored: StoredSet, index: int) -> int:
    entry = stored.manifest.tensors[stored.spans[index].tensor]
    size = DTYPES[entry.dtype].itemsize
    return size if size in (2, 4, 8) else 1
