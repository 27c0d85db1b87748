"""Every conformance vector in protocol/vectors, run against the codec (whole and byte by byte)."""

from __future__ import annotations

import random
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import blake3
import pytest

from spheroid_p2p.errors import ErrorCode, RemoteProtocolError
from spheroid_p2p.wire.chunks import TensorChunk, TensorHeader
from spheroid_p2p.wire.codec import decode_frame
from spheroid_p2p.wire.framing import FrameDecoder
from spheroid_p2p.wire.signing import DOMAINS, KeyPair, PeerId, signing_input
from spheroid_p2p.wire.tensors import TensorAssembler
from tests.support.vectors import VECTOR_DIR, envelope_fields, load, outcome

ROOT = Path(__file__).resolve().parents[2]
FRAME_AREAS = ["messages", "tensor_frames"]


def _frame_vectors() -> list[Any]:
    return [pytest.param(v, id=f"{area}/{v['id']}") for area in FRAME_AREAS for v in load(area)]


def _check(vector: dict[str, Any], result: tuple[str, Any]) -> None:
    kind, value = result
    if "error" in vector:
        assert kind == "error", f"decoded, but the vector expects {vector['error']}"
        assert value == vector["error"]
        return
    assert kind == "ok", f"expected a valid frame, got {value}"
    if vector["fields"] is not None:
        assert envelope_fields(value) == vector["fields"]
    if "data" in vector:
        assert isinstance(value.message, TensorChunk)
        assert bytes(value.message.data).hex() == vector["data"]


@pytest.mark.parametrize("vector", _frame_vectors())
def test_frame_vector_whole(vector: dict[str, Any]) -> None:
    """A frame body decodes to the vector's fields, or fails with exactly its error code."""
    _check(vector, outcome(bytes.fromhex(vector["bytes"])))


@pytest.mark.parametrize("vector", _frame_vectors())
def test_frame_vector_byte_by_byte(vector: dict[str, Any]) -> None:
    """The same vector, length-prefixed and fed to the stream decoder one byte at a time."""
    body = bytes.fromhex(vector["bytes"])
    stream = struct.pack(">I", len(body)) + body
    decoder = FrameDecoder()
    for i in range(len(stream)):
        decoder.feed(stream[i : i + 1])
    frame = decoder.next_frame()
    assert frame is not None and decoder.next_frame() is None
    decoder.eof()
    _check(vector, outcome(frame))


def _run_stream(stream: bytes, splits: list[int]) -> tuple[list[str], str | None]:
    decoder = FrameDecoder()
    frames: list[str] = []
    error = None
    try:
        pos = 0
        for cut in [*splits, len(stream)]:
            decoder.feed(stream[pos:cut])
            pos = cut
            while (frame := decoder.next_frame()) is not None:
                frames.append(bytes(frame).hex())
        decoder.eof()
    except RemoteProtocolError as exc:
        error = exc.code.name
    while (frame := decoder.next_frame()) is not None:
        frames.append(bytes(frame).hex())
    return frames, error


@pytest.mark.parametrize("vector", [pytest.param(v, id=v["id"]) for v in load("framing")])
@pytest.mark.parametrize("split", ["whole", "bytes", "random"])
def test_framing_vector(vector: dict[str, Any], split: str) -> None:
    """Stream vectors give the same frames and error however the bytes are chunked."""
    stream = bytes.fromhex(vector["stream"])
    if split == "whole":
        cuts: list[int] = []
    elif split == "bytes":
        cuts = list(range(1, len(stream)))
    else:
        rng = random.Random(vector["id"])
        cuts = sorted(rng.sample(range(1, len(stream)), min(7, max(len(stream) - 1, 0))))
    frames, error = _run_stream(stream, cuts)
    assert frames == vector.get("frames", [])
    assert error == vector.get("error")


