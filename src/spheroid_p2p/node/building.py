"""The round's new version, built while the updates still stream (09 §9.7).

θ_r = θ_base + update is float32 arithmetic on each shard's own slice of the flat vector, so
the new version need not wait for the last update. :class:`VersionBuilder` writes a shard's
slice — added to the base, normed, written at its offset in the staged blob (the blob of a
version is the flat vector's bytes: float32 tensors in layout order, no padding) — either
block by block as an update from the wire is decoded (:meth:`VersionBuilder.sink`, on the
transfer worker thread while the chunk is in cache), or whole for an update that arrives
whole (our own aggregator's, :meth:`VersionBuilder.take`). :meth:`VersionBuilder.finish` then
does only what needs every shard: it settles the shards whose chosen update is not the one
written (a lower rank's came later, or the streamed one was refused) or that have none (a
missing shard keeps the base's values; the version's report says so), hashes the tensors
once and loads them into the module.

A slice being streamed belongs to its stream until the update is judged: kept, the slice is
that update's; refused, dropped or overtaken, its writes stop (checked under the shard's lock)
and :meth:`finish` writes the slice again.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from spheroid_p2p.ml.averaging import FlatLayout, tensors_norm
from spheroid_p2p.node.buffers import TensorPool
from spheroid_p2p.node.tensor_bridge import flat_bytes, raw_of
from spheroid_p2p.wire.manifests import TensorEntry, tensor_entry, weights_hash
from spheroid_p2p.wire.signing import PeerId

__all__ = ["Built", "VersionBuilder"]

_F32 = 4
_FINISH = -1  # the finish holds the vector and file like an apply


@dataclass
class Built:
    """A version built from the round's updates: its weights hash, the flat vector, the
    tensors (views of it) and their entries (hashed once, reused by the store); its staged
    blob and its norm, ready before the publisher's manifest comes."""

    weights: bytes
    flat: torch.Tensor
    tensors: dict[str, torch.Tensor]
    entries: tuple[TensorEntry, ...]
    staged: tuple[Path, tuple[TensorEntry, ...]] | None = None
    norm: float | None = None


@dataclass(eq=False)
class _Stream:
    """An update being written into its shard's slice as it is decoded."""

    shard: int
    aggregator: PeerId
    live: bool = True


