"""Chunk transfer messages (spec: ``protocol/08-checkpoints.md`` §8.4): VERSION_GET and its
answer VERSION_INFO (also pushed, with id 0), CHUNK_GET answered by ``TENSOR_CHUNK`` frames,
and TRANSFER_ERROR.

Stream ids of ``TENSOR_CHUNK`` frames: a chunk answering a ``CHUNK_GET`` carries the request's
id, which has bit 63 set (:data:`REQUEST_ID_BIT`); a stream its sender opens (a delta, a shard
update) has an id with bit 63 clear. The two kinds can never collide on one connection.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Final

from spheroid_p2p.errors import ErrorCode, LocalProtocolError, RemoteProtocolError
from spheroid_p2p.params import CONTENT_HASH_BYTES, MAX_CHUNKS_PER_REQUEST, MAX_VERSION_CHUNKS
from spheroid_p2p.wire.dtypes import Codec
from spheroid_p2p.wire.manifests import SignedManifest
from spheroid_p2p.wire.message import (
    Body,
    Message,
    MessageType,
    bad,
    check_bytes,
    check_str,
    check_uint,
    get_field,
    register,
    wire,
)

__all__ = ["REQUEST_ID_BIT", "ChunkGet", "TransferError", "VersionGet", "VersionInfo"]

REQUEST_ID_BIT: Final = 1 << 63


# -- requests ----------------------------------------------------------------------------------
def _check_request_id(value: object) -> None:
    check_uint("request id", value)
    assert isinstance(value, int)
    if not value & REQUEST_ID_BIT:
        raise bad("request ids have bit 63 set (08 §8.4)")


@register
@dataclass(frozen=True, slots=True, kw_only=True)
class VersionGet(Message):
    """Ask for a full manifest of ``block`` whose weights hash is ``weights`` (empty: the
    newest the peer holds). The answer may be signed by any holder: the hash is what counts."""

    TYPE: ClassVar[MessageType] = MessageType.VERSION_GET
    request_id: int = wire("id")
    block: int = wire("b")
    weights: bytes = wire("w", b"", required=True)

    def __post_init__(self) -> None:
        _check_request_id(self.request_id)
        check_uint("block", self.block, 0xFFFE)
        check_bytes("weights", self.weights)
        if len(self.weights) not in (0, CONTENT_HASH_BYTES):
            raise bad("weights is empty or a 32-byte hash")


@register
@dataclass(frozen=True, slots=True, kw_only=True)
class VersionInfo(Message):
    """A signed manifest: the answer to ``VERSION_GET`` (``request_id``), or pushed (0)."""

    TYPE: ClassVar[MessageType] = MessageType.VERSION_INFO
    request_id: int
    manifest: SignedManifest

    def __post_init__(self) -> None:
        check_uint("request id", self.request_id)

    def to_body(self) -> Body:
        return {"id": self.request_id, "m": self.manifest.data, "s": self.manifest.signature}

    @classmethod
    def from_body(cls, body: Mapping[str, Any], payload: memoryview) -> VersionInfo:
        data, sig = get_field(body, "m"), get_field(body, "s")
        check_bytes("manifest", data)
        check_bytes("signature", sig)
        try:
            manifest = SignedManifest.decode(data, sig)
        except RemoteProtocolError as exc:
            raise LocalProtocolError(str(exc.args[0]), exc.code) from exc
        return cls(request_id=get_field(body, "id"), manifest=manifest)


@register
@dataclass(frozen=True, slots=True, kw_only=True)
class ChunkGet(Message):
    """Ask for chunks of the version ``weights``; answered by ``TENSOR_CHUNK`` frames whose
    stream id is ``request_id`` and whose index is the global chunk index, in any order."""

    TYPE: ClassVar[MessageType] = MessageType.CHUNK_GET
    request_id: int = wire("id")
    weights: bytes = wire("w")
    indices: tuple[int, ...] = wire("ix", array=True)
    codec: int = wire("c", int(Codec.NONE))

    def __post_init__(self) -> None:
        _check_request_id(self.request_id)
        check_bytes("weights", self.weights, CONTENT_HASH_BYTES)
        if not isinstance(self.indices, tuple) or not 0 < len(self.indices) <= (
            MAX_CHUNKS_PER_REQUEST
        ):
            raise bad(f"a request names 1..{MAX_CHUNKS_PER_REQUEST} chunks")
        for index in self.indices:
            check_uint("chunk index", index, MAX_VERSION_CHUNKS - 1)
        if self.codec not in {c.value for c in Codec}:
            raise bad(f"unknown codec id {self.codec}", ErrorCode.UNKNOWN_CODEC)


@register
@dataclass(frozen=True, slots=True, kw_only=True)
class TransferError(Message):
    """A ``VERSION_GET`` or ``CHUNK_GET`` cannot be served (``VERSION_UNKNOWN``, ``OVERLOADED``)."""

    TYPE: ClassVar[MessageType] = MessageType.TRANSFER_ERROR
    request_id: int = wire("id")
    code: int = wire("code")
    reason: str = wire("why")

    def __post_init__(self) -> None:
        check_uint("request id", self.request_id)
        check_uint("code", self.code, 0xFFFF)
        check_str("reason", self.reason)
