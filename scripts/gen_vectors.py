"""Generate the conformance vectors in ``protocol/vectors/`` from fixed keys.

Usage::

    python scripts/gen_vectors.py            # (re)write protocol/vectors/*.json
    python scripts/gen_vectors.py --check    # exit 1 if the committed files differ

Everything is deterministic: keys come from fixed 32-byte seeds, Ed25519 signatures are
deterministic (RFC 8032), and zstd payloads are built by hand from raw and RLE blocks
(RFC 8878 §3.1.1.2), so the bytes do not depend on the zstd library's version.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import struct
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import blake3
import msgpack

from spheroid_p2p.core.ownership import OwnershipTable
from spheroid_p2p.errors import ErrorCode
from spheroid_p2p.params import (
    FRAME_HEADER_BYTES,
    MAX_FRAME_BYTES,
    MAX_MSGPACK_DEPTH,
    MAX_STR_LEN,
    TENSOR_CHUNK_BYTES,
)
from spheroid_p2p.wire import msgpack_profile
from spheroid_p2p.wire.chunks import TensorChunk
from spheroid_p2p.wire.codec import encode_frame, frame_body_parts
from spheroid_p2p.wire.control import Close, Hello, HelloAck, Ping, Pong
from spheroid_p2p.wire.deltas import DeltaAck, ShardDelta, ShardUpdate
from spheroid_p2p.wire.dtypes import Codec, dtype_by_name
from spheroid_p2p.wire.framing import join_frame
from spheroid_p2p.wire.gossip import (
    DigestEntry,
    GossipDigest,
    GossipRecords,
    GossipRequest,
    GossipSummary,
    GossipSuspect,
    RelayedRecord,
)
from spheroid_p2p.wire.manifests import KIND_FULL, Manifest, tensor_entry, weights_hash
from spheroid_p2p.wire.message import Message
from spheroid_p2p.wire.pipeline import PipeResult, PipeStep
from spheroid_p2p.wire.records import OwnershipRecord, SignedRecord
from spheroid_p2p.wire.reports import RoundReport, ShardRow, shard_mask
from spheroid_p2p.wire.signing import (
    DOMAIN_ENVELOPE,
    DOMAIN_MANIFEST,
    DOMAIN_RECORD,
    KeyPair,
    signing_input,
)
from spheroid_p2p.wire.status import (
    ConnView,
    JobView,
    RecordView,
    StatusRequest,
    StatusResponse,
)
from spheroid_p2p.wire.tensors import RawTensor, chunk_digest, tensor_chunks, tensor_header
from spheroid_p2p.wire.transfer import ChunkGet, TransferError, VersionGet, VersionInfo
from spheroid_p2p.wire.traversal import (
    Hop,
    InlineTensor,
    Traverse,
    TraverseError,
    TraverseResult,
)

SPEC_REVISION = "r14"
OUT_DIR = Path(__file__).resolve().parent.parent / "protocol" / "vectors"

SEED_A = bytes(range(32))
SEED_B = bytes(range(32, 64))
KEY_A = KeyPair.from_seed(SEED_A)
KEY_B = KeyPair.from_seed(SEED_B)
SEQ = 1_700_000_000_000_000
TS = 1_700_000_000_000
NONCE_A = bytes([0xA5]) * 32
NONCE_B = bytes([0x5A]) * 32


# -- helpers ----------------------------------------------------------------------------------
def render(value: Any) -> Any:
    """JSON form of a msgpack value: bytes become {"$bin": hex}."""
    if isinstance(value, bytes | bytearray | memoryview):
        return {"$bin": bytes(value).hex()}
    if isinstance(value, list | tuple):
        return [render(v) for v in value]
    if isinstance(value, dict):
        return {k: render(v) for k, v in value.items()}
    return value


def frame_body(parts: list[Any]) -> bytes:
    """Strip the 4-byte length from an encoded frame."""
    return join_frame(parts)[FRAME_HEADER_BYTES:]


def signed_map(
    message: Message | None = None,
    *,
    key: KeyPair = KEY_A,
    body: dict[str, Any] | None = None,
    type_code: int | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "v": 1,
        "t": type_code if type_code is not None else int(message.TYPE) if message else 0,
        "pk": key.public_key,
        "seq": SEQ,
        "ts": TS,
        "body": body if body is not None else message.to_body() if message else {},
    }
    fields.update(overrides)
    return fields


def raw_body(
    signed: bytes, *, key: KeyPair = KEY_A, domain: bytes = DOMAIN_ENVELOPE, payload: bytes = b""
) -> bytes:
    """A frame body around arbitrary ``signed`` bytes, signed by ``key`` under ``domain``."""
    signature = key.sign(domain, signed)
    return frame_body(frame_body_parts(signed, signature, payload))


def packed_unchecked(value: Any) -> bytes:
    """msgpack without the profile checks, to build deliberately invalid inputs."""
    return msgpack.packb(value, use_bin_type=True)  # type: ignore[no-any-return]


def zstd_frame(raw: bytes, *, declared: int | None = None, with_size: bool = True) -> bytes:
    """A valid zstd frame of ``raw`` from raw blocks, or one RLE block if ``raw`` is one byte
    repeated. ``declared`` overrides the frame content size (to build lying frames)."""
    size = len(raw) if declared is None else declared
    if with_size:
        header = bytes([0b1110_0000]) + struct.pack("<Q", size)  # FCS 8 bytes, single segment
    else:
        header = bytes([0b0000_0000, 0x58])  # no FCS, window log 21 (2 MiB)
    step = 128 * 1024  # Block_Maximum_Size
    pieces = [raw[i : i + step] for i in range(0, len(raw), step)] or [b""]
    blocks = b""
    for i, piece in enumerate(pieces):
        last = 1 if i == len(pieces) - 1 else 0
        if len(piece) > 1 and piece == piece[:1] * len(piece):  # RLE block: one byte, repeated
            blocks += struct.pack("<I", last | (1 << 1) | (len(piece) << 3))[:3] + piece[:1]
        else:  # raw block
            blocks += struct.pack("<I", last | (0 << 1) | (len(piece) << 3))[:3] + piece
    return b"\x28\xb5\x2f\xfd" + header + blocks


def vec_ok(vid: str, description: str, frame: bytes, fields: Any, **extra: Any) -> dict[str, Any]:
    out = {"id": vid, "description": description, "bytes": frame.hex(), "fields": fields}
    out.update(extra)
    return out


def vec_err(vid: str, description: str, data: bytes, code: ErrorCode) -> dict[str, Any]:
    return {"id": vid, "description": description, "bytes": data.hex(), "error": code.name}


def envelope_fields(message: Message, key: KeyPair = KEY_A, **extra: Any) -> dict[str, Any]:
    out = {
        "v": 1,
        "type": message.TYPE.name,
        "pk": key.public_key.hex(),
        "peer_id": key.peer_id.to_text(),
        "seq": SEQ,
        "ts": TS,
        "body": render(message.to_body()),
    }
    out.update(extra)
    return out


def encode(message: Message, key: KeyPair = KEY_A) -> bytes:
    return frame_body(encode_frame(key, message, seq=SEQ, timestamp_ms=TS))


# -- areas ------------------------------------------------------------------------------------
HELLO = Hello(
    versions=(1,),
    capabilities=("gossip/1", "transfer/1"),
    nonce=NONCE_A,
    agent="spheroid_p2p/0.1.0",
    listen_addrs=("127.0.0.1:7000",),
)


def signing_vectors() -> list[dict[str, Any]]:
    out = []
    for name, seed in (("a", SEED_A), ("b", SEED_B)):
        key = KeyPair.from_seed(seed)
        out.append(
            {
                "id": f"identity-{name}",
                "description": "Ed25519 seed -> public key -> peer id (SHA-256) and its text form",
                "seed": seed.hex(),
                "public_key": key.public_key.hex(),
                "peer_id": key.peer_id.digest.hex(),
                "peer_id_text": key.peer_id.to_text(),
            }
        )
    data = b"hello spheroid"
    for domain in (DOMAIN_ENVELOPE, DOMAIN_RECORD):
        out.append(
            {
                "id": f"signing-input-{domain.decode().rsplit('/', 1)[-1]}",
                "description": "signing_input(domain, data) and key A's signature over it",
                "domain": domain.decode(),
                "data": data.hex(),
                "signing_input": signing_input(domain, data).hex(),
                "signature": KEY_A.sign(domain, data).hex(),
                "public_key": KEY_A.public_key.hex(),
            }
        )
    return out


def framing_vectors() -> list[dict[str, Any]]:
    ping = join_frame(encode_frame(KEY_A, Ping(nonce=7), seq=SEQ, timestamp_ms=TS))
    pong = join_frame(encode_frame(KEY_B, Pong(nonce=7), seq=SEQ + 1, timestamp_ms=TS))

    def bodies(*frames: bytes) -> list[str]:
        return [f[FRAME_HEADER_BYTES:].hex() for f in frames]

    too_large = struct.pack(">I", MAX_FRAME_BYTES + 1) + b"\x93"
    return [
        {
            "id": "stream-one-frame",
            "description": "one Ping frame",
            "stream": ping.hex(),
            "frames": bodies(ping),
        },
        {
            "id": "stream-two-frames",
            "description": "two frames back to back",
            "stream": (ping + pong).hex(),
            "frames": bodies(ping, pong),
        },
        {
            "id": "stream-empty",
            "description": "no bytes at all: a clean close",
            "stream": "",
            "frames": [],
        },
        {
            "id": "stream-zero-length",
            "description": "a frame of length 0",
            "stream": "00000000",
            "error": ErrorCode.MALFORMED_FRAME.name,
        },
        {
            "id": "stream-oversized-length",
            "description": "length MAX_FRAME_BYTES + 1 is refused before any body byte is read",
            "stream": too_large.hex(),
            "error": ErrorCode.FRAME_TOO_LARGE.name,
        },
        {
            "id": "stream-huge-length",
            "description": "length 0xffffffff",
            "stream": "ffffffff",
            "error": ErrorCode.FRAME_TOO_LARGE.name,
        },
        {
            "id": "stream-truncated-header",
            "description": "EOF after 2 bytes of a length",
            "stream": "0000",
            "error": ErrorCode.FRAME_TRUNCATED.name,
        },
        {
            "id": "stream-truncated-body",
            "description": "EOF before the body is complete",
            "stream": ping[:-5].hex(),
            "error": ErrorCode.FRAME_TRUNCATED.name,
        },
        {
            "id": "stream-frame-then-truncated",
            "description": "a whole frame, then EOF inside the next; the first frame is delivered",
            "stream": (ping + pong[:9]).hex(),
            "frames": bodies(ping),
            "error": ErrorCode.FRAME_TRUNCATED.name,
        },
    ]


_ENTRY = tensor_entry("w", RawTensor(dtype_by_name("float32"), (2, 2), bytes(range(16))))
MANIFEST = Manifest(
    signer_key=KEY_B.public_key,
    block=2,
    version=0,
    parent=b"",
    config_hash="cfg0",
    kind=KIND_FULL,
    encoding=0,
    result=weights_hash((_ENTRY,)),
    tensors=(_ENTRY,),
    created_ms=TS,
    next_deadline_ms=TS + 30_000,
).sign(KEY_B)
VERSION_GET = VersionGet(request_id=2**63 + 1, block=2)
VERSION_INFO = VersionInfo(request_id=2**63 + 1, manifest=MANIFEST)
CHUNK_GET = ChunkGet(
    request_id=2**63 + 2, weights=MANIFEST.manifest.content, indices=(0, 1), codec=2
)
DELTA = ShardDelta(
    stream_id=5,
    block=2,
    round=3,
    base=MANIFEST.manifest.content,
    base_version=2,
    shard=1,
    shards=3,
    steps=50,
    loss=0.75,
    encoding=2,
)
SHARD_REPORT = RoundReport(
    contributors=((KEY_A.peer_id.digest, 0.5, 50, 0), (KEY_B.peer_id.digest, 0.5, 50, 0)),
    rejected=(),
    late=(),
    bytes_in=1 << 20,
)
UPDATE = ShardUpdate(
    stream_id=6,
    block=2,
    round=3,
    base=MANIFEST.manifest.content,
    shard=1,
    shards=3,
    encoding=2,
    report=SHARD_REPORT,
)
PLANNED = Manifest(
    signer_key=KEY_A.public_key,
    block=2,
    version=3,
    parent=MANIFEST.manifest.content,
    config_hash="ab" * 20,
    kind=0,
    encoding=0,
    result=weights_hash((_ENTRY,)),
    tensors=(_ENTRY,),
    created_ms=TS,
    next_deadline_ms=TS + 30_000,
    report=RoundReport(
        contributors=SHARD_REPORT.contributors,
        bytes_in=3 << 20,
        shards=(
            ShardRow(0, KEY_A.peer_id.digest, shard_mask([True, True]), 1 << 20),
            ShardRow(1, KEY_B.peer_id.digest, shard_mask([True, False]), 1 << 20),
        ),
        missing=(2,),
    ),
    plan=(KEY_B.peer_id.digest, KEY_A.peer_id.digest),
    shards=2,
).sign(KEY_A)


def message_vectors() -> list[dict[str, Any]]:
    ack = HelloAck(
        version=1, capabilities=("gossip/1",), nonce=NONCE_B, recipient=KEY_B.peer_id.digest
    )
    close = Close(code=int(ErrorCode.UNSUPPORTED_VERSION), reason="peer speaks [2], we speak [1]")
    valid: list[tuple[str, str, Message]] = [
        ("hello", "Hello with every field", HELLO),
        (
            "hello-minimal",
            "Hello with only the required fields",
            Hello(versions=(1, 2), capabilities=(), nonce=NONCE_B),
        ),
        ("hello-ack", "HelloAck echoing B's nonce to B", ack),
        ("close", "Close carrying UNSUPPORTED_VERSION", close),
        ("ping", "Ping", Ping(nonce=2**64 - 1)),
        ("pong", "Pong", Pong(nonce=0)),
        ("gossip-summary", "GossipSummary", GossipSummary(table_hash=bytes(range(32)), count=3)),
        (
            "gossip-digest",
            "GossipDigest with two entries",
            GossipDigest(
                entries=(
                    DigestEntry(KEY_A.peer_id.digest, 0, 5),
                    DigestEntry(KEY_B.peer_id.digest, 2, 9),
                )
            ),
        ),
        (
            "gossip-records",
            "GossipRecords relaying one record with 2.5 s left",
            GossipRecords(records=(RelayedRecord(RECORD_A.data, RECORD_A.signature, 2500),)),
        ),
        (
            "gossip-request",
            "GossipRequest for one key",
            GossipRequest(keys=((KEY_B.peer_id.digest, 2),)),
        ),
        ("status-request", "StatusRequest", StatusRequest(request_id=42)),
        (
            "traverse-start",
            "Traverse to hop 0: no codes yet, the first hop draws them",
            TRAVERSE_0,
        ),
        (
            "traverse-forward",
            "Traverse to hop 1 carrying 2x2 float16 codes",
            dataclasses.replace(
                TRAVERSE_0,
                hop=1,
                z=InlineTensor(2, (2, 2), 0, chunk_digest(Z_F16), Z_F16),
                payload=Z_F16,
            ),
        ),
        (
            "traverse-forward-timed",
            "Traverse to hop 1 carrying hop 0's times (r8 tm: queued, compute, encode ms)",
            dataclasses.replace(
                TRAVERSE_0,
                hop=1,
                z=InlineTensor(2, (2, 2), 0, chunk_digest(Z_F16), Z_F16),
                payload=Z_F16,
                timings=(0.25, 12.5, 0.125),
            ),
        ),
        (
            "traverse-known-prefix",
            "Traverse to hop 1 under the known-prefix rule (r11 pr, ps, ses, nt, cr: 10 §10.8), "
            "two trajectory rows of 2 float16 numbers, hop 0 reused 5 rows",
            dataclasses.replace(
                TRAVERSE_0,
                hop=1,
                z=InlineTensor(2, (2, 2), 0, chunk_digest(Z_F16), Z_F16),
                payload=Z_F16,
                prefix_rule=1,
                prefix_seed=5,
                session=0x1234_5678_9ABC,
                trajectory_rows=2,
                reused=(5,),
            ),
        ),
        (
            "traverse-combined",
            "Traverse to hop 1 under the combined rule (r13 cb, lp: 10 §10.9): one output row, "
            "block 0's log-probabilities (every value -ln 256, as binary16)",
            dataclasses.replace(
                TRAVERSE_0,
                hop=1,
                z=InlineTensor(2, (2, 2), 0, chunk_digest(Z_F16), Z_F16),
                payload=Z_F16,
                combine=1,
                combined=struct.pack("<e", -math.log(256)) * 256,
            ),
        ),
        (
            "traverse-weighted",
            "Traverse to hop 1 under the weighted rule (r14 cb = 2, lp, lq: 10 §10.9): one "
            "output row, block 0's log-probabilities (every value -ln 256) and its quality",
            dataclasses.replace(
                TRAVERSE_0,
                hop=1,
                z=InlineTensor(2, (2, 2), 0, chunk_digest(Z_F16), Z_F16),
                payload=Z_F16,
                combine=2,
                combined=struct.pack("<e", -math.log(256)) * 256,
                qualities=(2.25,),
            ),
        ),
        (
            "pipe-step",
            "PipeStep to stage 0 with a 6-byte prompt",
            PipeStep(
                session_id=9,
                client=KEY_B.peer_id.digest,
                reply_addr="127.0.0.1:9000",
                route=(Hop(KEY_A.peer_id.digest, "127.0.0.1:7000", 0, 0),),
                hop=0,
                config_hash="ar-" + "cd" * 20 + "-T128",
                pos=0,
                tokens=b"Day 1.",
                deadline_ms=10_000,
                hidden=InlineTensor(1, (0,), 0, chunk_digest(b"")),
            ),
        ),
        ("pipe-result", "PipeResult: the next byte", PipeResult(session_id=9, output=b" ")),
        (
            "gossip-suspect",
            "GossipSuspect: key B unreachable, records up to seq 9",
            GossipSuspect(peer=KEY_B.peer_id.digest, seq=9),
        ),
        ("version-get", "VersionGet: the newest version of block 2", VERSION_GET),
        ("version-info", "VersionInfo: a full manifest of block 2 signed by key B", VERSION_INFO),
        ("chunk-get", "ChunkGet: chunks 0 and 1 of a set, shuffle+zstd wanted", CHUNK_GET),
        (
            "transfer-error",
            "TransferError: the set is not held",
            TransferError(request_id=2**63 + 1, code=24, reason="not held here"),
        ),
        (
            "shard-delta",
            "r10 ShardDelta: shard 1 of 3 of a bfloat16 delta for round 3 on version 2",
            DELTA,
        ),
        (
            "shard-update",
            "r10 ShardUpdate: shard 1 of 3 of round 3's update, with the shard's report",
            UPDATE,
        ),
        (
            "version-info-planned",
            "r10 VersionInfo pushing version 3 with a two-peer plan (2 shards) for round 4 and "
            "a shard table (shard 2 missing; contributor B not in shard 1)",
            VersionInfo(request_id=0, manifest=PLANNED),
        ),
        (
            "version-info-quality",
            "r14 VersionInfo pushing version 3 with its publisher's quality q = 2.28125 nats/byte",
            VersionInfo(
                request_id=0,
                manifest=dataclasses.replace(PLANNED.manifest, quality=2.28125).sign(KEY_A),
            ),
        ),
        (
            "delta-ack",
            "DeltaAck: refused as late",
            DeltaAck(stream_id=5, block=2, round=3, code=22, reason="round 3 closed"),
        ),
        (
            "traverse-result",
            "TraverseResult with one byte and the last hop's time",
            TraverseResult(traversal_id=7, output=b"x", hop_ms=(12.5,)),
        ),
        (
            "traverse-result-timed",
            "TraverseResult from a 2-hop route with both hops' times (r8 tm)",
            TraverseResult(
                traversal_id=7,
                output=b"x",
                hop_ms=(12.5, 11.0),
                timings=(0.25, 12.5, 0.125, 1.5, 11.0, 0.0),
            ),
        ),
        (
            "traverse-result-reused",
            "TraverseResult of a 2-hop known-prefix traversal: two bytes (two trajectory rows) "
            "and the rows each hop reused (r11 cr)",
            TraverseResult(traversal_id=7, output=b"xy", hop_ms=(12.5, 11.0), reused=(5, 0)),
        ),
        (
            "traverse-result-combined",
            "TraverseResult of a traversal under the combined rule (r13 cb)",
            TraverseResult(traversal_id=7, output=b"x", hop_ms=(12.5,), combine=1),
        ),
        (
            "traverse-result-weighted",
            "TraverseResult under the weighted rule (r14 cb = 2) with the four blocks' qualities",
            TraverseResult(
                traversal_id=7,
                output=b"x",
                hop_ms=(12.5,),
                combine=2,
                qualities=(2.25, 2.3125, 2.5, 5.545177444479562),
            ),
        ),
        (
            "traverse-error",
            "TraverseError: the next hop was unreachable",
            TraverseError(
                traversal_id=7,
                hop=0,
                peer=KEY_B.peer_id.digest,
                code=17,
                reason="next hop unreachable",
            ),
        ),
        (
            "status-response",
            "StatusResponse with one record and one connection (r9: rows are maps)",
            StatusResponse(
                request_id=42,
                agent="spheroid_p2p/0.1.0",
                uptime_ms=1234,
                records=(
                    RecordView(
                        KEY_A.peer_id.digest,
                        0,
                        "serve",
                        3,
                        b"",
                        ("h:1",),
                        0.5,
                        7,
                        100,
                        29900,
                        False,
                        4,
                        "ab" * 20,
                        128,
                    ),
                ),
                connections=(ConnView(KEY_B.peer_id.digest, "127.0.0.1:7000", True, 0.25, 40),),
                dropped=(("stale", 2),),
            ),
        ),
        (
            "status-response-jobs",
            "StatusResponse of a trainer (r12 jobs: step, budget, loss, rate, eta, version)",
            StatusResponse(
                request_id=43,
                agent="spheroid_p2p/0.1.0",
                uptime_ms=60000,
                records=(),
                connections=(),
                jobs=(
                    JobView(2, 150, 1500, 2.5, 7.5, 180.0, 3),
                    JobView(3, 0, 1500, 0.0, 0.0, None),
                ),
            ),
        ),
    ]
    out = []
    for vid, desc, msg in valid:
        signed = msgpack_profile.pack(signed_map(msg))
        out.append(
            vec_ok(
                vid,
                desc,
                encode(msg),
                envelope_fields(msg),
                signed=signed.hex(),
                signing_input=signing_input(DOMAIN_ENVELOPE, signed).hex(),
            )
        )
    hello_signed = msgpack_profile.pack(signed_map(HELLO))
    good = raw_body(hello_signed)
    # An unknown extra key in the body is ignored (forward compatibility).
    extra = dict(HELLO.to_body(), future_field=[1, 2, 3])
    out.append(
        vec_ok(
            "hello-unknown-field",
            "unknown body keys are ignored",
            raw_body(msgpack_profile.pack(signed_map(HELLO, body=extra))),
            envelope_fields(HELLO, body=render(extra)),
        )
    )
    # Non-minimal widths are valid: bin 32 headers around every section.
    wide = (
        b"\x93"
        + b"\xc6"
        + struct.pack(">I", len(hello_signed))
        + hello_signed
        + b"\xc6"
        + struct.pack(">I", 64)
        + KEY_A.sign(DOMAIN_ENVELOPE, hello_signed)
        + b"\xc6"
        + struct.pack(">I", 0)
    )
    out.append(
        vec_ok(
            "hello-bin32-sections",
            "sections framed as bin 32 (non-minimal widths)",
            wide,
            envelope_fields(HELLO),
        )
    )

    def err(vid: str, desc: str, data: bytes, code: ErrorCode) -> None:
        out.append(vec_err(vid, desc, data, code))

    sig = KEY_A.sign(DOMAIN_ENVELOPE, hello_signed)
    err(
        "body-not-array",
        "frame body starts with a map, not fixarray(3)",
        b"\x80",
        ErrorCode.MALFORMED_FRAME,
    )
    err("body-array-of-two", "fixarray(2)", b"\x92" + good[1:], ErrorCode.MALFORMED_FRAME)
    err(
        "body-trailing-bytes",
        "a byte after the third element",
        good + b"\x00",
        ErrorCode.MALFORMED_FRAME,
    )
    err(
        "body-section-not-bin",
        "signed section encoded as str",
        b"\x93\xa1x" + good[1:],
        ErrorCode.MALFORMED_FRAME,
    )
    err(
        "body-section-overruns",
        "signed section declares more bytes than the body has",
        b"\x93\xc5\xff\xff" + hello_signed[:10],
        ErrorCode.MALFORMED_FRAME,
    )
    err(
        "body-short-signature",
        "a 63-byte signature",
        frame_body(frame_body_parts(hello_signed, sig[:63], b"")),
        ErrorCode.MALFORMED_FRAME,
    )
    positional = {
        "rid": 1,
        "agent": "a",
        "up": 0,
        "recs": [[KEY_A.peer_id.digest, 0, "serve", 0, b"", [], 0.0, 1, 0, 0, False]],
        "conns": [],
    }

    def bad_body(message: Message, **changes: Any) -> bytes:
        body = dict(message.to_body(), **changes)
        return raw_body(msgpack_profile.pack(signed_map(body=body, type_code=int(message.TYPE))))

    err(
        "shard-delta-shard-out-of-range",
        "r10: a ShardDelta for shard 3 of 3",
        bad_body(DELTA, sh=3),
        ErrorCode.MALFORMED_MESSAGE,
    )
    err(
        "shard-delta-too-many-shards",
        "r10: a ShardDelta of a plan with more than MAX_SHARDS shards",
        bad_body(DELTA, ns=65),
        ErrorCode.MALFORMED_MESSAGE,
    )
    err(
        "shard-update-with-shard-table",
        "r10: a ShardUpdate whose report carries a version's shard table",
        bad_body(UPDATE, rep=dict(SHARD_REPORT.to_wire(), ms=[0])),
        ErrorCode.MALFORMED_MESSAGE,
    )
    overplanned = msgpack_profile.pack(dict(msgpack_profile.unpack(PLANNED.data), ns=65))
    err(
        "manifest-too-many-shards",
        "r10: a manifest whose plan asks for 65 shards (MAX_SHARDS is 64)",
        raw_body(
            msgpack_profile.pack(
                signed_map(
                    body={"id": 0, "m": overplanned, "s": KEY_A.sign(DOMAIN_MANIFEST, overplanned)},
                    type_code=int(VersionInfo.TYPE),
                )
            )
        ),
        ErrorCode.MALFORMED_MESSAGE,
    )
    for vid, desc, q in (
        ("manifest-quality-negative", "r14: a manifest whose quality is -1.0", -1.0),
        ("manifest-quality-too-large", "r14: a manifest whose quality is 17.0 (MAX_QUALITY 16)",
         17.0),
        ("manifest-quality-not-a-number", "r14: a manifest whose quality is a string", "2.3"),
    ):  # fmt: skip
        bad_q = msgpack_profile.pack(dict(msgpack_profile.unpack(PLANNED.data), q=q))
        err(
            vid,
            desc,
            raw_body(
                msgpack_profile.pack(
                    signed_map(
                        body={"id": 0, "m": bad_q, "s": KEY_A.sign(DOMAIN_MANIFEST, bad_q)},
                        type_code=int(VersionInfo.TYPE),
                    )
                )
            ),
            ErrorCode.MALFORMED_MESSAGE,
        )
    err(
        "status-positional-row",
        "r9: a STATUS_RESPONSE record row given as an r8 positional array, not a map",
        raw_body(
            msgpack_profile.pack(signed_map(body=positional, type_code=int(StatusResponse.TYPE)))
        ),
        ErrorCode.MALFORMED_MESSAGE,
    )
    bad_job = {"rid": 1, "agent": "a", "up": 1, "recs": [], "conns": [], "drops": []}
    bad_job["jobs"] = [{"blk": 0, "step": 1, "tot": 10, "loss": -1.0, "rate": 1.0, "ver": 0}]
    err(
        "status-job-negative-loss",
        "r12: a STATUS_RESPONSE job row whose loss is negative",
        raw_body(
            msgpack_profile.pack(signed_map(body=bad_job, type_code=int(StatusResponse.TYPE)))
        ),
        ErrorCode.MALFORMED_MESSAGE,
    )
    err(
        "body-payload-on-hello",
        "a Hello with a non-empty payload",
        raw_body(hello_signed, payload=b"\x01\x02"),
        ErrorCode.MALFORMED_FRAME,
    )
    err(
        "signed-not-msgpack",
        "signed section is not valid msgpack (0xc1 is never used)",
        raw_body(b"\xc1"),
        ErrorCode.MALFORMED_MESSAGE,
    )
    err(
        "signed-not-map",
        "signed section is an array",
        raw_body(msgpack_profile.pack([1, 2])),
        ErrorCode.MALFORMED_MESSAGE,
    )
    err(
        "signed-trailing-bytes",
        "signed section has bytes after the map",
        raw_body(hello_signed + b"\xc0"),
        ErrorCode.MALFORMED_MESSAGE,
    )
    no_seq = signed_map(HELLO)
    del no_seq["seq"]
    err(
        "envelope-missing-seq",
        "envelope without seq",
        raw_body(msgpack_profile.pack(no_seq)),
        ErrorCode.MALFORMED_MESSAGE,
    )
    err(
        "envelope-negative-seq",
        "seq = -1",
        raw_body(msgpack_profile.pack(signed_map(HELLO, seq=-1))),
        ErrorCode.MALFORMED_MESSAGE,
    )
    err(
        "envelope-short-key",
        "a 31-byte public key",
        raw_body(msgpack_profile.pack(signed_map(HELLO, pk=KEY_A.public_key[:31]))),
        ErrorCode.MALFORMED_MESSAGE,
    )
    err(
        "envelope-ext-type",
        "an ext value (msgpack timestamp) in the body",
        raw_body(packed_unchecked(signed_map(HELLO, body={"x": msgpack.ExtType(1, b"ab")}))),
        ErrorCode.MALFORMED_MESSAGE,
    )
    err(
        "envelope-nan",
        "a NaN float in the body",
        raw_body(
            packed_unchecked(signed_map(HELLO, body=dict(HELLO.to_body(), load=float("nan"))))
        ),
        ErrorCode.MALFORMED_MESSAGE,
    )
    err(
        "envelope-int-key",
        "a map with an integer key",
        raw_body(packed_unchecked(signed_map(HELLO, body={1: 2}))),
        ErrorCode.MALFORMED_MESSAGE,
    )
    deep: Any = 0
    for _ in range(MAX_MSGPACK_DEPTH + 2):
        deep = [deep]
    err(
        "envelope-too-deep",
        f"nesting deeper than MAX_MSGPACK_DEPTH={MAX_MSGPACK_DEPTH}",
        raw_body(packed_unchecked(signed_map(HELLO, body={"d": deep}))),
        ErrorCode.MALFORMED_MESSAGE,
    )

    def nested(levels: int) -> Any:
        value: Any = 0
        for _ in range(levels):
            value = [value]
        return value

    # the body map is at depth 1 and its "d" value at depth 2 (02 §2.3): 6 lists put the
    # innermost 0 at depth 8 (the limit), 7 lists at depth 9
    out.append(
        vec_ok(
            "msgpack-depth-8-ok",
            f"a scalar at depth MAX_MSGPACK_DEPTH={MAX_MSGPACK_DEPTH} (an unknown key, ignored)",
            raw_body(
                msgpack_profile.pack(signed_map(HELLO, body=dict(HELLO.to_body(), d=nested(6))))
            ),
            envelope_fields(HELLO, body=render(dict(HELLO.to_body(), d=nested(6)))),
        )
    )
    err(
        "msgpack-depth-9-bad",
        f"a scalar at depth MAX_MSGPACK_DEPTH + 1 = {MAX_MSGPACK_DEPTH + 1}",
        raw_body(packed_unchecked(signed_map(HELLO, body=dict(HELLO.to_body(), d=nested(7))))),
        ErrorCode.MALFORMED_MESSAGE,
    )
    for vid, addr in (
        ("hello-addr-no-port", "x"),
        ("hello-addr-port-0", "127.0.0.1:0"),
        ("hello-addr-port-too-big", "127.0.0.1:99999"),
        ("hello-addr-empty-host", ":7000"),
        ("hello-addr-bad-ipv4", "1.2.3:7000"),
        ("hello-addr-space", "a b:7000"),
        ("hello-addr-ipv6-unbracketed", "::1:7000"),
    ):
        err(
            vid,
            f"HELLO listen address {addr!r} breaks the address grammar (02 §2.4)",
            raw_body(packed_unchecked(signed_map(HELLO, body=dict(HELLO.to_body(), addrs=[addr])))),
            ErrorCode.MALFORMED_MESSAGE,
        )
    err(
        "hello-too-many-addrs",
        "HELLO with MAX_ADDRS + 1 = 9 listen addresses",
        raw_body(
            packed_unchecked(
                signed_map(
                    HELLO, body=dict(HELLO.to_body(), addrs=[f"10.0.0.{i}:1" for i in range(9)])
                )
            )
        ),
        ErrorCode.MALFORMED_MESSAGE,
    )
    err(
        "envelope-long-string",
        f"a string longer than MAX_STR_LEN={MAX_STR_LEN}",
        raw_body(
            packed_unchecked(
                signed_map(HELLO, body=dict(HELLO.to_body(), agent="x" * (MAX_STR_LEN + 1)))
            )
        ),
        ErrorCode.MALFORMED_MESSAGE,
    )
    err(
        "envelope-version-2",
        "envelope version 2 (not spoken)",
        raw_body(msgpack_profile.pack(signed_map(HELLO, v=2))),
        ErrorCode.UNSUPPORTED_VERSION,
    )
    flipped = bytearray(good)
    flipped[-3] ^= 0x01  # inside the signature
    err(
        "bad-signature", "one bit of the signature flipped", bytes(flipped), ErrorCode.BAD_SIGNATURE
    )
    err(
        "wrong-domain",
        "signed under spheroid/v1/record instead of spheroid/v1/envelope",
        raw_body(hello_signed, domain=DOMAIN_RECORD),
        ErrorCode.BAD_SIGNATURE,
    )
    err(
        "wrong-key",
        "pk is key A, signature by key B",
        raw_body(hello_signed, key=KEY_B),
        ErrorCode.BAD_SIGNATURE,
    )
    err(
        "unknown-type",
        "message type 0x7f",
        raw_body(msgpack_profile.pack(signed_map(type_code=0x7F, body={}))),
        ErrorCode.UNKNOWN_MESSAGE_TYPE,
    )
    body = HELLO.to_body()
    del body["nonce"]
    err(
        "hello-missing-nonce",
        "Hello without its nonce",
        raw_body(msgpack_profile.pack(signed_map(HELLO, body=body))),
        ErrorCode.MALFORMED_MESSAGE,
    )
    err(
        "hello-short-nonce",
        "Hello with a 31-byte nonce",
        raw_body(
            msgpack_profile.pack(signed_map(HELLO, body=dict(HELLO.to_body(), nonce=NONCE_A[:31])))
        ),
        ErrorCode.MALFORMED_MESSAGE,
    )
    err(
        "hello-versions-not-list",
        "Hello whose vs is an integer",
        raw_body(msgpack_profile.pack(signed_map(HELLO, body=dict(HELLO.to_body(), vs=1)))),
        ErrorCode.MALFORMED_MESSAGE,
    )
    bad_z = Traverse(
        traversal_id=7,
        client=KEY_B.peer_id.digest,
        reply_addr="h:1",
        route=(Hop(KEY_A.peer_id.digest, "h:2", 0, 3),),
        hop=0,
        config_hash="",
        steps_per_block=1,
        prefix=b"x",
        span=0,
        seed=1,
        temperature=0.0,
        deadline_ms=1,
        want_logits=False,
        z=InlineTensor(2, (2, 2), 0, bytes(32), Z_F16),
        payload=Z_F16,
    )
    err(
        "traverse-codes-hash",
        "Traverse whose codes do not match their hash",
        encode(bad_z),
        ErrorCode.HASH_MISMATCH,
    )
    err(
        "traverse-unknown-prefix-rule",
        "Traverse whose pr is 2 (only 0 and 1 are rules, 10 §10.8)",
        raw_body(
            msgpack_profile.pack(
                signed_map(TRAVERSE_0, body=dict(TRAVERSE_0.to_body(), pr=2, ps=1))
            )
        ),
        ErrorCode.MALFORMED_MESSAGE,
    )
    for vid, desc, extra in (
        ("traverse-lp-without-rule", "Traverse with lp but cb = 0 (lp belongs to cb = 1)",
         {"lp": bytes(512)}),
        ("traverse-lp-ragged", "Traverse whose lp is not whole 512-byte rows",
         {"cb": 1, "lp": bytes(500)}),
        ("traverse-lp-too-many-rows", "Traverse whose lp has 17 rows (MAX_COMBINED_ROWS is 16)",
         {"cb": 1, "lp": bytes(512 * 17)}),
        ("traverse-lp-not-finite", "Traverse whose lp holds an infinity (binary16 0x7c00)",
         {"cb": 1, "lp": b"\x00\x7c" + bytes(510)}),
        ("traverse-lp-positive", "Traverse whose lp holds 1.0 (a sum of log-probabilities is <= 0)",
         {"cb": 1, "lp": b"\x00\x3c" + bytes(510)}),
        ("traverse-unknown-output-rule", "Traverse whose cb is 3 (only 0, 1 and 2 are rules)",
         {"cb": 3}),
        ("traverse-lq-without-weights", "Traverse with lq under cb = 1 (lq belongs to cb = 2)",
         {"cb": 1, "lp": bytes(512), "lq": [2.25]}),
        ("traverse-lq-negative", "Traverse whose lq holds -0.5 (a CE is >= 0)",
         {"cb": 2, "lp": bytes(512), "lq": [-0.5]}),
        ("traverse-lq-too-large", "Traverse whose lq holds 17.0 (MAX_QUALITY is 16)",
         {"cb": 2, "lp": bytes(512), "lq": [17.0]}),
        ("traverse-lq-too-many", "Traverse whose lq has 65 values (MAX_WEIGHTED_BLOCKS is 64)",
         {"cb": 2, "lp": bytes(512), "lq": [2.0] * 65}),
        ("traverse-lp-without-lq", "Traverse under cb = 2 with lp but no lq",
         {"cb": 2, "lp": bytes(512)}),
        ("traverse-lq-without-lp", "Traverse under cb = 2 with lq but no lp",
         {"cb": 2, "lq": [2.0]}),
    ):  # fmt: skip
        err(
            vid,
            desc,
            raw_body(
                msgpack_profile.pack(
                    signed_map(TRAVERSE_0, body=dict(TRAVERSE_0.to_body(), **extra))
                )
            ),
            ErrorCode.MALFORMED_MESSAGE,
        )
    err(
        "traverse-session-without-rule",
        "Traverse with a session but the r3 rule (ses belongs to pr = 1)",
        raw_body(
            msgpack_profile.pack(signed_map(TRAVERSE_0, body=dict(TRAVERSE_0.to_body(), ses=3)))
        ),
        ErrorCode.MALFORMED_MESSAGE,
    )
    err(
        "traverse-too-many-trajectory-rows",
        "Traverse with nt = 65 (MAX_TRAJECTORY_ROWS is 64)",
        raw_body(
            msgpack_profile.pack(
                signed_map(TRAVERSE_0, body=dict(TRAVERSE_0.to_body(), pr=1, ps=1, nt=65))
            )
        ),
        ErrorCode.MALFORMED_MESSAGE,
    )
    timed = TraverseResult(traversal_id=7, output=b"x", hop_ms=(1.0,))
    err(
        "traverse-result-timings-not-triples",
        "TraverseResult whose tm has 2 numbers (hop times come in threes, 10 §10.3.1)",
        raw_body(
            msgpack_profile.pack(signed_map(timed, body=dict(timed.to_body(), tm=[1.0, 2.0])))
        ),
        ErrorCode.MALFORMED_MESSAGE,
    )
    err(
        "traverse-result-timings-negative",
        "TraverseResult whose tm holds a negative time",
        raw_body(
            msgpack_profile.pack(signed_map(timed, body=dict(timed.to_body(), tm=[1.0, -2.0, 0.0])))
        ),
        ErrorCode.MALFORMED_MESSAGE,
    )
    err(
        "ping-string-nonce",
        "Ping whose n is a string",
        raw_body(msgpack_profile.pack(signed_map(Ping(nonce=1), body={"n": "1"}))),
        ErrorCode.MALFORMED_MESSAGE,
    )
    return out


def tensor_vectors() -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    f32 = dtype_by_name("float32")
    values = struct.pack("<6f", 0.0, 1.0, -2.5, 3.25, 1e-3, -0.0)
    small = RawTensor(f32, (2, 3), values)
    header = tensor_header(9, "block0.attn.w", small)
    out.append(
        vec_ok(
            "header-float32-2x3",
            "header of a 2x3 float32 tensor",
            encode(header),
            envelope_fields(header),
        )
    )
    (chunk,) = tensor_chunks(header, small)
    out.append(
        vec_ok(
            "chunk-raw",
            "its one chunk, codec none",
            encode(chunk),
            envelope_fields(chunk),
            data=values.hex(),
            payload=values.hex(),
        )
    )

    def chunk_with(
        payload: bytes,
        *,
        codec: int,
        raw: bytes,
        es: int = 1,
        declared_hash: bytes | None = None,
        raw_len: int | None = None,
    ) -> bytes:
        body = {
            "id": 9,
            "i": 0,
            "n": len(raw) if raw_len is None else raw_len,
            "h": declared_hash or blake3.blake3(raw).digest(),
            "c": codec,
        }
        if codec == Codec.SHUFFLE_ZSTD:
            body["es"] = es
        signed = msgpack_profile.pack(signed_map(type_code=0x21, body=body))
        return raw_body(signed, payload=payload)

    zeros = bytes(4096)
    zfr = zstd_frame(zeros)
    out.append(
        vec_ok(
            "chunk-zstd-rle",
            "4096 zero bytes as one zstd RLE block",
            chunk_with(zfr, codec=Codec.ZSTD, raw=zeros),
            None,
            data=zeros.hex(),
        )
    )
    ramp = bytes(range(256)) * 2
    out.append(
        vec_ok(
            "chunk-zstd-raw-block",
            "512 bytes as a zstd raw block",
            chunk_with(zstd_frame(ramp), codec=Codec.ZSTD, raw=ramp),
            None,
            data=ramp.hex(),
        )
    )
    shuffled_src = struct.pack("<4f", 1.0, 2.0, 3.0, 4.0)
    shuffled = b"".join(shuffled_src[k::4] for k in range(4))
    out.append(
        vec_ok(
            "chunk-shuffle-zstd",
            "4 float32 values, byte-shuffled (es=4) then zstd",
            chunk_with(zstd_frame(shuffled), codec=Codec.SHUFFLE_ZSTD, es=4, raw=shuffled_src),
            None,
            data=shuffled_src.hex(),
        )
    )
    empty = tensor_header(1, "empty", RawTensor(f32, (0, 4), b""))
    out.append(
        vec_ok(
            "header-empty-tensor",
            "a zero-size tensor has no chunks",
            encode(empty),
            envelope_fields(empty),
        )
    )

    def err(vid: str, desc: str, data: bytes, code: ErrorCode) -> None:
        out.append(vec_err(vid, desc, data, code))

    def header_with(**changes: Any) -> bytes:
        body = dict(header.to_body(), **changes)
        return raw_body(msgpack_profile.pack(signed_map(type_code=0x20, body=body)))

    err("header-unknown-dtype", "dtype code 99", header_with(dt=99), ErrorCode.UNKNOWN_DTYPE)
    err(
        "header-shape-mismatch",
        "shape [2,3] with two chunk hashes",
        header_with(hs=header.chunk_hashes * 2),
        ErrorCode.TENSOR_SHAPE_MISMATCH,
    )
    huge_shape = [2**20, 2**10, 2]  # 8 GiB of float32
    err(
        "header-too-large",
        "a tensor above MAX_TENSOR_BYTES",
        header_with(shape=huge_shape),
        ErrorCode.TENSOR_LIMIT,
    )
    err(
        "header-content-hash",
        "content hash does not match the chunk hashes",
        header_with(h=bytes(32)),
        ErrorCode.HASH_MISMATCH,
    )
    err(
        "header-shape-not-list",
        "shape is a string",
        header_with(shape="2x3"),
        ErrorCode.MALFORMED_MESSAGE,
    )
    err(
        "header-too-many-dims",
        "9 dimensions",
        header_with(shape=[1] * 9),
        ErrorCode.MALFORMED_MESSAGE,
    )
    err(
        "chunk-unknown-codec",
        "codec id 7",
        chunk_with(values, codec=7, raw=values),
        ErrorCode.UNKNOWN_CODEC,
    )
    err(
        "chunk-raw-length-mismatch",
        "codec none, payload shorter than n",
        chunk_with(values[:-4], codec=Codec.NONE, raw=values),
        ErrorCode.TENSOR_SHAPE_MISMATCH,
    )
    err(
        "chunk-hash-mismatch",
        "payload does not hash to h",
        chunk_with(values, codec=Codec.NONE, raw=values, declared_hash=bytes(32)),
        ErrorCode.HASH_MISMATCH,
    )
    err(
        "chunk-zstd-declares-more",
        "zstd frame declares 8192 bytes, the chunk 4096 (a bomb)",
        chunk_with(zstd_frame(bytes(8192)), codec=Codec.ZSTD, raw=zeros),
        ErrorCode.DECOMPRESSION_FAILED,
    )
    err(
        "chunk-zstd-huge-declared",
        "zstd frame declares 2^40 bytes",
        chunk_with(zstd_frame(zeros, declared=2**40), codec=Codec.ZSTD, raw=zeros),
        ErrorCode.DECOMPRESSION_FAILED,
    )
    err(
        "chunk-zstd-lies",
        "zstd frame declares 4096 bytes but holds 8192",
        chunk_with(zstd_frame(bytes(8192), declared=4096), codec=Codec.ZSTD, raw=zeros),
        ErrorCode.DECOMPRESSION_FAILED,
    )
    err(
        "chunk-zstd-bomb",
        "zstd frame declares 1 MiB (= n) but its RLE blocks expand to 64 MiB: decoded into "
        "exactly n bytes, it fails when they are full",
        chunk_with(
            zstd_frame(bytes(64 << 20), declared=1 << 20),
            codec=Codec.ZSTD,
            raw=bytes(1 << 20),
        ),
        ErrorCode.DECOMPRESSION_FAILED,
    )
    # FCS 8 bytes, not single segment, then a window descriptor of 2^23 bytes (8 MiB)
    wide_window = (
        b"\x28\xb5\x2f\xfd"
        + bytes([0b1100_0000, 13 << 3])
        + struct.pack("<Q", len(zeros))
        + zstd_frame(zeros)[4 + 9 :]
    )
    err(
        "chunk-zstd-window-too-large",
        "zstd frame declaring an 8 MiB window (above MAX_ZSTD_WINDOW_BYTES)",
        chunk_with(wide_window, codec=Codec.ZSTD, raw=zeros),
        ErrorCode.DECOMPRESSION_FAILED,
    )
    err(
        "chunk-zstd-no-size",
        "zstd frame without a content size",
        chunk_with(zstd_frame(zeros, with_size=False), codec=Codec.ZSTD, raw=zeros),
        ErrorCode.DECOMPRESSION_FAILED,
    )
    err(
        "chunk-zstd-trailing",
        "bytes after the zstd frame",
        chunk_with(zfr + b"\x00\x00", codec=Codec.ZSTD, raw=zeros),
        ErrorCode.DECOMPRESSION_FAILED,
    )
    err(
        "chunk-zstd-garbage",
        "payload is not a zstd frame",
        chunk_with(b"not zstd at all", codec=Codec.ZSTD, raw=zeros),
        ErrorCode.DECOMPRESSION_FAILED,
    )
    err(
        "chunk-too-long",
        f"n above TENSOR_CHUNK_BYTES={TENSOR_CHUNK_BYTES}",
        chunk_with(values, codec=Codec.NONE, raw=values, raw_len=TENSOR_CHUNK_BYTES + 1),
        ErrorCode.MALFORMED_MESSAGE,
    )
    err(
        "chunk-shuffle-bad-multiple",
        "n = 6 is not a multiple of es = 4",
        chunk_with(zstd_frame(values[:6]), codec=Codec.SHUFFLE_ZSTD, es=4, raw=values[:6]),
        ErrorCode.TENSOR_SHAPE_MISMATCH,
    )
    return out


def stream_vectors() -> list[dict[str, Any]]:
    """Header + chunks on one connection -> a tensor, or the assembler's error (05 §5.4 step 3)."""
    u8 = dtype_by_name("uint8")
    raw = bytes([7]) * TENSOR_CHUNK_BYTES + bytes(range(100))
    tensor = RawTensor(u8, (len(raw),), raw)
    header = tensor_header(3, "two-chunks", tensor)
    first, second = tensor_chunks(header, tensor)
    # Chunk 0 as zstd RLE blocks keeps the vector small (1 MiB of one byte).
    first = TensorChunk(
        stream_id=3,
        index=0,
        raw_len=first.raw_len,
        chunk_hash=first.chunk_hash,
        codec=Codec.ZSTD,
        payload=zstd_frame(raw[:TENSOR_CHUNK_BYTES]),
    )
    frames = [encode(header), encode(first), encode(second)]
    other = RawTensor(u8, (len(raw),), bytes(len(raw)))
    foreign = list(tensor_chunks(tensor_header(3, "two-chunks", other), other))[1]
    return [
        {
            "id": "stream-two-chunks",
            "description": "1 MiB + 100 bytes in two chunks, in order",
            "frames": [f.hex() for f in frames],
            "content_hash": header.content_hash.hex(),
            "data_blake3": blake3.blake3(raw).hexdigest(),
        },
        {
            "id": "stream-reversed",
            "description": "the same chunks in reverse order",
            "frames": [frames[0].hex(), frames[2].hex(), frames[1].hex()],
            "content_hash": header.content_hash.hex(),
            "data_blake3": blake3.blake3(raw).hexdigest(),
        },
        {
            "id": "stream-foreign-chunk",
            "description": "a valid chunk whose hash is not the header's entry for its index",
            "frames": [frames[0].hex(), frames[1].hex(), encode(foreign).hex()],
            "error": ErrorCode.HASH_MISMATCH.name,
        },
    ]


