"""Frame bodies: the signed envelope around every message (spec: ``protocol/03-messages.md``).

A frame body is a msgpack array of exactly three binaries (§3.1)::

    [ signed: bin, signature: bin(64), payload: bin ]

``signed`` is the msgpack map ``{"v", "t", "pk", "seq", "ts", "body"}``; ``signature`` is
Ed25519 by ``pk`` over ``signing_input(DOMAIN_ENVELOPE, signed)`` (the exact ``signed`` bytes
as transmitted); ``payload`` is the raw section, empty except for tensor chunks, whose
integrity comes from the chunk hash inside ``signed``. Keeping bulk bytes outside the signed
map means signing never touches megabytes, and the receiver can hand the payload on as a
view of its frame buffer without copying it.

The outer array is parsed by hand (it has one fixed shape) so the payload stays a view; any
msgpack decoder reads the same bytes.
"""

from __future__ import annotations

import dataclasses
import struct
from dataclasses import dataclass
from typing import Final

from spheroid_p2p.errors import ErrorCode, RemoteProtocolError
from spheroid_p2p.params import (
    MAX_SIGNED_BYTES,
    PROTOCOL_VERSION,
    PUBLIC_KEY_BYTES,
    SIGNATURE_BYTES,
    SUPPORTED_VERSIONS,
)
from spheroid_p2p.wire import messages as _messages  # noqa: F401  (registers every type)
from spheroid_p2p.wire import msgpack_profile
from spheroid_p2p.wire.chunks import TensorChunk, TensorHeader
from spheroid_p2p.wire.compression import decode_payload
from spheroid_p2p.wire.framing import Buffer, frame_header
from spheroid_p2p.wire.message import Message, message_from_body, registry
from spheroid_p2p.wire.pipeline import PipeStep
from spheroid_p2p.wire.signing import DOMAIN_ENVELOPE, KeyPair, PeerId, verify
from spheroid_p2p.wire.tensors import check_header, chunk_digest
from spheroid_p2p.wire.traversal import Traverse, TraverseResult, verify_inline

__all__ = [
    "Envelope",
    "decode_frame",
    "encode_frame",
    "encode_signed",
    "frame_body_parts",
    "verify_chunk",
]

_ARRAY3: Final = 0x93
_U64: Final = 2**64 - 1


@dataclass(frozen=True, slots=True)
class Envelope:
    """A decoded, signature-checked frame. ``signed`` keeps the exact bytes that were signed."""

    version: int
    sender_key: bytes
    seq: int
    timestamp_ms: int
    message: Message
    signed: bytes
    signature: bytes

    @property
    def sender(self) -> PeerId:
        """The peer id of the signer."""
        return PeerId.from_public_key(self.sender_key)


def _bin_header(length: int) -> bytes:
    if length < 0x100:
        return struct.pack(">BB", 0xC4, length)
    if length < 0x10000:
        return struct.pack(">BH", 0xC5, length)
    return struct.pack(">BI", 0xC6, length)


def encode_signed(
    key: KeyPair, message: Message, *, seq: int, timestamp_ms: int, version: int = PROTOCOL_VERSION
) -> bytes:
    """The msgpack ``signed`` section for ``message`` from ``key``'s owner."""
    return msgpack_profile.pack(
        {
            "v": version,
            "t": int(message.TYPE),
            "pk": key.public_key,
            "seq": seq,
            "ts": timestamp_ms,
            "body": message.to_body(),
        }
    )


def frame_body_parts(signed: bytes, signature: bytes, payload: Buffer) -> list[Buffer]:
    """Assemble a frame (length prefix included) from its three sections, without copying
    the payload: the result is a list of buffers for ``writelines``."""
    head = b"".join(
        (
            bytes((_ARRAY3,)),
            _bin_header(len(signed)),
            signed,
            _bin_header(len(signature)),
            signature,
            _bin_header(len(payload)),
        )
    )
    prefix = frame_header(len(head) + len(payload))
    return [prefix + head, payload] if len(payload) else [prefix + head]


