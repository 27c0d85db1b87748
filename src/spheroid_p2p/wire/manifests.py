"""Block versions (spec: ``protocol/08-checkpoints.md`` §8.2-8.3, ``09-averaging.md`` §9.6).

A *block version* is a signed :class:`Manifest` plus the raw bytes of its tensors. The
manifest names every tensor (name, dtype, shape, content hash, chunk hashes), so each 1 MiB
chunk can be fetched from any peer that holds the version and checked the moment it arrives.
The chunks of a version are numbered globally, tensor after tensor, and the version's bytes
are the tensors' raw bytes laid end to end (the *blob*); chunk ``g`` is a slice of it.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import blake3

from spheroid_p2p.errors import ErrorCode, LocalProtocolError, RemoteProtocolError
from spheroid_p2p.params import (
    CONTENT_HASH_BYTES,
    MAX_MANIFEST_BYTES,
    MAX_SHARDS,
    MAX_VERSION_CHUNKS,
    MAX_VERSION_TENSORS,
    PUBLIC_KEY_BYTES,
    SIGNATURE_BYTES,
    TENSOR_CHUNK_BYTES,
)
from spheroid_p2p.wire import msgpack_profile
from spheroid_p2p.wire.chunks import tensor_layout
from spheroid_p2p.wire.dtypes import DTYPES
from spheroid_p2p.wire.message import (
    as_tuple,
    bad,
    check_bytes,
    check_quality,
    check_str,
    check_uint,
    get_field,
)
from spheroid_p2p.wire.reports import RoundReport
from spheroid_p2p.wire.signing import DOMAIN_MANIFEST, KeyPair, PeerId, verify
from spheroid_p2p.wire.tensors import RawTensor, chunk_digest, content_hash

__all__ = [
    "ENCODINGS",
    "KIND_FULL",
    "KIND_UPDATE",
    "ChunkSpan",
    "Manifest",
    "SignedManifest",
    "TensorEntry",
    "check_entries",
    "chunk_spans",
    "entries_from",
    "tensor_entry",
    "weights_hash",
]

_WEIGHTS_DOMAIN: Final = b"spheroid/v1/weights"
#: Manifest kinds (08 §8.2).
KIND_FULL: Final = 0
KIND_UPDATE: Final = 1
#: Delta encodings (09 §9.4): code -> name.
ENCODINGS: Final = {0: "float32", 1: "float16", 2: "bfloat16", 3: "int8"}


# -- tensor lists ------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class TensorEntry:
    """One tensor of a version or delta: name, dtype, shape and hashes (05 §5.4)."""

    name: str
    dtype: int
    shape: tuple[int, ...]
    content_hash: bytes
    chunk_hashes: bytes

    def __post_init__(self) -> None:
        check_str("tensor name", self.name)
        if not 0 < len(self.name.encode()) <= 256:
            raise bad("tensor names are 1..256 bytes of UTF-8")
        check_uint("dtype", self.dtype, 0xFF)
        dtype = DTYPES.get(self.dtype)
        if dtype is None:
            raise bad(f"unknown dtype code {self.dtype}", ErrorCode.UNKNOWN_DTYPE)
        if not isinstance(self.shape, tuple):
            raise bad("shape must be an array")
        for dim in self.shape:
            check_uint("dimension", dim, 2**40)
        check_bytes("content hash", self.content_hash, CONTENT_HASH_BYTES)
        check_bytes("chunk hashes", self.chunk_hashes)
        _, n_chunks = tensor_layout(dtype, self.shape)
        if len(self.chunk_hashes) != n_chunks * CONTENT_HASH_BYTES:
            raise bad(
                f"tensor {self.name!r}: {n_chunks} chunks need {n_chunks * 32} bytes of hashes",
                ErrorCode.TENSOR_SHAPE_MISMATCH,
            )

    @property
    def raw_len(self) -> int:
        return tensor_layout(DTYPES[self.dtype], self.shape)[0]

    @property
    def n_chunks(self) -> int:
        return len(self.chunk_hashes) // CONTENT_HASH_BYTES

    def check(self) -> TensorEntry:
        """Raise ``HASH_MISMATCH`` unless the content hash matches dtype, shape and chunks."""
        if content_hash(self.dtype, self.shape, self.chunk_hashes) != self.content_hash:
            raise RemoteProtocolError(
                f"tensor {self.name!r}: content hash does not match its chunk hashes",
                ErrorCode.HASH_MISMATCH,
            )
        return self

    def to_wire(self) -> list[Any]:
        return [self.name, self.dtype, list(self.shape), self.content_hash, self.chunk_hashes]

    @classmethod
    def from_wire(cls, item: object) -> TensorEntry:
        if not isinstance(item, list | tuple) or len(item) != 5:
            raise bad("a tensor entry is an array of 5: name, dtype, shape, hash, chunk hashes")
        name, dtype, shape, digest, hashes = item
        return cls(name, dtype, as_tuple(shape, "shape"), digest, hashes).check()


def tensor_entry(name: str, tensor: RawTensor) -> TensorEntry:
    """Hash ``tensor`` chunk by chunk (one pass) and describe it."""
    view = memoryview(tensor.data).cast("B")
    hashes = b"".join(
        chunk_digest(view[i : i + TENSOR_CHUNK_BYTES])
        for i in range(0, len(view), TENSOR_CHUNK_BYTES)
    )
    digest = content_hash(tensor.dtype.code, tensor.shape, hashes)
    return TensorEntry(name, tensor.dtype.code, tensor.shape, digest, hashes)


def weights_hash(entries: Sequence[TensorEntry]) -> bytes:
    """The name of a set of tensors (08 §8.2): BLAKE3 over names and content hashes, in order."""
    hasher = blake3.blake3(_WEIGHTS_DOMAIN)
    hasher.update(struct.pack(">I", len(entries)))
    for entry in entries:
        name = entry.name.encode()
        hasher.update(struct.pack(">H", len(name)) + name + entry.content_hash)
    return hasher.digest()


@dataclass(frozen=True, slots=True)
class ChunkSpan:
    """Where global chunk ``index`` lies: its tensor, its byte range in the blob, its hash."""

    index: int
    tensor: int
    offset: int
    length: int
    digest: bytes


def chunk_spans(entries: Sequence[TensorEntry]) -> list[ChunkSpan]:
    """Number the chunks of ``entries`` globally and place them in the blob (08 §8.3)."""
    spans: list[ChunkSpan] = []
    offset = 0
    for t, entry in enumerate(entries):
        raw_len = entry.raw_len
        for i in range(entry.n_chunks):
            start = i * TENSOR_CHUNK_BYTES
            length = min(TENSOR_CHUNK_BYTES, raw_len - start)
            digest = entry.chunk_hashes[i * 32 : (i + 1) * 32]
            spans.append(ChunkSpan(len(spans), t, offset + start, length, digest))
        offset += raw_len
    return spans


def check_entries(entries: tuple[TensorEntry, ...], what: str) -> None:
    if not 0 < len(entries) <= MAX_VERSION_TENSORS:
        raise bad(f"{what} lists 1..{MAX_VERSION_TENSORS} tensors, got {len(entries)}")
    names = [e.name for e in entries]
    if len(set(names)) != len(names):
        raise bad(f"{what} names a tensor twice")
    chunks = sum(e.n_chunks for e in entries)
    if chunks > MAX_VERSION_CHUNKS:
        raise bad(
            f"{what} has {chunks} chunks, more than MAX_VERSION_CHUNKS={MAX_VERSION_CHUNKS}",
            ErrorCode.TENSOR_LIMIT,
        )


def entries_from(value: object) -> tuple[TensorEntry, ...]:
    return tuple(TensorEntry.from_wire(item) for item in as_tuple(value, "tensors"))


# -- manifests ---------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True, kw_only=True)
class Manifest:
    """A signed description of one version of one block (08 §8.2)."""

    signer_key: bytes
    block: int
    version: int
    parent: bytes  # weights hash of version - 1; empty for version 0
    config_hash: str
    #: KIND_FULL: ``tensors`` are the weights. KIND_UPDATE: ``tensors`` are the round's
    #: averaged update in ``encoding``, to be added to the parent's weights (09 §9.6).
    kind: int
    encoding: int
    #: Weights hash of the version's weights (for KIND_FULL, that of ``tensors``).
    result: bytes
    tensors: tuple[TensorEntry, ...]
    created_ms: int
    next_deadline_ms: int
    report: RoundReport = field(default_factory=RoundReport)
    #: The plan of the next round (09 §9.2, r10): its aggregators in rank order (peer ids),
    #: and its number of shards. Empty: one shard, ranked by each replica's own view.
    plan: tuple[bytes, ...] = ()
    shards: int = 0
    #: r14: the block's quality as its publisher measured it (08 §8.2, 10 §10.9: the mean
    #: next-byte CE of its recent training batches, nats/byte); None: not known.
    quality: float | None = None

    def __post_init__(self) -> None:
        check_bytes("signer key", self.signer_key, PUBLIC_KEY_BYTES)
        check_uint("block", self.block, 0xFFFE)
        check_uint("version", self.version)
        if self.version == 0:
            check_bytes("parent", self.parent, 0)
        else:
            check_bytes("parent", self.parent, CONTENT_HASH_BYTES)
        check_str("config hash", self.config_hash)
        if len(self.config_hash) > 64:
            raise bad("config hash is at most 64 characters")
        if self.kind not in (KIND_FULL, KIND_UPDATE):
            raise bad(f"unknown manifest kind {self.kind}")
        if self.encoding not in ENCODINGS or (self.kind == KIND_FULL and self.encoding != 0):
            raise bad(f"encoding {self.encoding} does not fit kind {self.kind}")
        if self.kind == KIND_UPDATE and self.version == 0:
            raise bad("version 0 is always full weights")
        check_bytes("result", self.result, CONTENT_HASH_BYTES)
        check_entries(self.tensors, "a manifest")
        if self.kind == KIND_FULL and self.result != self.content:
            raise bad("a full manifest's result must be its tensors' hash", ErrorCode.HASH_MISMATCH)
        check_uint("created", self.created_ms)
        check_uint("next deadline", self.next_deadline_ms)
        if not isinstance(self.plan, tuple) or len(self.plan) > MAX_SHARDS:
            raise bad(f"a plan lists at most {MAX_SHARDS} peers")
        for peer in self.plan:
            check_bytes("plan peer", peer, 32)
        if len(set(self.plan)) != len(self.plan):
            raise bad("a plan names a peer twice")
        check_uint("shards", self.shards, MAX_SHARDS)
        if (self.shards == 0) != (not self.plan):
            raise bad("a plan has 1..MAX_SHARDS shards, and no plan none")
        if self.quality is not None:
            check_quality("quality", self.quality)

    @property
    def signer(self) -> PeerId:
        return PeerId.from_public_key(self.signer_key)

    @property
    def content(self) -> bytes:
        """The hash of the tensors this manifest lists: what CHUNK_GET names."""
        return weights_hash(self.tensors)

    @property
    def total_bytes(self) -> int:
        return sum(e.raw_len for e in self.tensors)

    @property
    def n_chunks(self) -> int:
        return sum(e.n_chunks for e in self.tensors)

    def encode(self) -> bytes:
        return msgpack_profile.pack(
            {
                "pk": self.signer_key,
                "b": self.block,
                "ver": self.version,
                "par": self.parent,
                "cfg": self.config_hash,
                "kind": self.kind,
                "enc": self.encoding,
                "res": self.result,
                "ts": [e.to_wire() for e in self.tensors],
                "at": self.created_ms,
                "next": self.next_deadline_ms,
                "rep": self.report.to_wire(),
                # r10, left out without a plan so that earlier manifests keep their bytes
                **({"plan": list(self.plan), "ns": self.shards} if self.plan else {}),
                # r14, left out when unknown
                **({"q": float(self.quality)} if self.quality is not None else {}),
            }
        )

    def sign(self, key: KeyPair) -> SignedManifest:
        if key.public_key != self.signer_key:
            raise LocalProtocolError("a manifest is signed by the key it names")
        data = self.encode()
        if len(data) > MAX_MANIFEST_BYTES:
            raise bad(
                f"manifest of {len(data)} bytes exceeds MAX_MANIFEST_BYTES={MAX_MANIFEST_BYTES}",
                ErrorCode.TENSOR_LIMIT,
            )
        return SignedManifest(data, key.sign(DOMAIN_MANIFEST, data), self)


@dataclass(frozen=True, slots=True)
class SignedManifest:
    """A manifest as stored and relayed: exact signed bytes, signature, decoded manifest."""

    data: bytes
    signature: bytes
    manifest: Manifest

    @classmethod
    def decode(cls, data: bytes, signature: bytes) -> SignedManifest:
        """Parse and verify; raises ``RemoteProtocolError`` only."""
        if len(data) > MAX_MANIFEST_BYTES:
            raise RemoteProtocolError(
                f"manifest of {len(data)} bytes exceeds {MAX_MANIFEST_BYTES}",
                ErrorCode.TENSOR_LIMIT,
            )
        if len(signature) != SIGNATURE_BYTES:
            raise RemoteProtocolError(
                "manifest signature must be 64 bytes", ErrorCode.BAD_SIGNATURE
            )
        fields = msgpack_profile.unpack(data)
        if not isinstance(fields, dict):
            raise RemoteProtocolError("manifest is not a map", ErrorCode.MALFORMED_MESSAGE)
        try:
            manifest = Manifest(
                signer_key=get_field(fields, "pk"),
                block=get_field(fields, "b"),
                version=get_field(fields, "ver"),
                parent=get_field(fields, "par"),
                config_hash=get_field(fields, "cfg"),
                kind=get_field(fields, "kind"),
                encoding=get_field(fields, "enc"),
                result=get_field(fields, "res"),
                tensors=entries_from(get_field(fields, "ts")),
                created_ms=get_field(fields, "at"),
                next_deadline_ms=get_field(fields, "next"),
                report=RoundReport.from_wire(fields.get("rep", {})),
                plan=as_tuple(fields.get("plan", []), "plan"),
                shards=fields.get("ns", 0),
                quality=fields.get("q"),
            )
        except LocalProtocolError as exc:
            raise RemoteProtocolError(f"manifest: {exc.args[0]}", exc.code) from exc
        except (TypeError, ValueError) as exc:
            raise RemoteProtocolError(f"manifest: {exc}", ErrorCode.MALFORMED_MESSAGE) from exc
        verify(manifest.signer_key, signature, DOMAIN_MANIFEST, data)
        return cls(data, signature, manifest)
