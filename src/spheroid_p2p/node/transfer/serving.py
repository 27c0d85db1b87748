"""Serving the sets this node holds (08 §8.4): ``VERSION_GET`` and ``CHUNK_GET``.

A version is answered with its full manifest (signed by whoever published it: the weights
hash is what counts); chunks are read from the blob's memory map and sent one ``TENSOR_CHUNK``
each, compressed on a worker thread when the requester asked for a codec and it shrinks the
chunk, behind the connection's bulk backpressure (01 §1.4).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from spheroid_p2p.errors import ErrorCode
from spheroid_p2p.node.transfer.codecs import encode_chunk
from spheroid_p2p.node.transfer.common import BulkLink, elem_size
from spheroid_p2p.wire.chunks import TensorChunk
from spheroid_p2p.wire.dtypes import Codec
from spheroid_p2p.wire.signing import PeerId
from spheroid_p2p.wire.transfer import ChunkGet, TransferError, VersionGet, VersionInfo

if TYPE_CHECKING:
    from spheroid_p2p.node.store import VersionStore

__all__ = ["ChunkServer"]


class ChunkServer:
    """Answers version and chunk requests from this node's store."""

    def __init__(self, link: BulkLink, store: VersionStore) -> None:
        self.link = link
        self.store = store
        self.bytes_served = 0

    def version(self, peer: PeerId, req: VersionGet) -> None:
        stored = self.store.full(req.block, req.weights)
        if stored is None:
            what = req.weights.hex()[:12] if req.weights else "any version"
            self.link.send(
                peer,
                TransferError(
                    request_id=req.request_id,
                    code=int(ErrorCode.VERSION_UNKNOWN),
                    reason=f"block {req.block}: {what} not held here",
                ),
            )
            return
        self.link.send(peer, VersionInfo(request_id=req.request_id, manifest=stored.signed))

    async def chunks(self, peer: PeerId, req: ChunkGet) -> None:
        """Send the chunks ``req`` asks for; stops when the connection goes."""
        stored = self.store.get(req.weights)
        if stored is None or any(i >= len(stored.spans) for i in req.indices):
            self.link.send(
                peer,
                TransferError(
                    request_id=req.request_id,
                    code=int(ErrorCode.VERSION_UNKNOWN),
                    reason=f"set {req.weights.hex()[:12]} not held here",
                ),
            )
            return
        for index in req.indices:
            span = stored.spans[index]
            elem = elem_size(stored.manifest.tensors[span.tensor].dtype)
            codec, payload = await encode_chunk(stored.chunk(index), Codec(req.codec), elem)
            msg = TensorChunk(
                stream_id=req.request_id,
                index=index,
                raw_len=span.length,
                chunk_hash=span.digest,
                codec=codec,
                elem_size=elem if codec == Codec.SHUFFLE_ZSTD else 1,
                payload=payload,
            )
            if not await self.link.send_bulk(peer, msg):
                return
            self.bytes_served += len(payload)