def encode_frame(
    key: KeyPair, message: Message, *, seq: int, timestamp_ms: int, version: int = PROTOCOL_VERSION
) -> list[Buffer]:
    """Sign ``message`` and return its whole frame as a list of buffers (payload not copied)."""
    signed = encode_signed(key, message, seq=seq, timestamp_ms=timestamp_ms, version=version)
    signature = key.sign(DOMAIN_ENVELOPE, signed)
    payload = getattr(message, "payload", b"") if message.HAS_PAYLOAD else b""
    return frame_body_parts(signed, signature, payload)


def _read_bin(view: memoryview, pos: int, what: str) -> tuple[memoryview, int]:
    end = len(view)
    if pos >= end:
        raise RemoteProtocolError(f"frame body ends before {what}", ErrorCode.MALFORMED_FRAME)
    tag = view[pos]
    widths = {0xC4: 1, 0xC5: 2, 0xC6: 4}
    width = widths.get(tag)
    if width is None:
        raise RemoteProtocolError(
            f"{what} is not a msgpack bin (type byte {tag:#04x})", ErrorCode.MALFORMED_FRAME
        )
    if pos + 1 + width > end:
        raise RemoteProtocolError(f"frame body ends inside {what}", ErrorCode.MALFORMED_FRAME)
    length = int.from_bytes(view[pos + 1 : pos + 1 + width], "big")
    start = pos + 1 + width
    if start + length > end:
        raise RemoteProtocolError(
            f"{what} declares {length} bytes, only {end - start} remain", ErrorCode.MALFORMED_FRAME
        )
    return view[start : start + length], start + length


def _int_field(fields: dict[str, object], key: str, maximum: int = _U64) -> int:
    value = fields.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= maximum:
        raise RemoteProtocolError(
            f"envelope field {key!r} must be an integer in 0..{maximum}",
            ErrorCode.MALFORMED_MESSAGE,
        )
    return value


def _bytes_field(fields: dict[str, object], key: str) -> bytes:
    value = fields.get(key)
    if not isinstance(value, bytes):
        raise RemoteProtocolError(
            f"envelope field {key!r} must be bin", ErrorCode.MALFORMED_MESSAGE
        )
    return value


def _map_field(fields: dict[str, object], key: str) -> dict[str, object]:
    value = fields.get(key)
    if not isinstance(value, dict):
        raise RemoteProtocolError(
            f"envelope field {key!r} must be a map", ErrorCode.MALFORMED_MESSAGE
        )
    return value


def _verify_content(message: Message, verify_chunks: bool = True) -> Message:
    """Check what a message says about tensor content (§5.4).

    A header's content hash must match its chunk hashes; a chunk's payload is decoded
    (bounded by its declared length) and must hash to its signed chunk hash, unless the
    caller defers that to :func:`verify_chunk` (``verify_chunks=False``).
    """
    if isinstance(message, TensorHeader):
        return check_header(message)
    if isinstance(message, Traverse):
        return dataclasses.replace(message, z=verify_inline(message.z))
    if isinstance(message, PipeStep):
        return dataclasses.replace(message, hidden=verify_inline(message.hidden))
    if isinstance(message, TraverseResult) and message.logits is not None:
        return dataclasses.replace(message, logits=verify_inline(message.logits))
    if isinstance(message, TensorChunk) and verify_chunks:
        return verify_chunk(message)
    return message


def verify_chunk(message: TensorChunk) -> TensorChunk:
    """Decode a chunk's payload and check it against its chunk hash; the result carries the
    raw bytes in ``data``. Raises ``RemoteProtocolError`` (``HASH_MISMATCH``, or the codec's
    error). A receiver that hashes on a worker thread decodes frames with
    ``verify_chunks=False`` and calls this before using the chunk."""
    raw = decode_payload(message.payload, message.codec, message.raw_len, message.elem_size)
    if chunk_digest(raw) != message.chunk_hash:
        raise RemoteProtocolError(
            f"chunk {message.index} of stream {message.stream_id} does not match its hash",
            ErrorCode.HASH_MISMATCH,
        )
    return TensorChunk(
        stream_id=message.stream_id,
        index=message.index,
        raw_len=message.raw_len,
        chunk_hash=message.chunk_hash,
        codec=message.codec,
        elem_size=message.elem_size,
        payload=message.payload,
        data=raw,
    )


