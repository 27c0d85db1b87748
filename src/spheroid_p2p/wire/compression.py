"""Chunk payload codecs: none, zstd, and byte-shuffle + zstd (spec: 05-tensor-frames.md §5.3).

Decoding is bounded before any allocation: a zstd payload must be exactly one zstd frame
whose header declares exactly the chunk's raw length (itself at most ``TENSOR_CHUNK_BYTES``,
checked when the message was decoded) and a window of at most ``MAX_ZSTD_WINDOW_BYTES``. It
is inflated in one shot into a buffer of that length, so a "zstd bomb" that declares one
size and expands to more is refused when the buffer is full, never after inflating; trailing
bytes after the frame are an error.
"""

from __future__ import annotations

import zstandard

from spheroid_p2p.errors import ErrorCode, RemoteProtocolError
from spheroid_p2p.params import MAX_ZSTD_WINDOW_BYTES
from spheroid_p2p.wire.dtypes import Codec
from spheroid_p2p.wire.framing import Buffer

__all__ = ["decode_payload", "encode_payload", "shuffle", "unshuffle"]

_DCTX = zstandard.ZstdDecompressor(max_window_size=MAX_ZSTD_WINDOW_BYTES)


def shuffle(data: Buffer, elem_size: int) -> bytes:
    """Group byte ``k`` of every element together, for k = 0..elem_size-1 (§5.3)."""
    view = memoryview(data).cast("B")
    if elem_size == 1:
        return bytes(view)
    return b"".join(view[k::elem_size].tobytes() for k in range(elem_size))


def unshuffle(data: Buffer, elem_size: int) -> bytearray:
    """Inverse of :func:`shuffle`."""
    view = memoryview(data).cast("B")
    out = bytearray(len(view))
    if elem_size == 1:
        out[:] = view
        return out
    count = len(view) // elem_size
    for k in range(elem_size):
        out[k::elem_size] = view[k * count : (k + 1) * count]
    return out


def encode_payload(raw: Buffer, codec: Codec, elem_size: int = 1, level: int = 1) -> Buffer:
    """Encode one chunk's raw bytes with ``codec``. ``NONE`` returns ``raw`` itself (no copy)."""
    if codec == Codec.NONE:
        return raw
    cctx = zstandard.ZstdCompressor(level=level, write_content_size=True)
    if codec == Codec.ZSTD:
        return cctx.compress(raw)
    return cctx.compress(shuffle(raw, elem_size))


def decode_payload(payload: Buffer, codec: int, raw_len: int, elem_size: int = 1) -> Buffer:
    """Decode a chunk payload to exactly ``raw_len`` raw bytes; raises ``RemoteProtocolError``."""
    if codec == Codec.NONE:
        if len(payload) != raw_len:
            raise RemoteProtocolError(
                f"uncompressed payload is {len(payload)} bytes, chunk declares {raw_len}",
                ErrorCode.TENSOR_SHAPE_MISMATCH,
            )
        return payload
    if codec not in (Codec.ZSTD, Codec.SHUFFLE_ZSTD):
        raise RemoteProtocolError(f"unknown codec id {codec}", ErrorCode.UNKNOWN_CODEC)
    try:
        declared = zstandard.frame_content_size(payload)
    except zstandard.ZstdError as exc:
        raise RemoteProtocolError(
            f"not a zstd frame: {exc}", ErrorCode.DECOMPRESSION_FAILED
        ) from exc
    if declared != raw_len:
        what = "no content size" if declared < 0 else f"a content size of {declared} bytes"
        raise RemoteProtocolError(
            f"zstd frame declares {what}, chunk declares {raw_len}",
            ErrorCode.DECOMPRESSION_FAILED,
        )
    window = zstandard.get_frame_parameters(payload).window_size
    if window > MAX_ZSTD_WINDOW_BYTES:
        raise RemoteProtocolError(
            f"zstd frame declares a {window}-byte window, above {MAX_ZSTD_WINDOW_BYTES}",
            ErrorCode.DECOMPRESSION_FAILED,
        )
    try:
        # One-shot into a buffer of exactly ``raw_len`` bytes: a frame whose blocks expand
        # beyond the size it declares fails when the buffer is full ("destination buffer is
        # too small"), never after inflating; a window above MAX_ZSTD_WINDOW_BYTES is refused
        # before any allocation, and bytes after the frame are an error.
        out = _DCTX.decompress(payload, max_output_size=raw_len, allow_extra_data=False)
    except zstandard.ZstdError as exc:
        raise RemoteProtocolError(
            f"zstd frame is corrupt or expands beyond {raw_len} bytes: {exc}",
            ErrorCode.DECOMPRESSION_FAILED,
        ) from exc
    if len(out) != raw_len:
        raise RemoteProtocolError(
            f"zstd frame decoded to {len(out)} of {raw_len} bytes",
            ErrorCode.DECOMPRESSION_FAILED,
        )
    return unshuffle(out, elem_size) if codec == Codec.SHUFFLE_ZSTD else out
