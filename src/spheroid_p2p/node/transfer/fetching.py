"""Fetching a set from several holders at once (08 §8.5): glue around ``core.fetch.Fetcher``.

A fetch opens (or resumes) the set's partial file in the store and maps it; the sans-I/O
:class:`~spheroid_p2p.core.fetch.Fetcher` says which chunks to ask of which holder. Each chunk
that arrives is checked against its hash and placed **straight into its place in the mapped
file** on the transfer worker thread (a compressed chunk is decoded there; a plain one is
copied once, from the receive buffer into the file's pages), so the event loop only receives
frames. The fetch task waits on one event, set by every input, bounded by the fetcher's next
deadline: nothing polls. The complete set is judged (``check``) before it is installed, and
installed atomically.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from spheroid_p2p.core.fetch import Fetcher, FetchParams
from spheroid_p2p.errors import ErrorCode, RemoteProtocolError, code_name
from spheroid_p2p.net.requests import RequestTable
from spheroid_p2p.node.transfer.codecs import Codecs, measure_codec
from spheroid_p2p.node.transfer.common import (
    BulkLink,
    FetchError,
    FetchResult,
    VersionRejected,
    elem_size,
)
from spheroid_p2p.params import MAX_CHUNKS_PER_REQUEST
from spheroid_p2p.wire.chunks import TensorChunk
from spheroid_p2p.wire.compression import decode_payload
from spheroid_p2p.wire.dtypes import DTYPES, Codec
from spheroid_p2p.wire.manifests import SignedManifest, chunk_spans
from spheroid_p2p.wire.signing import PeerId
from spheroid_p2p.wire.tensors import chunk_digest
from spheroid_p2p.wire.transfer import ChunkGet, TransferError

if TYPE_CHECKING:
    from spheroid_p2p.node.admission import SetCheck
    from spheroid_p2p.node.store import VersionStore

__all__ = ["Fetches", "checked_bytes", "place_chunk", "write_chunk"]

log = logging.getLogger(__name__)


@dataclass(eq=False)
class Fetch:
    """One fetch in progress: the fetcher's state, the partial file, who sent what."""

    fetcher: Fetcher
    signed: SignedManifest
    fd: int  # the partial file, written at each chunk's offset (-1: an empty set)
    wake: asyncio.Event
    codec: dict[PeerId, Codec]
    bytes_by: dict[PeerId, int] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)
    on_chunk: Callable[[int], None] | None = None
    #: chunks being checked and placed on the worker thread
    pending: dict[int, asyncio.Future[tuple[float, float] | None]] = field(default_factory=dict)
    error: BaseException | None = None
    #: holders whose codec ``auto`` chose with no measured link rate: chosen again once
    #: enough of this fetch came from them (08 §8.7)
    blind: set[PeerId] = field(default_factory=set)


def checked_bytes(chunk: TensorChunk, length: int) -> memoryview:
    """Worker thread: a chunk's bytes, decoded and checked against its hash and against the
    ``length`` of its span. Raises ``RemoteProtocolError`` (``HASH_MISMATCH``,
    ``TENSOR_SHAPE_MISMATCH`` or the codec's error)."""
    plain = chunk.codec == Codec.NONE
    if chunk.raw_len != length or (plain and len(chunk.payload) != length):
        raise RemoteProtocolError(
            f"chunk {chunk.index} has {chunk.raw_len} bytes, its span {length}",
            ErrorCode.TENSOR_SHAPE_MISMATCH,
        )
    if plain:
        raw = memoryview(chunk.payload)
    else:
        raw = memoryview(decode_payload(chunk.payload, chunk.codec, chunk.raw_len, chunk.elem_size))
    if chunk_digest(raw) != chunk.chunk_hash:
        raise RemoteProtocolError(
            f"chunk {chunk.index} of stream {chunk.stream_id} does not match its hash",
            ErrorCode.HASH_MISMATCH,
        )
    return raw


def place_chunk(chunk: TensorChunk, dest: memoryview) -> None:
    """Worker thread: check a chunk (:func:`checked_bytes`) and copy it into ``dest``."""
    dest[:] = checked_bytes(chunk, len(dest))


def write_chunk(
    chunk: TensorChunk, fd: int, offset: int, length: int, measure_itemsize: int = 0
) -> tuple[float, float] | None:
    """Worker thread: check a chunk (:func:`checked_bytes`) and write it at ``offset`` of the
    partial file (straight into the page cache: no page faults, unlike a mapping). With
    ``measure_itemsize``, also measure shuffle+zstd on it (08 §8.7)."""
    raw = checked_bytes(chunk, length)
    data, at = raw, offset
    while data:
        written = os.pwrite(fd, data, at)
        data, at = data[written:], at + written
    return measure_codec(raw, measure_itemsize) if measure_itemsize else None