class VersionBuilder:
    """θ_base + the round's shard updates, slice by slice, into a pooled vector and a staged
    file. The loop decides what is written (:meth:`sink`, :meth:`delivered`, :meth:`take`)
    and when to :meth:`build`; the writes run on worker threads, different shards at once."""

    def __init__(
        self,
        base: torch.Tensor,
        bounds: list[int],
        layout: FlatLayout,
        pool: TensorPool,
        path: Path,
    ) -> None:
        self.base = base
        self.bounds = bounds
        self.layout = layout
        self.pool = pool
        self.path: Path | None = path  # None once a Built owns the file
        n = len(bounds) - 1
        #: shard -> the aggregator whose update its slice holds (None: the base's values;
        #: absent: not written yet)
        self.applied: dict[int, PeerId | None] = {}
        self._streams: dict[int, _Stream] = {}
        self._sumsq: list[dict[int, float]] = [{} for _ in range(n)]  # per block written
        self._shard_locks = [threading.Lock() for _ in range(n)]
        self._busy: set[int] = set()  # shards being applied whole, and the finish
        self._lock = threading.Lock()
        self._flat: torch.Tensor | None = None
        self._fd: int | None = None
        #: set while no whole-shard apply is under way (the finish waits on it)
        self.idle = asyncio.Event()
        self.idle.set()
        self.sealed = False  # finishing: nothing more is written
        self.closed = False

    # -- on the loop ---------------------------------------------------------------------------
    def sink(self, shard: int, aggregator: PeerId) -> Callable[[int, torch.Tensor], None] | None:
        """A writer for an update of ``shard`` about to stream in, called with each decoded
        block (its first element within the shard, its values); None if the slice is
        written, or being written, already."""
        if self.sealed or shard in self._busy or shard in self._streams or shard in self.applied:
            return None
        stream = self._streams[shard] = _Stream(shard, aggregator)
        self._sumsq[shard] = {}

        def write(start: int, values: torch.Tensor) -> None:
            with self._shard_locks[shard]:
                if stream.live:
                    self._write(shard, start, values)

        return write

    def delivered(self, shard: int, aggregator: PeerId, kept: bool, better: bool) -> bool:
        """An update was judged: if its slice was streamed, it is the slice's now (``kept``)
        or its writes stop. True when the caller should :meth:`take` it whole instead (kept,
        not streamed, and the slice holds nothing or a worse rank's, ``better``)."""
        stream = self._streams.get(shard)
        if stream is not None and stream.aggregator == aggregator:
            self._stop(stream)
            if kept and not self.sealed:
                self.applied[shard] = aggregator
                return False
        if not kept or self.sealed or shard in self._busy or shard in self._streams:
            return False
        return shard not in self.applied or better

    def abandoned(self, shard: int, aggregator: PeerId) -> None:
        """An update of ``shard`` stopped before it was judged (refused, dropped, timed out)."""
        stream = self._streams.get(shard)
        if stream is not None and stream.aggregator == aggregator:
            self._stop(stream)

    def _stop(self, stream: _Stream) -> None:
        with self._shard_locks[stream.shard]:  # waits for a block being written
            stream.live = False
        if self._streams.get(stream.shard) is stream:
            del self._streams[stream.shard]
        self.applied.pop(stream.shard, None)  # partly written: the finish writes it again

    async def take(self, shard: int, aggregator: PeerId, update: torch.Tensor) -> None:
        """Write one shard's update whole on a worker thread (:meth:`delivered` said so)."""
        self._busy.add(shard)
        self.idle.clear()
        try:
            await asyncio.to_thread(self.apply, shard, update)
            self.applied[shard] = aggregator
        finally:
            self._done(shard)

    def _done(self, key: int) -> None:
        self._busy.discard(key)
        if not self._busy:
            self.idle.set()
            if self.closed:
                self._release()

    async def build(
        self, choice: Mapping[int, tuple[PeerId, torch.Tensor]], module: torch.nn.Module
    ) -> Built | None:
        """The whole version, once the whole-shard writes under way are done (:meth:`finish`
        on a worker thread); streams still running are cut off (their shards' chosen updates
        came another way). None if the round was closed meanwhile."""
        self.sealed = True
        for stream in list(self._streams.values()):
            self._stop(stream)
        while self._busy:
            await self.idle.wait()
        self._busy.add(_FINISH)
        self.idle.clear()
        try:
            built = await asyncio.to_thread(self.finish, choice, module)
        finally:
            self._busy.discard(_FINISH)
            self.idle.set()
        if self.closed:
            self.pool.give(built.flat)
            assert built.staged is not None
            with contextlib.suppress(FileNotFoundError):
                built.staged[0].unlink()
            return None
        return built

    def close(self) -> None:
        """The round ended: give back its vector and file unless a :class:`Built` took them
        (after the writes under way)."""
        self.closed = self.sealed = True
        for stream in list(self._streams.values()):
            self._stop(stream)
        if not self._busy:
            self._release()

    def _release(self) -> None:
        flat, self._flat = self._flat, None
        if flat is not None:
            self.pool.give(flat)
        self._close_file()
        if self.path is not None:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()

    def _close_file(self) -> None:
        with self._lock:
            fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    # -- on worker threads ----------------------------------------------------------------------
    def _open(self) -> tuple[torch.Tensor, int]:
        with self._lock:
            if self._flat is None:
                self._flat = self.pool.take(self.layout.numel)
            if self._fd is None:
                assert self.path is not None
                self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            return self._flat, self._fd

    def _write(self, shard: int, start: int, values: torch.Tensor | None) -> None:
        """Elements ``[start, start + len)`` of slice ``shard``: the base's plus ``values``
        (None: the base's, to the slice's end), normed and written at their file offset."""
        flat, fd = self._open()
        a = self.bounds[shard] + start
        b = self.bounds[shard + 1] if values is None else a + values.numel()
        out = flat[a:b]
        if values is None:
            out.copy_(self.base[a:b])
        else:
            torch.add(self.base[a:b], values, out=out)
        self._sumsq[shard][start] = tensors_norm(out) ** 2
        data, offset = flat_bytes(out), a * _F32
        while data:
            written = os.pwrite(fd, data, offset)
            data, offset = data[written:], offset + written

    def apply(self, shard: int, update: torch.Tensor | None) -> None:
        """Slice ``shard`` whole: the base's plus ``update`` (None: the base's)."""
        with self._shard_locks[shard]:
            self._sumsq[shard] = {}
            self._write(shard, 0, update)

    def finish(
        self, choice: Mapping[int, tuple[PeerId, torch.Tensor]], module: torch.nn.Module
    ) -> Built:
        """The whole version: settle the shards whose chosen update is not written, hash,
        load ``module``. The vector and file pass to the :class:`Built`."""
        for shard in range(len(self.bounds) - 1):
            chosen = choice.get(shard)
            if chosen is None:
                if shard not in self.applied or self.applied[shard] is not None:
                    self.apply(shard, None)  # missing: the base's values (09 §9.7)
                    self.applied[shard] = None
            elif shard not in self.applied or self.applied[shard] != chosen[0]:
                self.apply(shard, chosen[1])
                self.applied[shard] = chosen[0]
        flat, _ = self._open()
        path = self.path
        assert path is not None
        self._close_file()
        tensors = self.layout.views(flat)
        entries = tuple(tensor_entry(n, raw_of(t)) for n, t in tensors.items())
        norm = math.sqrt(sum(sum(parts.values()) for parts in self._sumsq))
        with torch.no_grad():
            module.load_state_dict(tensors)
        self._flat = None  # the Built owns the vector and the file now
        self.path = None
        return Built(weights_hash(entries), flat, tensors, entries, (path, entries), norm)