def _record(
    key: KeyPair,
    *,
    block: int = 0,
    seq: int,
    ttl_ms: int = 30_000,
    departed: bool = False,
    version: int = 0,
) -> SignedRecord:
    return OwnershipRecord(
        owner_key=key.public_key,
        block=block,
        role="serve",
        version=version,
        content_hash=b"",
        addrs=("127.0.0.1:7000",),
        load=0.25,
        seq=seq,
        ttl_ms=ttl_ms,
        departed=departed,
    ).sign(key)


RECORD_A = _record(KEY_A, seq=100)
Z_F16 = struct.pack("<4e", 0.5, -1.0, 2.0, 0.25)
TRAVERSE_0 = Traverse(
    traversal_id=7,
    client=KEY_B.peer_id.digest,
    reply_addr="127.0.0.1:9000",
    route=(
        Hop(KEY_A.peer_id.digest, "127.0.0.1:7000", 0, 1),
        Hop(KEY_B.peer_id.digest, "127.0.0.1:7001", 2, 3),
    ),
    hop=0,
    config_hash="ab" * 32,
    steps_per_block=1,
    prefix=b"Day 1.",
    span=0,
    seed=5,
    temperature=0.0,
    deadline_ms=10_000,
    want_logits=False,
    z=InlineTensor(1, (0,), 0, chunk_digest(b"")),
)


