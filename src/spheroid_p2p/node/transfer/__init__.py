"""Moving tensor sets between peers (08, 09), one module per job.

* ``serving``: answering ``VERSION_GET`` and ``CHUNK_GET`` from the store;
* ``fetching``: fetching a set from several holders at once into its place in the store;
* ``streams``: the streams a node opens itself (shard deltas and updates), out and in;
* ``codecs``: which codec a transfer uses (measured link rates and codec speed);
* ``common``: their errors, results, and the link they send through.

:class:`Transfers` routes the messages of 08 and 09 to them (:meth:`Transfers.handle`), tells
them about closed connections (:meth:`Transfers.lost`), and owns what they share: the request
table (ids with bit 63 set), the codec choice and the worker thread on which received chunks
are hashed and put in place, so the event loop only receives frames and checks signatures
(the node's connections decode frames with ``verify_chunks=False`` for this).
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING

from spheroid_p2p.errors import ErrorCode, SpheroidError, code_name
from spheroid_p2p.net.requests import RequestTable
from spheroid_p2p.node.transfer.codecs import Codecs
from spheroid_p2p.node.transfer.common import (
    BulkLink,
    FetchError,
    FetchResult,
    VersionRejected,
)
from spheroid_p2p.node.transfer.fetching import Fetch, Fetches
from spheroid_p2p.node.transfer.serving import ChunkServer
from spheroid_p2p.node.transfer.streams import InStream, Payload, Streams
from spheroid_p2p.wire.chunks import TensorChunk
from spheroid_p2p.wire.deltas import DeltaAck, ShardDelta, ShardUpdate
from spheroid_p2p.wire.manifests import KIND_FULL, SignedManifest
from spheroid_p2p.wire.message import Message
from spheroid_p2p.wire.signing import PeerId
from spheroid_p2p.wire.transfer import (
    REQUEST_ID_BIT,
    ChunkGet,
    TransferError,
    VersionGet,
    VersionInfo,
)

if TYPE_CHECKING:
    from spheroid_p2p.core.fetch import FetchParams
    from spheroid_p2p.node.admission import SetCheck
    from spheroid_p2p.node.store import VersionStore

__all__ = [
    "FetchError",
    "FetchResult",
    "InStream",
    "Payload",
    "Transfers",
    "VersionRejected",
]

#: How long a manifest request may take.
MANIFEST_TIMEOUT_S = 10.0


class Transfers:
    """One node's tensor-set traffic."""

    def __init__(
        self,
        link: BulkLink,
        store: VersionStore,
        tag: str,
        *,
        spawn: Callable[[Coroutine[object, object, None], str], bool],
        compression: str = "auto",
    ) -> None:
        self.link = link
        self.store = store
        #: runs a peer's request as a guarded task (the node's TaskGroup)
        self.spawn = spawn
        self.codecs = Codecs(compression)
        self.requests: RequestTable[object] = RequestTable(REQUEST_ID_BIT)
        # one thread: chunk hashing and placing overlap the network, in arrival order
        self.worker = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="chunks")
        self.server = ChunkServer(link, store)
        self.fetches = Fetches(link, store, self.codecs, self.requests, self.worker, tag)
        self.streams = Streams(link, self.codecs, self.worker, tag)
        #: the round code: a shard delta or update header arrived (it admits or refuses it)
        self.on_stream: Callable[[PeerId, ShardDelta | ShardUpdate], None] | None = None
        #: a version pushed to us (VERSION_INFO with id 0)
        self.on_manifest: Callable[[PeerId, SignedManifest], None] | None = None

    def close(self) -> None:
        """Stop the worker thread (queued chunk jobs are dropped)."""
        self.worker.shutdown(wait=False, cancel_futures=True)

    # -- dispatch -----------------------------------------------------------------------------
    def handle(self, peer: PeerId, message: Message) -> bool:
        """Take a message of 08/09; False if it is not ours."""
        if isinstance(message, TensorChunk):
            if message.stream_id & REQUEST_ID_BIT:
                self.fetches.chunk(peer, message)
            else:
                self.streams.chunk(peer, message)
        elif isinstance(message, ChunkGet):
            self.spawn(self.server.chunks(peer, message), f"chunks for {peer}")
        elif isinstance(message, VersionGet):
            self.server.version(peer, message)
        elif isinstance(message, VersionInfo):
            if message.request_id:
                self.requests.resolve(peer, message.request_id, message)
            elif self.on_manifest is not None:
                self.on_manifest(peer, message.manifest)
        elif isinstance(message, TransferError):
            target = self.requests.target(peer, message.request_id)
            if isinstance(target, Fetch):
                self.requests.pop(message.request_id)
                self.fetches.refused(peer, target, message)
            else:
                self.requests.resolve(peer, message.request_id, message)
        elif isinstance(message, ShardDelta | ShardUpdate):
            if self.on_stream is not None:
                self.on_stream(peer, message)
            elif isinstance(message, ShardDelta):
                self.streams.ack(peer, message, ErrorCode.DELTA_REJECTED, "not training")
        elif isinstance(message, DeltaAck):
            self.streams.acked(peer, message)
        else:
            return False
        return True

    def lost(self, peer: PeerId, code: int) -> None:
        """The connection to ``peer`` closed (``code`` as in its Close)."""
        self.fetches.peer_lost(peer, code)
        self.requests.peer_lost(peer)
        self.streams.peer_lost(peer)

    # -- asking -------------------------------------------------------------------------------
    async def get_manifest(self, peer: PeerId, block: int, weights: bytes = b"") -> SignedManifest:
        """The full manifest of ``block`` (these weights, or the newest) held by ``peer``."""
        try:
            answer = await self.requests.ask(
                peer,
                lambda rid: self.link.send(
                    peer, VersionGet(request_id=rid, block=block, weights=weights)
                ),
                MANIFEST_TIMEOUT_S,
            )
        except (SpheroidError, TimeoutError) as exc:  # not connected, gone, or no answer
            raise FetchError(f"{peer.short()}: no manifest: {exc or type(exc).__name__}") from exc
        if isinstance(answer, TransferError):
            raise FetchError(f"{peer.short()}: {code_name(answer.code)}: {answer.reason}")
        assert isinstance(answer, VersionInfo)
        m = answer.manifest.manifest
        if m.block != block or m.kind != KIND_FULL or (weights and m.content != weights):
            raise FetchError(f"{peer.short()} answered with another version")
        return answer.manifest

    def push_manifest(self, peer: PeerId, signed: SignedManifest) -> bool:
        return self.link.send(peer, VersionInfo(request_id=0, manifest=signed))

    async def fetch(
        self,
        signed: SignedManifest,
        holders: list[PeerId],
        *,
        params: FetchParams | None = None,
        timeout_s: float = 600.0,
        on_chunk: Callable[[int], None] | None = None,
        check: SetCheck | None = None,
    ) -> FetchResult:
        """Fetch a set from its holders and install it (:meth:`Fetches.fetch`)."""
        return await self.fetches.fetch(
            signed, holders, params=params, timeout_s=timeout_s, on_chunk=on_chunk, check=check
        )

    # -- counters -------------------------------------------------------------------------------
    @property
    def bytes_served(self) -> int:
        return self.server.bytes_served

    @property
    def bytes_fetched(self) -> int:
        return self.fetches.bytes_fetched
