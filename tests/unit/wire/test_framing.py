"""FrameDecoder: lengths checked before buffering, sticky errors, zero-copy receive path."""

from __future__ import annotations

import struct

import pytest

from spheroid_p2p.errors import ErrorCode, LocalProtocolError, RemoteProtocolError
from spheroid_p2p.params import MAX_FRAME_BYTES
from spheroid_p2p.wire.framing import FrameDecoder, frame_header


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


def test_buffered_protocol_path_receives_in_place() -> None:
    """get_buffer/buffer_updated deliver the same frames as feed, writing into the frame buffer."""
    stream = _frame(b"abc") + _frame(b"x" * 1000)
    decoder = FrameDecoder()
    pos = 0
    while pos < len(stream):
        target = decoder.get_buffer()
        n = min(len(target), 7, len(stream) - pos)
        target[:n] = stream[pos : pos + n]
        decoder.buffer_updated(n)
        pos += n
    assert decoder.next_frame() == b"abc"
    assert decoder.next_frame() == b"x" * 1000
    assert decoder.next_frame() is None
    decoder.eof()


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