def ownership_vectors() -> list[dict[str, Any]]:
    """Signed records (07 §7.3) and merge scenarios (07 §7.4)."""
    out: list[dict[str, Any]] = [
        {
            "id": "record-valid",
            "description": "a record signed by its owner",
            "record": RECORD_A.data.hex(),
            "signature": RECORD_A.signature.hex(),
            "signing_input": signing_input(DOMAIN_RECORD, RECORD_A.data).hex(),
            "fields": render(msgpack_profile.unpack(RECORD_A.data)),
        },
        {
            "id": "record-bad-signature",
            "description": "signature by another key",
            "record": RECORD_A.data.hex(),
            "signature": KEY_B.sign(DOMAIN_RECORD, RECORD_A.data).hex(),
            "error": ErrorCode.BAD_SIGNATURE.name,
        },
        {
            "id": "record-envelope-domain",
            "description": "signed under spheroid/v1/envelope",
            "record": RECORD_A.data.hex(),
            "signature": KEY_A.sign(DOMAIN_ENVELOPE, RECORD_A.data).hex(),
            "error": ErrorCode.BAD_SIGNATURE.name,
        },
    ]
    long_ttl = dict(msgpack_profile.unpack(RECORD_A.data), ttl=10**6)
    raw = msgpack_profile.pack(long_ttl)
    out.append(
        {
            "id": "record-ttl-too-long",
            "description": "ttl above MAX_RECORD_TTL_MS",
            "record": raw.hex(),
            "signature": KEY_A.sign(DOMAIN_RECORD, raw).hex(),
            "error": ErrorCode.STALE_RECORD.name,
        }
    )
    with_ctx = OwnershipRecord(
        owner_key=KEY_A.public_key,
        block=2,
        role="serve",
        version=0,
        content_hash=b"",
        addrs=("127.0.0.1:7000",),
        load=0.0,
        seq=101,
        ttl_ms=30_000,
        n_blocks=4,
        config_hash="ab" * 20,
        context=128,
    ).sign(KEY_A)
    out.append(
        {
            "id": "record-with-context",
            "description": "r9: a server's record announcing its model's context (ctx)",
            "record": with_ctx.data.hex(),
            "signature": with_ctx.signature.hex(),
            "signing_input": signing_input(DOMAIN_RECORD, with_ctx.data).hex(),
            "fields": render(msgpack_profile.unpack(with_ctx.data)),
        }
    )
    huge_ctx = msgpack_profile.pack(dict(msgpack_profile.unpack(with_ctx.data), ctx=1 << 30))
    out.append(
        {
            "id": "record-context-too-large",
            "description": "ctx above MAX_CONTEXT_BYTES",
            "record": huge_ctx.hex(),
            "signature": KEY_A.sign(DOMAIN_RECORD, huge_ctx).hex(),
            "error": ErrorCode.MALFORMED_MESSAGE.name,
        }
    )
    bad_role = msgpack_profile.pack(dict(msgpack_profile.unpack(RECORD_A.data), role="boss"))
    out.append(
        {
            "id": "record-bad-role",
            "description": "role is neither serve nor train",
            "record": bad_role.hex(),
            "signature": KEY_A.sign(DOMAIN_RECORD, bad_role).hex(),
            "error": ErrorCode.MALFORMED_MESSAGE.name,
        }
    )

    recs = {
        "a1": _record(KEY_A, seq=1, version=1),
        "a2": _record(KEY_A, seq=2, version=2),
        "a3dep": _record(KEY_A, seq=3, departed=True, ttl_ms=10_000),
        "b1": _record(KEY_B, seq=7, block=1),
        "b1short": _record(KEY_B, seq=8, block=1, ttl_ms=1000),
    }

    def scenario(
        vid: str,
        description: str,
        offers: list[tuple[str, int, float]],
        expire_at: float | None = None,
    ) -> dict[str, Any]:
        table = OwnershipTable(tombstone_s=60.0)
        results = [table.offer(recs[name], remaining, now) for name, remaining, now in offers]
        if expire_at is not None:
            table.expire(expire_at)
        return {
            "id": vid,
            "description": description,
            "records": {
                k: {"record": v.data.hex(), "signature": v.signature.hex()} for k, v in recs.items()
            },
            "offers": [{"record": n, "remaining_ms": r, "now": t} for n, r, t in offers],
            "accepted": results,
            "expire_at": expire_at,
            "table": [
                {
                    "owner": e.record.owner.digest.hex(),
                    "block": e.record.block,
                    "seq": e.record.seq,
                    "expires_at": e.expires_at,
                    "departed": e.record.departed,
                }
                for e in table.entries()
            ],
        }

    out += [
        scenario(
            "merge-newer-wins",
            "a higher seq replaces a lower one; the lower is stale",
            [("a1", 30_000, 0.0), ("a2", 30_000, 1.0), ("a1", 30_000, 2.0)],
        ),
        scenario(
            "merge-order-independent",
            "the same records in the other order",
            [("a2", 30_000, 0.0), ("a1", 30_000, 1.0), ("b1", 30_000, 1.0)],
        ),
        scenario(
            "merge-duplicate",
            "an equal seq is a duplicate and does not refresh expiry",
            [("b1", 5_000, 0.0), ("b1", 30_000, 3.0)],
        ),
        scenario(
            "merge-remaining-capped",
            "a relay's remaining time is capped by the ttl",
            [("b1short", 999_999, 0.0)],
        ),
        scenario(
            "merge-departure",
            "a departure overwrites the owner's record",
            [("a2", 30_000, 0.0), ("a3dep", 10_000, 1.0)],
        ),
        scenario(
            "merge-expiry-tombstone",
            "an expired record does not come back",
            [("b1", 2_000, 0.0), ("b1", 2_000, 2.5)],
            expire_at=2.0,
        ),
    ]
    return out


