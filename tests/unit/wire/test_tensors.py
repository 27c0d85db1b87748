"""Tensor streams: round trips with every codec, out-of-order assembly, resumable gaps."""

from __future__ import annotations

import random
import struct

import pytest

from spheroid_p2p.errors import ErrorCode, RemoteProtocolError
from spheroid_p2p.params import TENSOR_CHUNK_BYTES
from spheroid_p2p.wire.chunks import TensorChunk, TensorHeader
from spheroid_p2p.wire.codec import decode_frame, encode_frame
from spheroid_p2p.wire.compression import shuffle, unshuffle
from spheroid_p2p.wire.dtypes import Codec, dtype_by_name
from spheroid_p2p.wire.framing import join_frame
from spheroid_p2p.wire.signing import KeyPair
from spheroid_p2p.wire.tensors import RawTensor, TensorAssembler, tensor_chunks, tensor_header

KEY = KeyPair.from_seed(bytes(range(32)))


def _wire(message: object) -> object:
    frame = join_frame(encode_frame(KEY, message, seq=1, timestamp_ms=1))  # type: ignore[arg-type]
    return decode_frame(frame[4:]).message


@pytest.mark.parametrize("codec", list(Codec))
def test_tensor_round_trip_every_codec(codec: Codec) -> None:
    """A 2.5-chunk float32 tensor survives encode -> wire -> assemble with each codec."""
    rng = random.Random(0)
    n = (TENSOR_CHUNK_BYTES * 5 // 2) // 4
    # Smooth values compress under shuffle+zstd; the point is a faithful round trip.
    data = struct.pack(f"<{n}f", *(round(rng.gauss(0, 1), 2) for _ in range(n)))
    tensor = RawTensor(dtype_by_name("float32"), (n,), data)
    header = tensor_header(5, "w", tensor)
    chunks = list(tensor_chunks(header, tensor, codec))
    assert len(chunks) == 3
    received = _wire(header)
    assert isinstance(received, TensorHeader)
    assembler = TensorAssembler(received)
    for chunk in reversed(chunks):
        decoded = _wire(chunk)
        assert isinstance(decoded, TensorChunk)
        assembler.add(decoded)
    assert bytes(assembler.result().data) == data
    if codec != Codec.NONE:
        assert any(c.codec == codec for c in chunks), "compressible data should be compressed"


def test_incompressible_chunks_fall_back_to_raw() -> None:
    """Random bytes gain nothing from zstd, so every chunk is sent with codec none."""
    data = random.Random(1).randbytes(TENSOR_CHUNK_BYTES + 10)
    tensor = RawTensor(dtype_by_name("uint8"), (len(data),), data)
    chunks = list(tensor_chunks(tensor_header(1, "r", tensor), tensor, Codec.ZSTD))
    assert [c.codec for c in chunks] == [Codec.NONE, Codec.NONE]


def test_assembler_reports_missing_chunks_and_ignores_duplicates() -> None:
    """missing lists what a resumed transfer still needs; a resent chunk changes nothing."""
    data = bytes(3 * TENSOR_CHUNK_BYTES)
    tensor = RawTensor(dtype_by_name("uint8"), (len(data),), data)
    header = tensor_header(2, "z", tensor)
    chunks = [_wire(c) for c in tensor_chunks(header, tensor)]
    assembler = TensorAssembler(header)
    assembler.add(chunks[1])  # type: ignore[arg-type]
    assert assembler.missing == [0, 2]
    with pytest.raises(RemoteProtocolError) as info:
        assembler.result()
    assert info.value.code is ErrorCode.PROTOCOL_VIOLATION
    assembler.add(chunks[1])  # type: ignore[arg-type]
    assembler.add(chunks[0])  # type: ignore[arg-type]
    assert assembler.add(chunks[2]) is True  # type: ignore[arg-type]


def test_chunk_of_another_stream_is_refused() -> None:
    """A chunk whose stream id differs from the header's is a protocol violation."""
    tensor = RawTensor(dtype_by_name("uint8"), (4,), b"abcd")
    header = tensor_header(1, "a", tensor)
    other = tensor_header(2, "a", tensor)
    (chunk,) = [_wire(c) for c in tensor_chunks(other, tensor)]
    with pytest.raises(RemoteProtocolError) as info:
        TensorAssembler(header).add(chunk)  # type: ignore[arg-type]
    assert info.value.code is ErrorCode.PROTOCOL_VIOLATION


def test_raw_tensor_checks_its_length() -> None:
    """RawTensor refuses data whose length does not match dtype and shape."""
    with pytest.raises(ValueError):
        RawTensor(dtype_by_name("float32"), (3,), b"\x00" * 8)


@pytest.mark.parametrize("elem_size", [1, 2, 4, 8])
def test_shuffle_is_invertible(elem_size: int) -> None:
    """unshuffle(shuffle(x)) == x for every element size."""
    data = random.Random(elem_size).randbytes(elem_size * 37)
    assert bytes(unshuffle(shuffle(data, elem_size), elem_size)) == data