@pytest.mark.parametrize("vector", [pytest.param(v, id=v["id"]) for v in load("tensor_streams")])
def test_tensor_stream_vector(vector: dict[str, Any]) -> None:
    """Header and chunks assemble into the tensor with the right hash, or fail with the code."""
    assembler = None
    try:
        for hex_frame in vector["frames"]:
            message = decode_frame(bytes.fromhex(hex_frame)).message
            if isinstance(message, TensorHeader):
                assembler = TensorAssembler(message)
            else:
                assert isinstance(message, TensorChunk) and assembler is not None
                assembler.add(message)
    except RemoteProtocolError as exc:
        assert exc.code.name == vector["error"]
        return
    assert "error" not in vector
    assert assembler is not None and assembler.complete
    assert assembler.header.content_hash.hex() == vector["content_hash"]
    assert blake3.blake3(bytes(assembler.result().data)).hexdigest() == vector["data_blake3"]


@pytest.mark.parametrize("vector", [pytest.param(v, id=v["id"]) for v in load("signing")])
def test_signing_vector(vector: dict[str, Any]) -> None:
    """Peer id derivation, text form, signing input and Ed25519 signatures match the vectors."""
    if "seed" in vector:
        key = KeyPair.from_seed(bytes.fromhex(vector["seed"]))
        assert key.public_key.hex() == vector["public_key"]
        assert key.peer_id.digest.hex() == vector["peer_id"]
        assert key.peer_id.to_text() == vector["peer_id_text"]
        assert PeerId.from_text(vector["peer_id_text"]) == key.peer_id
        return
    domain = vector["domain"].encode()
    assert domain in DOMAINS
    data = bytes.fromhex(vector["data"])
    assert signing_input(domain, data).hex() == vector["signing_input"]
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    Ed25519PublicKey.from_public_bytes(bytes.fromhex(vector["public_key"])).verify(
        bytes.fromhex(vector["signature"]), bytes.fromhex(vector["signing_input"])
    )