def session_vectors() -> list[dict[str, Any]]:
    """06 §6.7: the key schedule from fixed ephemeral keys, and A's first frames sealed."""
    from spheroid_p2p.core.session import Sealer, ephemeral_public, session_keys

    a_priv, b_priv = bytes(range(32)), bytes(range(32, 64))
    a_send, a_recv = session_keys(
        a_priv,
        ephemeral_public(b_priv),
        local_id=KEY_A.peer_id.digest,
        peer_id=KEY_B.peer_id.digest,
        local_nonce=NONCE_A,
        peer_nonce=NONCE_B,
    )
    out: list[dict[str, Any]] = [
        {
            "id": "session-keys",
            "description": "HKDF-SHA256 key schedule of 06 §6.7 (A = KEY_A, B = KEY_B)",
            "a_eph_private": a_priv.hex(),
            "b_eph_private": b_priv.hex(),
            "a_eph": ephemeral_public(a_priv).hex(),
            "b_eph": ephemeral_public(b_priv).hex(),
            "a_peer_id": KEY_A.peer_id.digest.hex(),
            "b_peer_id": KEY_B.peer_id.digest.hex(),
            "a_nonce": NONCE_A.hex(),
            "b_nonce": NONCE_B.hex(),
            "a_send_key": a_send.hex(),
            "a_receive_key": a_recv.hex(),
        }
    ]
    sealer = Sealer(a_send)
    for i, nonce in enumerate((1, 2)):
        plain = encode_frame(KEY_A, Ping(nonce=nonce), seq=SEQ + i, timestamp_ms=TS)
        sealed = b"".join(bytes(b) for b in sealer.seal(plain))
        out.append(
            {
                "id": f"sealed-frame-{i}",
                "description": f"A's frame {i} after its HelloAck: PING {nonce}, sealed",
                "frame": b"".join(bytes(b) for b in plain).hex(),
                "sealed": sealed.hex(),
            }
        )
    bad = bytearray(bytes.fromhex(out[-1]["sealed"]))
    bad[10] ^= 0x01
    out.append(
        {
            "id": "sealed-frame-1-tampered",
            "description": "frame 1 with one ciphertext bit flipped",
            "sealed": bytes(bad).hex(),
            "error": "DECRYPTION_FAILED",
        }
    )
    return out