class Fetches:
    """This node's fetches in progress."""

    def __init__(
        self,
        link: BulkLink,
        store: VersionStore,
        codecs: Codecs,
        requests: RequestTable[object],
        worker: concurrent.futures.Executor,
        tag: str,
    ) -> None:
        self.link = link
        self.store = store
        self.codecs = codecs
        self.requests = requests
        self.worker = worker
        self.tag = tag
        self.active: list[Fetch] = []
        self.bytes_fetched = 0

    # -- the fetch ------------------------------------------------------------------------------
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
        fd = await asyncio.to_thread(os.open, path, os.O_WRONLY)
        fetch = Fetch(
            fetcher,
            signed,
            fd,
            asyncio.Event(),
            {},
            on_chunk=on_chunk,
        )
        for peer in holders:
            fetcher.add_holder(peer)
            fetch.codec[peer] = self.codecs.choose(peer)
            if self.codecs.blind(peer):
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
        self.active.append(fetch)
        try:
            await self._run(fetch, timeout_s)
        finally:
            self.active.remove(fetch)
            self.requests.forget(lambda target: target is fetch)
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
        if stored.spans and self.codecs.wants_probe():  # for the next ``auto`` choice
            biggest = max(stored.spans, key=lambda s: s.length)
            elem = elem_size(m.tensors[biggest.tensor].dtype)
            self.codecs.probe = await asyncio.to_thread(
                measure_codec, stored.chunk(biggest.index), elem
            )
        seconds = time.monotonic() - fetch.started
        total = sum(fetch.bytes_by.values())
        self.bytes_fetched += total
        for peer, n in fetch.bytes_by.items():
            self.codecs.rates.observe(peer, n, seconds)
        return FetchResult(
            stored,
            seconds,
            total,
            {p.short(): n for p, n in fetch.bytes_by.items()},
            len(have),
            [(p.short(), why) for p, why in fetcher.reports],
        )

    async def _run(self, fetch: Fetch, timeout_s: float) -> None:
        fetcher, m = fetch.fetcher, fetch.signed.manifest
        spans = fetcher.spans
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
                    if deadline is None:  # every input sets the event: wait for one
                        await fetch.wake.wait()
                        continue
                    try:
                        async with asyncio.timeout(max(0.0, deadline - now)):
                            await fetch.wake.wait()
                    except TimeoutError:
                        pass
        except TimeoutError as exc:
            raise FetchError(
                f"block {m.block} v{m.version}: fetch timed out after {timeout_s:.0f} s with "
                f"{len(spans) - len(fetcher.have)} chunks missing"
            ) from exc

    def _pump(self, fetch: Fetch, now: float | None = None) -> None:
        """Send the requests the fetcher wants now. Called from the fetch's loop and straight
        from chunk arrival, so a freed window slot is refilled without waiting for the loop
        to schedule the fetch task (a busy receive can delay that by several chunks)."""
        for action in fetch.fetcher.poll(time.monotonic() if now is None else now):
            indices = action.indices
            for start in range(0, len(indices), MAX_CHUNKS_PER_REQUEST):
                part = indices[start : start + MAX_CHUNKS_PER_REQUEST]
                rid = self.requests.new_id()
                self.requests.add(rid, action.holder, fetch)
                request = ChunkGet(
                    request_id=rid,
                    weights=fetch.signed.manifest.content,
                    indices=part,
                    codec=fetch.codec.get(action.holder, Codec.NONE),
                )
                if not self.link.send(action.holder, request):
                    self.requests.pop(rid)
                    fetch.fetcher.holder_failed(action.holder, "not connected")
                    fetch.wake.set()
                    break

    # -- inputs ---------------------------------------------------------------------------------
    def refused(self, peer: PeerId, fetch: Fetch, error: TransferError) -> None:
        """A holder answered one of our chunk requests with TRANSFER_ERROR: past its rate
        limit (OVERLOADED) it is asked again after a pause, else it is done with."""
        if error.code == ErrorCode.OVERLOADED:
            fetch.fetcher.holder_overloaded(peer, time.monotonic())
        else:
            fetch.fetcher.chunk_refused(peer, f"{code_name(error.code)}: {error.reason}")
        fetch.wake.set()

    def peer_lost(self, peer: PeerId, code: int) -> None:
        for fetch in self.active:
            if peer in fetch.fetcher.holders:
                why = f"connection closed: {code_name(code)}"
                fetch.fetcher.holder_failed(peer, why, ban=code == ErrorCode.HASH_MISMATCH)
                fetch.wake.set()

    def chunk(self, peer: PeerId, chunk: TensorChunk) -> None:
        """A chunk answering one of our CHUNK_GETs (stream id = its request id)."""
        target = self.requests.target(peer, chunk.stream_id)
        if not isinstance(target, Fetch):
            if not self.requests.was_issued(chunk.stream_id):  # we never asked for it
                self.link.close_peer(
                    peer, ErrorCode.PROTOCOL_VIOLATION, "chunk for a request never made"
                )
            return  # an answer to a request we gave up on (08 §8.5): dropped
        fetch = target
        spans = fetch.fetcher.spans
        index = chunk.index
        if index >= len(spans) or chunk.chunk_hash != spans[index].digest:
            fetch.fetcher.chunk_received(peer, index, chunk.chunk_hash)  # bans the holder
            fetch.wake.set()
            self.link.close_peer(peer, ErrorCode.HASH_MISMATCH, "chunk not in the manifest")
            return
        if index in fetch.fetcher.have or index in fetch.pending:
            fetch.fetcher.duplicate_arrived(peer, index)  # an endgame duplicate: its slot frees
            self._pump(fetch)
            return
        span = spans[index]
        # the first unmeasured chunk from a holder ``auto`` chose blindly also gives the codec
        # measurement (08 §8.7), on the worker, from the bytes as they arrived
        itemsize = 0
        if peer in fetch.blind and chunk.codec == Codec.NONE and self.codecs.wants_probe():
            itemsize = DTYPES[fetch.signed.manifest.tensors[span.tensor].dtype].itemsize
        job = asyncio.get_running_loop().run_in_executor(
            self.worker, write_chunk, chunk, fetch.fd, span.offset, span.length, itemsize
        )
        fetch.pending[index] = job
        # the callback must not keep ``chunk``: its payload is a view of a pooled receive
        # buffer, which is reused only once nothing refers to it
        digest, wire_len = chunk.chunk_hash, len(chunk.payload)
        job.add_done_callback(lambda done: self._placed(fetch, peer, index, digest, wire_len, done))
        fetch.fetcher.chunk_arrived(peer, index)
        self._pump(fetch)  # its window slot is free: ask for the next chunk at once

    def _placed(
        self,
        fetch: Fetch,
        peer: PeerId,
        index: int,
        digest: bytes,
        wire_len: int,
        job: asyncio.Future[tuple[float, float] | None],
    ) -> None:
        fetch.pending.pop(index, None)
        if job.cancelled() or fetch not in self.active:
            return
        exc = job.exception()
        if isinstance(exc, RemoteProtocolError):  # the payload does not match its hash
            self.link.close_peer(peer, exc.code, str(exc.args[0]))
            fetch.fetcher.chunk_failed(index)
            fetch.fetcher.holder_failed(peer, str(exc.args[0]), ban=True)
        elif exc is not None:  # our side: the fetch cannot go on
            fetch.error = exc
        if exc is not None and self.codecs.probe is None:
            self.codecs.probe_failed()  # the chunk that was to be measured may be this one
        if exc is None and fetch.fetcher.chunk_received(peer, index, digest):
            probe = job.result()
            if probe is not None and self.codecs.probe is None:
                self.codecs.probe = probe
            fetch.bytes_by[peer] = fetch.bytes_by.get(peer, 0) + wire_len
            if peer in fetch.blind and fetch.bytes_by[peer] >= self.codecs.rates.min_bytes:
                self._choose_again(fetch, peer)
            if fetch.on_chunk is not None:
                fetch.on_chunk(fetch.fetcher.spans[index].length)
            self._pump(fetch)  # room under max_unverified again
        fetch.wake.set()

    def _choose_again(self, fetch: Fetch, peer: PeerId) -> None:
        """``auto`` with a holder we had no rate for: now measured, choose its codec again
        for the rest of the fetch (a first transfer over a slow link gets compressed too)."""
        fetch.blind.discard(peer)
        seconds = time.monotonic() - fetch.started
        self.codecs.rates.observe(peer, fetch.bytes_by[peer], seconds)
        codec = self.codecs.choose(peer)
        if codec != fetch.codec.get(peer):
            log.info(
                "[%s] %s delivers %.1f MB/s; asking it for %s from now on",
                self.tag,
                peer.short(),
                (self.codecs.rates.get(peer) or 0.0) / 1e6,
                codec.name,
            )
            fetch.codec[peer] = codec