def test_vector_files_are_what_the_generator_writes() -> None:
    """The committed vectors equal the generator's output (CI fails on a stale file)."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_vectors.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_enough_vectors_and_every_decode_error_code_has_one() -> None:
    """At least 40 vectors, and a negative vector for every code the decoder can raise."""
    all_vectors = [v for f in VECTOR_DIR.glob("*.json") for v in load(f.stem)]
    assert len(all_vectors) >= 40
    seen = {v["error"] for v in all_vectors if "error" in v}
    decoder_codes = {
        ErrorCode.FRAME_TOO_LARGE,
        ErrorCode.FRAME_TRUNCATED,
        ErrorCode.MALFORMED_FRAME,
        ErrorCode.MALFORMED_MESSAGE,
        ErrorCode.UNKNOWN_MESSAGE_TYPE,
        ErrorCode.UNSUPPORTED_VERSION,
        ErrorCode.BAD_SIGNATURE,
        ErrorCode.UNKNOWN_DTYPE,
        ErrorCode.UNKNOWN_CODEC,
        ErrorCode.TENSOR_SHAPE_MISMATCH,
        ErrorCode.TENSOR_LIMIT,
        ErrorCode.DECOMPRESSION_FAILED,
        ErrorCode.HASH_MISMATCH,
    }
    assert {c.name for c in decoder_codes} <= seen


def test_every_message_type_has_a_valid_vector() -> None:
    """Each registered message type appears in at least one valid vector."""
    from spheroid_p2p.wire.message import registry

    valid = [v for area in FRAME_AREAS for v in load(area) if "error" not in v]
    types = {decode_frame(bytes.fromhex(v["bytes"])).message.TYPE for v in valid}
    assert types == {cls.TYPE for cls in registry().values()}


def _ownership(kind: str) -> list[Any]:
    return [
        pytest.param(v, id=v["id"])
        for v in load("ownership_merge")
        if ("offers" in v) == (kind == "merge")
    ]


@pytest.mark.parametrize("vector", _ownership("record"))
def test_record_vector(vector: dict[str, Any]) -> None:
    """Signed ownership records verify and decode, or fail with exactly their code."""
    from spheroid_p2p.wire.records import SignedRecord

    data, sig = bytes.fromhex(vector["record"]), bytes.fromhex(vector["signature"])
    try:
        SignedRecord.decode(data, sig)
    except RemoteProtocolError as exc:
        assert exc.code.name == vector["error"]
        return
    assert "error" not in vector
    from spheroid_p2p.wire.signing import DOMAIN_RECORD

    assert signing_input(DOMAIN_RECORD, data).hex() == vector["signing_input"]


@pytest.mark.parametrize("vector", _ownership("merge"))
def test_merge_vector(vector: dict[str, Any]) -> None:
    """Offering the records in the given order yields the given acceptances and table."""
    from spheroid_p2p.core.ownership import OwnershipTable
    from spheroid_p2p.wire.records import SignedRecord

    records = {
        k: SignedRecord.decode(bytes.fromhex(v["record"]), bytes.fromhex(v["signature"]))
        for k, v in vector["records"].items()
    }
    table = OwnershipTable(tombstone_s=60.0)
    accepted = [
        table.offer(records[o["record"]], o["remaining_ms"], o["now"]) for o in vector["offers"]
    ]
    if vector["expire_at"] is not None:
        table.expire(vector["expire_at"])
    assert accepted == vector["accepted"]
    assert [
        {
            "owner": e.record.owner.digest.hex(),
            "block": e.record.block,
            "seq": e.record.seq,
            "expires_at": e.expires_at,
            "departed": e.record.departed,
        }
        for e in table.entries()
    ] == vector["table"]


def test_session_vectors() -> None:
    """06 §6.7: both sides derive the same keys; B opens A's sealed frames in order into the
    plain frames; a flipped bit is DECRYPTION_FAILED."""
    from spheroid_p2p.core.session import Sealer, ephemeral_public, session_keys

    vectors = {v["id"]: v for v in load("session")}
    k = vectors["session-keys"]
    h = bytes.fromhex
    a_priv, b_priv = h(k["a_eph_private"]), h(k["b_eph_private"])
    assert ephemeral_public(a_priv).hex() == k["a_eph"]
    assert ephemeral_public(b_priv).hex() == k["b_eph"]

    def keys(me: str, other: str) -> tuple[bytes, bytes]:
        return session_keys(
            h(k[f"{me}_eph_private"]),
            h(k[f"{other}_eph"]),
            local_id=h(k[f"{me}_peer_id"]),
            peer_id=h(k[f"{other}_peer_id"]),
            local_nonce=h(k[f"{me}_nonce"]),
            peer_nonce=h(k[f"{other}_nonce"]),
        )

    a, b = keys("a", "b"), keys("b", "a")
    assert (a[0].hex(), a[1].hex()) == (k["a_send_key"], k["a_receive_key"])
    assert b == (a[1], a[0])
    opener = Sealer(b[1])
    for i in (0, 1):
        v = vectors[f"sealed-frame-{i}"]
        sealed = h(v["sealed"])
        assert int.from_bytes(sealed[:4], "big") == len(sealed) - 4
        body = opener.open(sealed[4:])
        assert body == h(v["frame"])[4:]
        decode_frame(body)  # a valid frame inside
    tampered = h(vectors["sealed-frame-1-tampered"]["sealed"])
    again = Sealer(b[1])
    again.open(h(vectors["sealed-frame-0"]["sealed"])[4:])
    with pytest.raises(RemoteProtocolError) as err:
        again.open(tampered[4:])
    assert err.value.code.name == "DECRYPTION_FAILED"


@pytest.mark.parametrize("vector", load("combine"), ids=lambda v: v["id"])
def test_combine_vector(vector: dict[str, Any]) -> None:
    """10 §10.9: one block's step of a combined rule gives exactly the lp bytes of the vector
    (binary32 arithmetic, the share in binary64, rounded to binary16)."""
    import torch

    from spheroid_p2p.ml.combine import combine_step, new_share

    logp = torch.frombuffer(bytearray.fromhex(vector["logp"]), dtype=torch.float32)
    acc = None
    if vector["lp"]:
        acc = torch.frombuffer(bytearray.fromhex(vector["lp"]), dtype=torch.float16)
        acc = acc.view(1, 1, 256)
    lq = (*vector["lq"], vector["q"]) if vector["cb"] == 2 else ()
    out = combine_step(acc, logp.view(1, 1, 256), lq)
    assert out.numpy().astype("<f2").tobytes().hex() == vector["lp_out"]
    if "share" in vector:
        assert new_share(lq) == vector["share"]
