"""FrameDecoder: lengths checked before buffering, sticky errors, zero-copy receive path."""

from __future__ import annotations

import struct

import pytest

from spheroid_p2p.errors import ErrorCode, LocalProtocolError, RemoteProtocolError
from spheroid_p2p.params import MAX_FRAME_BYTES
from spheroid_p2p.wire.framing import DIRECT_READ_MIN, FrameDecoder, frame_header


def _frame(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


def test_oversized_length_is_refused_before_any_body_byte() -> None:
    """The decoder raises on the 4th header byte; it never allocates the body."""
    decoder = FrameDecoder()
    with pytest.raises(RemoteProtocolError) as info:
        decoder.feed(struct.pack(">I", MAX_FRAME_BYTES + 1))
    assert info.value.code is ErrorCode.FRAME_TOO_LARGE
    assert decoder.buffered_bytes == 4


def test_errors_are_sticky() -> None:
    """After an error every call raises the same code."""
    decoder = FrameDecoder()
    with pytest.raises(RemoteProtocolError):
        decoder.feed(b"\x00\x00\x00\x00")
    for call in (lambda: decoder.feed(b"x"), decoder.eof, lambda: decoder.get_buffer()):
        with pytest.raises(RemoteProtocolError) as info:
            call()
        assert info.value.code is ErrorCode.MALFORMED_FRAME


@pytest.mark.parametrize("read_size", [1, 7, 4096, DIRECT_READ_MIN, 10**6])
def test_buffered_protocol_path_gives_the_same_frames(read_size: int) -> None:
    """get_buffer/buffer_updated deliver the same frames as feed, however reads are sized."""
    big = bytes(range(256)) * (3 * DIRECT_READ_MIN // 256 + 5)
    stream = _frame(b"abc") + _frame(big) + _frame(b"x" * 1000) + _frame(big[::-1])
    decoder = FrameDecoder()
    pos = 0
    while pos < len(stream):
        target = decoder.get_buffer()
        n = min(len(target), read_size, len(stream) - pos)
        target[:n] = stream[pos : pos + n]
        decoder.buffer_updated(n)
        pos += n
    assert [decoder.next_frame() for _ in range(5)] == [b"abc", big, b"x" * 1000, big[::-1], None]
    decoder.eof()


def test_large_bodies_are_received_in_place() -> None:
    """Once a big frame's header is in, get_buffer hands out the body itself (no copy)."""
    big = b"y" * (2 * DIRECT_READ_MIN)
    decoder = FrameDecoder()
    decoder.feed(_frame(big)[:100])
    target = decoder.get_buffer()
    assert len(target) == len(big) - 96  # exactly the rest of this frame's body
    target[:] = big[96:]
    decoder.buffer_updated(len(target))
    assert decoder.next_frame() == big


def test_custom_limit_applies() -> None:
    """A smaller max_frame_bytes is enforced."""
    decoder = FrameDecoder(max_frame_bytes=10)
    decoder.feed(_frame(b"0123456789"))
    assert decoder.next_frame() == b"0123456789"
    with pytest.raises(RemoteProtocolError):
        decoder.feed(_frame(b"0123456789a"))


def test_we_never_encode_a_bad_length() -> None:
    """frame_header refuses zero and oversized bodies as a local error."""
    with pytest.raises(LocalProtocolError):
        frame_header(0)
    with pytest.raises(LocalProtocolError):
        frame_header(MAX_FRAME_BYTES + 1)