def combine_vectors() -> list[dict[str, Any]]:
    """10 §10.9: one block's step of the combined rules, from its log-probabilities (binary32,
    so that no log_softmax implementation enters) to the lp it passes on (binary16)."""
    import torch

    from spheroid_p2p.ml.combine import combine_step, new_share

    def logp_of(seed: int) -> torch.Tensor:
        x = torch.tensor([((i * 37 + seed * 101) % 97) / 9.0 for i in range(256)])
        return torch.log_softmax(x, dim=-1)[None, None]

    def f16(t: torch.Tensor) -> str:
        return t.contiguous().numpy().astype("<f2").tobytes().hex()

    cases = [
        ("mean-block-0", "cb = 1 at block 0: lp is the log-probabilities, rounded", 1, None, ()),
        ("mean-block-1", "cb = 1 at block 1: the sum", 1, 0, ()),
        ("weighted-block-0", "cb = 2 at block 0 (q 2.25)", 2, None, (2.25,)),
        ("weighted-block-1", "cb = 2 at block 1: q 2.25 then 2.3125", 2, 0, (2.25, 2.3125)),
        ("weighted-block-3", "cb = 2 at block 3, one block unknown (ln 256)", 2, 1,
         (2.25, 2.3125, 5.545177444479562, 2.28)),
        ("mean-floor", "cb = 1 where lp is at the floor: the sum is clamped to -60000", 1, -1,
         ()),
    ]  # fmt: skip
    out = []
    for vid, desc, rule, earlier, lq in cases:
        logp = logp_of(len(out))
        if earlier is None:
            acc = None
        elif earlier < 0:
            acc = torch.full((1, 1, 256), -60000.0, dtype=torch.float16)
        else:
            acc = combine_step(None, logp_of(7 + earlier))
        result = combine_step(acc, logp, lq if rule == 2 else ())
        vector: dict[str, Any] = {
            "id": vid,
            "description": desc,
            "cb": rule,
            "lp": f16(acc) if acc is not None else "",
            "lq": list(lq[:-1]),
            "q": lq[-1] if lq else None,
            "logp": logp.contiguous().numpy().astype("<f4").tobytes().hex(),
            "lp_out": f16(result),
        }
        if rule == 2 and len(lq) > 1:
            vector["share"] = new_share(lq)
        out.append(vector)
    return out


AREAS: dict[str, Callable[[], list[dict[str, Any]]]] = {
    "signing": signing_vectors,
    "framing": framing_vectors,
    "messages": message_vectors,
    "tensor_frames": tensor_vectors,
    "tensor_streams": stream_vectors,
    "ownership_merge": ownership_vectors,
    "session": session_vectors,
    "combine": combine_vectors,
}


def render_area(area: str) -> str:
    doc = {"area": area, "spec_revision": SPEC_REVISION, "vectors": AREAS[area]()}
    return json.dumps(doc, indent=1, sort_keys=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if committed files differ")
    parser.add_argument("--out", type=Path, default=OUT_DIR)
    args = parser.parse_args(argv)
    stale = []
    total = 0
    for area in AREAS:
        text = render_area(area)
        total += len(json.loads(text)["vectors"])
        path = args.out / f"{area}.json"
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(path.name)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    if stale:
        print(
            f"vectors out of date: {', '.join(stale)}; run scripts/gen_vectors.py", file=sys.stderr
        )
        return 1
    print(f"{'checked' if args.check else 'wrote'} {total} vectors in {len(AREAS)} files")
    return 0


if __name__ == "__main__":
    sys.exit(main())
