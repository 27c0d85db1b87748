"""Hypothesis properties of the codec: chunking invariance, round trips, and fuzzed input."""

from __future__ import annotations

import contextlib
import itertools
import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spheroid_p2p.errors import RemoteProtocolError
from spheroid_p2p.wire.codec import decode_frame, encode_frame
from spheroid_p2p.wire.control import Close, Hello, Ping
from spheroid_p2p.wire.framing import FrameDecoder, join_frame
from spheroid_p2p.wire.signing import KeyPair
from tests.support.vectors import load

KEY = KeyPair.from_seed(bytes(range(32)))
VALID_BODIES = [
    bytes.fromhex(v["bytes"])
    for area in ("messages", "tensor_frames")
    for v in load(area)
    if "error" not in v
]
SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(
    bodies=st.lists(st.binary(min_size=1, max_size=300), max_size=6),
    cuts=st.lists(st.integers(min_value=0, max_value=2000), max_size=20),
)
def test_frames_do_not_depend_on_how_the_stream_is_cut(
    bodies: list[bytes], cuts: list[int]
) -> None:
    """Any split of a stream of frames yields exactly the original frame bodies."""
    stream = b"".join(struct.pack(">I", len(b)) + b for b in bodies)
    points = sorted({c for c in cuts if c < len(stream)} | {0, len(stream)})
    decoder = FrameDecoder()
    out: list[bytes] = []
    for start, end in itertools.pairwise(points):
        decoder.feed(stream[start:end])
        while (frame := decoder.next_frame()) is not None:
            out.append(bytes(frame))
    decoder.eof()
    assert out == bodies


@SETTINGS
@given(data=st.binary(max_size=400))
def test_random_bytes_raise_only_protocol_errors(data: bytes) -> None:
    """decode_frame on arbitrary bytes either decodes or raises RemoteProtocolError."""
    with contextlib.suppress(RemoteProtocolError):
        decode_frame(data)


@SETTINGS
@given(
    index=st.integers(min_value=0, max_value=len(VALID_BODIES) - 1),
    edits=st.lists(
        st.tuples(
            st.sampled_from(["flip", "insert", "delete", "truncate"]),
            st.integers(min_value=0, max_value=10**6),
            st.integers(min_value=0, max_value=255),
        ),
        min_size=1,
        max_size=4,
    ),
)
def test_mutated_valid_frames_raise_only_protocol_errors(
    index: int, edits: list[tuple[str, int, int]]
) -> None:
    """Flipping, inserting, deleting or truncating bytes of valid frames never escapes the
    protocol error hierarchy (no IndexError, UnicodeDecodeError, zstd or msgpack exceptions)."""
    data = bytearray(VALID_BODIES[index])
    for op, pos, value in edits:
        if not data:
            break
        pos %= len(data)
        if op == "flip":
            data[pos] ^= value or 1
        elif op == "insert":
            data.insert(pos, value)
        elif op == "delete":
            del data[pos]
        else:
            del data[pos:]
    with contextlib.suppress(RemoteProtocolError):
        decode_frame(bytes(data))


@SETTINGS
@given(
    versions=st.lists(st.integers(0, 0xFFFF), min_size=1, max_size=5).map(tuple),
    caps=st.lists(st.text(max_size=20), max_size=5).map(tuple),
    nonce=st.binary(min_size=32, max_size=32),
    agent=st.text(max_size=50),
    seq=st.integers(0, 2**64 - 1),
    ts=st.integers(0, 2**64 - 1),
)
def test_hello_round_trips(
    versions: tuple[int, ...], caps: tuple[str, ...], nonce: bytes, agent: str, seq: int, ts: int
) -> None:
    """Any valid Hello decodes to an equal message with the same seq, ts and sender."""
    message = Hello(versions=versions, capabilities=caps, nonce=nonce, agent=agent)
    env = decode_frame(join_frame(encode_frame(KEY, message, seq=seq, timestamp_ms=ts))[4:])
    assert env.message == message
    assert (env.seq, env.timestamp_ms, env.sender) == (seq, ts, KEY.peer_id)


@SETTINGS
@given(code=st.integers(0, 0xFFFF), reason=st.text(max_size=100), nonce=st.integers(0, 2**64 - 1))
def test_control_messages_round_trip(code: int, reason: str, nonce: int) -> None:
    """Close (with codes outside the registry) and Ping round-trip unchanged."""
    for message in (Close(code=code, reason=reason), Ping(nonce=nonce)):
        frame = join_frame(encode_frame(KEY, message, seq=1, timestamp_ms=1))
        assert decode_frame(frame[4:]).message == message
