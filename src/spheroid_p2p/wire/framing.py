"""Length-prefixed framing (spec: ``protocol/01-framing.md``).

A frame is a 4-byte big-endian unsigned length ``L`` followed by ``L`` bytes of frame body,
with ``1 <= L <= MAX_FRAME_BYTES``. The length is checked as soon as its 4 bytes arrive, before
any of the body is buffered, so a hostile peer cannot make us allocate more than one maximum
frame.

:class:`FrameDecoder` is a sans-I/O streaming decoder. It yields the same frames however the
input is split (whole, one byte at a time, or at random points); the conformance and property
tests check exactly that. It offers two ways in:

* ``feed(data)``: copy bytes received from anywhere (one copy, into the frame's own buffer);
* ``get_buffer()`` / ``buffer_updated(n)``: the ``asyncio.BufferedProtocol`` shape, where the
  transport receives straight into the frame buffer (no copy at all).

Once it raises, the decoder stays broken: every later call raises the same error, as the
connection is about to be closed with that code.
"""

from __future__ import annotations

import struct
from collections import deque
from collections.abc import Sequence
from typing import Final

from spheroid_p2p.errors import ErrorCode, LocalProtocolError, RemoteProtocolError
from spheroid_p2p.params import FRAME_HEADER_BYTES, MAX_FRAME_BYTES

__all__ = ["Buffer", "FrameDecoder", "frame_header", "join_frame"]

#: Anything we accept as bytes without copying.
Buffer = bytes | bytearray | memoryview

_LENGTH: Final = struct.Struct(">I")


def frame_header(body_len: int, max_frame_bytes: int = MAX_FRAME_BYTES) -> bytes:
    """Return the 4-byte prefix for a body of ``body_len`` bytes (we never send bad lengths)."""
    if not 1 <= body_len <= max_frame_bytes:
        raise LocalProtocolError(
            f"frame body of {body_len} bytes is outside 1..{max_frame_bytes}",
            ErrorCode.FRAME_TOO_LARGE,
        )
    return _LENGTH.pack(body_len)


def join_frame(parts: Sequence[Buffer]) -> bytes:
    """Concatenate the buffers of one encoded frame (tests, vectors; sockets take the list)."""
    return b"".join(parts)


class FrameDecoder:
    """Split a byte stream into frame bodies. Raises ``RemoteProtocolError`` only."""

    __slots__ = ("_body", "_body_len", "_error", "_filled", "_frames", "_header", "_max")

    def __init__(self, max_frame_bytes: int = MAX_FRAME_BYTES) -> None:
        self._max = max_frame_bytes
        self._header = bytearray(FRAME_HEADER_BYTES)
        self._body: bytearray | None = None  # None while the header is being read
        self._body_len = 0
        self._filled = 0  # bytes filled in the header or the body being read
        self._frames: deque[bytearray] = deque()
        self._error: RemoteProtocolError | None = None

    # -- input ----------------------------------------------------------------------------
    def feed(self, data: Buffer) -> None:
        """Append received bytes; complete frames become available from :meth:`next_frame`."""
        self._raise_if_broken()
        view = memoryview(data).cast("B")
        pos = 0
        end = len(view)
        while pos < end:
            target = self._target()
            take = min(len(target), end - pos)
            target[:take] = view[pos : pos + take]
            pos += take
            self._advance(take)

    def get_buffer(self, sizehint: int = -1) -> memoryview:
        """Writable view of where the next received bytes belong (``BufferedProtocol``)."""
        self._raise_if_broken()
        return self._target()

    def buffer_updated(self, nbytes: int) -> None:
        """Record that ``nbytes`` were written into the view from :meth:`get_buffer`."""
        self._raise_if_broken()
        self._advance(nbytes)

    def eof(self) -> None:
        """The peer closed its side. Raises ``FRAME_TRUNCATED`` if a frame was cut short."""
        self._raise_if_broken()
        if self._filled or self._body is not None:
            have = self._filled + (FRAME_HEADER_BYTES if self._body is not None else 0)
            self._fail(
                f"stream ended inside a frame ({have} bytes of it received)",
                ErrorCode.FRAME_TRUNCATED,
            )

    # -- output ---------------------------------------------------------------------------
    def next_frame(self) -> bytearray | None:
        """The next complete frame body, or ``None`` if more bytes are needed."""
        return self._frames.popleft() if self._frames else None

    @property
    def buffered_bytes(self) -> int:
        """Bytes held for the frame in progress (its declared size once the header is in)."""
        return self._body_len if self._body is not None else self._filled

    # -- internals ------------------------------------------------------------------------
    def _target(self) -> memoryview:
        if self._body is None:
            return memoryview(self._header)[self._filled :]
        return memoryview(self._body)[self._filled :]

    def _advance(self, nbytes: int) -> None:
        self._filled += nbytes
        if self._body is None:
            if self._filled < FRAME_HEADER_BYTES:
                return
            (length,) = _LENGTH.unpack(self._header)
            if length == 0:
                self._fail("zero-length frame", ErrorCode.MALFORMED_FRAME)
            if length > self._max:
                self._fail(
                    f"frame length {length} exceeds the limit of {self._max} bytes",
                    ErrorCode.FRAME_TOO_LARGE,
                )
            self._body = bytearray(length)
            self._body_len = length
            self._filled = 0
        elif self._filled == self._body_len:
            self._frames.append(self._body)
            self._body = None
            self._body_len = 0
            self._filled = 0

    def _fail(self, message: str, code: ErrorCode) -> None:
        self._error = RemoteProtocolError(message, code)
        raise self._error

    def _raise_if_broken(self) -> None:
        if self._error is not None:
            raise RemoteProtocolError(str(self._error.args[0]), self._error.code)
