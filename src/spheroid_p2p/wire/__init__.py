"""The pure wire codec: bytes <-> typed, signed messages. No sockets, clocks, asyncio or torch.

Spec: ``protocol/`` (framing 01, encoding 02, messages 03, signing 04, tensor frames 05).
"""

from __future__ import annotations

from spheroid_p2p.wire.chunks import TensorChunk, TensorHeader
from spheroid_p2p.wire.codec import Envelope, decode_frame, encode_frame
from spheroid_p2p.wire.control import Close, Hello, HelloAck, Ping, Pong
from spheroid_p2p.wire.dtypes import DTYPES, Codec, DType, dtype_by_name
from spheroid_p2p.wire.framing import FrameDecoder
from spheroid_p2p.wire.message import Message, MessageType
from spheroid_p2p.wire.signing import KeyPair, PeerId
from spheroid_p2p.wire.tensors import RawTensor, TensorAssembler, tensor_chunks, tensor_header

__all__ = [
    "DTYPES",
    "Close",
    "Codec",
    "DType",
    "Envelope",
    "FrameDecoder",
    "Hello",
    "HelloAck",
    "KeyPair",
    "Message",
    "MessageType",
    "PeerId",
    "Ping",
    "Pong",
    "RawTensor",
    "TensorAssembler",
    "TensorChunk",
    "TensorHeader",
    "decode_frame",
    "dtype_by_name",
    "encode_frame",
    "tensor_chunks",
    "tensor_header",
]