def decode_frame(
    body: Buffer, *, verify_chunks: bool = True, only: frozenset[int] | None = None
) -> Envelope:
    """Decode and verify one frame body (no length prefix). Raises ``RemoteProtocolError`` only.

    With ``verify_chunks=False`` a ``TensorChunk``'s payload is not yet decoded or hashed
    (its ``data`` is empty): the caller must pass it through :func:`verify_chunk`.

    ``only``: the message types the connection's state allows (before the handshake: HELLO,
    HELLO_ACK, CLOSE). Another known type is ``PROTOCOL_VIOLATION``, raised before its body is
    decoded, so nothing is decompressed or hashed for a peer that has not authenticated (§3.4
    step 7a).

    Checks run in the order of §3.4, so every malformed input has exactly one error code:
    outer structure, signed-section msgpack, envelope fields, version, signature, message
    type, message fields, payload.
    """
    view = memoryview(body).cast("B")
    if len(view) == 0 or view[0] != _ARRAY3:
        raise RemoteProtocolError(
            "frame body is not a msgpack array of three elements", ErrorCode.MALFORMED_FRAME
        )
    signed_view, pos = _read_bin(view, 1, "the signed section")
    signature_view, pos = _read_bin(view, pos, "the signature")
    payload, pos = _read_bin(view, pos, "the payload")
    if pos != len(view):
        raise RemoteProtocolError(
            f"{len(view) - pos} trailing bytes after the frame's three sections",
            ErrorCode.MALFORMED_FRAME,
        )
    if len(signed_view) > MAX_SIGNED_BYTES:
        raise RemoteProtocolError(
            f"signed section of {len(signed_view)} bytes exceeds {MAX_SIGNED_BYTES}",
            ErrorCode.MALFORMED_FRAME,
        )
    if len(signature_view) != SIGNATURE_BYTES:
        raise RemoteProtocolError(
            f"signature is {len(signature_view)} bytes, want {SIGNATURE_BYTES}",
            ErrorCode.MALFORMED_FRAME,
        )
    signed = bytes(signed_view)
    fields = msgpack_profile.unpack(signed)
    if not isinstance(fields, dict):
        raise RemoteProtocolError("signed section is not a map", ErrorCode.MALFORMED_MESSAGE)
    version = _int_field(fields, "v", 0xFFFF)
    type_code = _int_field(fields, "t", 0xFFFF)
    public_key = _bytes_field(fields, "pk")
    seq = _int_field(fields, "seq")
    timestamp_ms = _int_field(fields, "ts")
    message_body = _map_field(fields, "body")
    if len(public_key) != PUBLIC_KEY_BYTES:
        raise RemoteProtocolError(
            f"public key is {len(public_key)} bytes, want {PUBLIC_KEY_BYTES}",
            ErrorCode.MALFORMED_MESSAGE,
        )
    if version not in SUPPORTED_VERSIONS:
        raise RemoteProtocolError(
            f"envelope version {version} is not supported (supported: {list(SUPPORTED_VERSIONS)})",
            ErrorCode.UNSUPPORTED_VERSION,
        )
    signature = bytes(signature_view)
    verify(public_key, signature, DOMAIN_ENVELOPE, signed)
    if only is not None and type_code not in only and type_code in registry():
        raise RemoteProtocolError(
            f"message type {type_code:#x} before the handshake", ErrorCode.PROTOCOL_VIOLATION
        )
    message = message_from_body(
        type_code,
        message_body,
        payload,
        post=lambda m: _verify_content(m, verify_chunks),
    )
    return Envelope(
        version=version,
        sender_key=public_key,
        seq=seq,
        timestamp_ms=timestamp_ms,
        message=message,
        signed=signed,
        signature=signature,
    )
