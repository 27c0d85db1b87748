"""A node's content-addressed store of block versions and updates (08-checkpoints.md §8.6).

Layout under ``<data_dir>/versions/``::

    <content hex>.blob       the tensors' raw bytes end to end (chunk g = a slice)
    <content hex>.manifest   msgpack [signed manifest bytes, signature]; written last
    partial/<content hex>.part   a fetch in progress, preallocated, filled at chunk offsets

A tensor set is present iff its ``.manifest`` file exists: the blob is renamed into place
first, then the manifest is written to a temporary file and renamed (both atomic on POSIX),
so a crash leaves either nothing or a complete set. Loading re-hashes every chunk, so a blob
corrupted on disk is found and thrown away, never loaded. An interrupted fetch keeps its
``.part`` file; the next fetch hashes the chunks already there and asks only for the rest.

Chunks are served from a read-only memory map of the blob.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import mmap
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from spheroid_p2p.wire import msgpack_profile
from spheroid_p2p.wire.manifests import (
    KIND_FULL,
    ChunkSpan,
    Manifest,
    SignedManifest,
    TensorEntry,
    chunk_spans,
    tensor_entry,
    weights_hash,
)
from spheroid_p2p.wire.reports import RoundReport
from spheroid_p2p.wire.signing import KeyPair
from spheroid_p2p.wire.tensors import chunk_digest

if TYPE_CHECKING:
    import torch

__all__ = ["StoredSet", "VersionStore"]

log = logging.getLogger(__name__)


@dataclass
class StoredSet:
    """One tensor set on disk, mapped for serving."""

    signed: SignedManifest
    blob: Path
    spans: list[ChunkSpan]
    _map: mmap.mmap | None = None

    @property
    def manifest(self) -> Manifest:
        return self.signed.manifest

    def view(self) -> memoryview:
        if self._map is None:
            size = self.blob.stat().st_size
            if size == 0:
                return memoryview(b"")
            with open(self.blob, "rb") as f:
                self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        return memoryview(self._map)

    def chunk(self, index: int) -> memoryview:
        span = self.spans[index]
        return self.view()[span.offset : span.offset + span.length]

    def tensors(self) -> dict[str, torch.Tensor]:
        from spheroid_p2p.node.tensor_bridge import tensor_of  # torch, only where tensors are

        view = self.view()
        out: dict[str, torch.Tensor] = {}
        offset = 0
        for entry in self.manifest.tensors:
            out[entry.name] = tensor_of(entry, view[offset : offset + entry.raw_len])
            offset += entry.raw_len
        return out

    def close(self) -> None:
        if self._map is not None:
            with contextlib.suppress(BufferError):
                self._map.close()
            self._map = None


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _unlink(paths: list[Path]) -> None:
    for path in paths:
        path.unlink(missing_ok=True)


class VersionStore:
    """Tensor sets by content hash, and each block's newest full version."""

    def __init__(self, root: Path, keep: int = 4) -> None:
        self.root = root
        self.partial_dir = root / "partial"
        self.partial_dir.mkdir(parents=True, exist_ok=True)
        self.keep = keep
        self.sets: dict[bytes, StoredSet] = {}
        self._syncer: concurrent.futures.ThreadPoolExecutor | None = None
        self._trashed = 0
        self._load_all()

    # -- loading -------------------------------------------------------------------------------
    def _load_all(self) -> None:
        # temporaries of a writer killed mid-put (a .part is a fetch to resume: kept), and
        # blobs whose manifest never landed
        stale = [*self.partial_dir.glob("*.put"), *self.partial_dir.glob("*.trash")]
        stale += self.root.glob("*.manifest.tmp")
        stale += [b for b in self.root.glob("*.blob") if not b.with_suffix(".manifest").exists()]
        for path in stale:
            log.info("version store: removing %s, left by an interrupted write", path.name)
            path.unlink(missing_ok=True)
        for path in sorted(self.root.glob("*.manifest")):
            try:
                data, sig = msgpack_profile.unpack(path.read_bytes())
                signed = SignedManifest.decode(data, sig)
                stored = StoredSet(
                    signed, path.with_suffix(".blob"), chunk_spans(signed.manifest.tensors)
                )
                bad = self._bad_chunks(stored)
                if bad:
                    raise ValueError(f"{len(bad)} chunks do not match their hashes")
            except Exception as exc:  # a torn or corrupt entry: drop it, never load it
                log.warning("version store: discarding %s: %s", path.name, exc)
                path.unlink(missing_ok=True)
                path.with_suffix(".blob").unlink(missing_ok=True)
                continue
            self.sets[signed.manifest.content] = stored

    @staticmethod
    def _bad_chunks(stored: StoredSet) -> list[int]:
        expected = sum(s.length for s in stored.spans)
        if stored.blob.stat().st_size != expected:
            return [s.index for s in stored.spans] or [0]
        view = stored.view()
        return [
            s.index
            for s in stored.spans
            if chunk_digest(view[s.offset : s.offset + s.length]) != s.digest
        ]

    # -- queries -------------------------------------------------------------------------------
    def get(self, content: bytes) -> StoredSet | None:
        return self.sets.get(content)

    def full(self, block: int, weights: bytes = b"") -> StoredSet | None:
        """The full set of ``block`` with these weights (or the newest full set)."""
        best: StoredSet | None = None
        for s in self.sets.values():
            m = s.manifest
            if m.block != block or m.kind != KIND_FULL:
                continue
            if weights and m.content != weights:
                continue
            if best is None or m.version > best.manifest.version:
                best = s
        return best

    # -- writing -------------------------------------------------------------------------------
    def _paths(self, content: bytes) -> tuple[Path, Path]:
        stem = self.root / content.hex()
        return stem.with_suffix(".blob"), stem.with_suffix(".manifest")

    def _commit(self, signed: SignedManifest, blob_tmp: Path, durable: bool = True) -> StoredSet:
        content = signed.manifest.content
        blob, manifest_path = self._paths(content)
        if blob_tmp.exists() or content not in self.sets:
            os.replace(blob_tmp, blob)
        # else: the same tensors are held already (committed under another signer's
        # manifest a moment ago); only the manifest file changes
        tmp = manifest_path.with_suffix(".manifest.tmp")
        with open(tmp, "wb") as f:
            f.write(msgpack_profile.pack([signed.data, signed.signature]))
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.replace(tmp, manifest_path)
        if durable:
            _fsync_dir(self.root)
        old = self.sets.get(content)
        if old is not None:
            old.close()
        stored = StoredSet(signed, blob, chunk_spans(signed.manifest.tensors))
        self.sets[content] = stored
        self._prune(signed.manifest.block)
        return stored

    def put(
        self,
        key: KeyPair,
        tensors: Mapping[str, torch.Tensor],
        *,
        block: int,
        version: int,
        parent: bytes,
        config_hash: str,
        kind: int = KIND_FULL,
        encoding: int = 0,
        result: bytes = b"",
        created_ms: int = 0,
        next_deadline_ms: int = 0,
        report: RoundReport | None = None,
        plan: tuple[bytes, ...] = (),
        shards: int = 0,
        quality: float | None = None,
        durable: bool = True,
        staged: tuple[Path, tuple[TensorEntry, ...]] | None = None,
    ) -> StoredSet:
        """Write ``tensors`` as a new set (blob, then signed manifest) and return it.

        ``durable=False`` returns before the fsyncs, which follow on the store's thread (for
        versions that peers also hold: a crash in between loses the set, never tears it).
        ``staged``: the blob :meth:`stage` wrote already, and its entries."""
        if staged is None:
            staged = self.stage(tensors, durable=durable)
        path, entries = staged
        content = weights_hash(entries)
        manifest = Manifest(
            signer_key=key.public_key,
            block=block,
            version=version,
            parent=parent,
            config_hash=config_hash,
            kind=kind,
            encoding=encoding,
            result=result or content,
            tensors=entries,
            created_ms=created_ms,
            next_deadline_ms=next_deadline_ms,
            report=report or RoundReport(),
            plan=plan,
            shards=shards,
            quality=quality,
        )
        stored = self._commit(manifest.sign(key), path, durable=durable)
        if not durable:
            self.persist_later(content)
        return stored

    def stage_path(self, name: str) -> Path:
        """Where to write a blob staged piece by piece (``node.building``); a start removes
        what a crash left there. Commit it with :meth:`put` or :meth:`commit_staged`."""
        return self.partial_dir / f"{name}.put"

    def stage(
        self,
        tensors: Mapping[str, torch.Tensor],
        entries: tuple[TensorEntry, ...] | None = None,
        *,
        durable: bool = False,
    ) -> tuple[Path, tuple[TensorEntry, ...]]:
        """Write the blob of a set before it is signed (a version this node built from a
        round's updates, ready when the publisher's manifest comes); ``entries`` when the
        caller just hashed the tensors. Commit it with :meth:`put` or :meth:`commit_staged`,
        or drop it with :meth:`discard_partial` (a start removes what a crash left)."""
        from spheroid_p2p.node.tensor_bridge import raw_of

        names = list(tensors)
        raws = [raw_of(tensors[n]) for n in names]
        if entries is None:
            entries = tuple(tensor_entry(n, r) for n, r in zip(names, raws, strict=True))
        path = self.partial_dir / f"{weights_hash(entries).hex()}.put"
        with open(path, "wb") as f:
            for raw in raws:
                f.write(raw.data)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        return path, entries

    def commit_staged(
        self, signed: SignedManifest, staged: tuple[Path, tuple[TensorEntry, ...]]
    ) -> StoredSet:
        """Install a staged blob under a manifest someone else signed: its entries must be
        the manifest's. Durable a moment later."""
        path, entries = staged
        content = signed.manifest.content
        if entries != signed.manifest.tensors:
            raise ValueError("the staged tensors are not the manifest's")
        existing = self.sets.get(content)
        if existing is not None:
            self.discard_partial(path)
            return existing
        stored = self._commit(signed, path, durable=False)
        self.persist_later(content)
        return stored

    def put_signed(self, signed: SignedManifest, tensors: Mapping[str, torch.Tensor]) -> StoredSet:
        """Store ``tensors`` under a manifest someone else signed; they must hash to its
        content. Durable a moment later."""
        existing = self.sets.get(signed.manifest.content)
        if existing is not None:
            return existing
        return self.commit_staged(signed, self.stage(tensors))

    # -- partial fetches -----------------------------------------------------------------------
    def begin_partial(self, signed: SignedManifest) -> tuple[Path, set[int]]:
        """Open (or resume) the partial file of a fetch; returns it and the chunks already
        there and verified."""
        m = signed.manifest
        path = self.partial_dir / f"{m.content.hex()}.part"
        spans = chunk_spans(m.tensors)
        size = sum(s.length for s in spans)
        have: set[int] = set()
        if path.exists() and path.stat().st_size == size:
            with open(path, "rb") as f:
                for s in spans:
                    f.seek(s.offset)
                    if chunk_digest(f.read(s.length)) == s.digest:
                        have.add(s.index)
        else:
            with open(path, "wb") as f:
                f.truncate(size)
        return path, have

    @staticmethod
    def partial_tensors(signed: SignedManifest, path: Path) -> dict[str, torch.Tensor]:
        """The tensors of a completed, not yet installed fetch (to judge before installing)."""
        from spheroid_p2p.node.tensor_bridge import tensor_of

        out: dict[str, torch.Tensor] = {}
        offset = 0
        with open(path, "rb") as f:
            for entry in signed.manifest.tensors:
                f.seek(offset)
                out[entry.name] = tensor_of(entry, f.read(entry.raw_len))
                offset += entry.raw_len
        return out

    @staticmethod
    def discard_partial(path: Path) -> None:
        """Remove a fetch's partial file (its set was rejected: nothing of it is kept)."""
        with contextlib.suppress(FileNotFoundError):
            path.unlink()

    def finish_partial(self, signed: SignedManifest, path: Path) -> StoredSet:
        """Install a completed fetch (every chunk was verified as it arrived).

        The install is atomic at once and durable a moment later (:meth:`persist_later`),
        off the critical path. A crash in between loses at most this set, never loads a torn one:
        loading re-hashes every chunk (and a fetched set can be fetched again).
        """
        stored = self._commit(signed, path, durable=False)
        self.persist_later(signed.manifest.content)
        return stored

    def persist_later(self, content: bytes) -> None:
        """Make a set installed with ``durable=False`` durable, on the store's own thread."""
        self._background(self.persist, content)

    def persist(self, content: bytes) -> None:
        """fsync a set installed with ``durable=False`` (blob, manifest, directory)."""
        blob, manifest_path = self._paths(content)
        for path in (blob, manifest_path):
            try:
                fd = os.open(path, os.O_RDONLY)
            except FileNotFoundError:  # pruned meanwhile
                return
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(self.root)

    def _prune(self, block: int) -> None:
        """Keep the newest ``keep`` sets of ``block`` (full and update alike). Their files are
        moved aside at once and unlinked on the store's own thread (unlinking hundreds of MB
        is not free; moved aside, a set of the same content stored meanwhile is safe)."""
        mine = sorted(
            (s for s in self.sets.values() if s.manifest.block == block),
            key=lambda s: (s.manifest.version, s.manifest.kind == KIND_FULL),
        )
        doomed = []
        for old in mine[: max(0, len(mine) - self.keep)]:
            content = old.manifest.content
            old.close()
            for path in self._paths(content)[::-1]:  # the manifest first
                self._trashed += 1
                trash = self.partial_dir / f"{self._trashed}.trash"
                with contextlib.suppress(FileNotFoundError):
                    os.replace(path, trash)
                    doomed.append(trash)
            del self.sets[content]
        if doomed:
            self._background(_unlink, doomed)

    def _background(self, job: Callable[..., None], *args: object) -> None:
        if self._syncer is None:
            self._syncer = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="fsync")
        self._syncer.submit(job, *args)

    def close(self) -> None:
        if self._syncer is not None:  # finish the pending fsyncs: a clean stop is durable
            self._syncer.shutdown(wait=True)
            self._syncer = None
        for s in self.sets.values():
            s.close()
