"""What each peer may ask of this node (security.md §S.4): per-peer buckets and refusals.

Every request type spends from one bucket of ``core.limits.REQUEST_RATES``, charged by what it
costs us (a record batch one per record: each is a signature check; a traversal one per
block-step). A request past its peer's bucket is refused on the connection it came from (never
by dialling), and the peer is not read for a while, so TCP's flow control slows it down.
"""

from __future__ import annotations

import logging
import time

from spheroid_p2p.core.limits import PeerLimits
from spheroid_p2p.errors import ErrorCode, code_name
from spheroid_p2p.net.peers import PeerManager
from spheroid_p2p.node.serving import traverse_error
from spheroid_p2p.wire.deltas import DeltaAck, ShardDelta, ShardUpdate
from spheroid_p2p.wire.gossip import (
    GossipDigest,
    GossipRecords,
    GossipRequest,
    GossipSummary,
    GossipSuspect,
)
from spheroid_p2p.wire.message import Message
from spheroid_p2p.wire.pipeline import PipeStep
from spheroid_p2p.wire.signing import PeerId
from spheroid_p2p.wire.status import StatusRequest
from spheroid_p2p.wire.transfer import ChunkGet, TransferError, VersionGet, VersionInfo
from spheroid_p2p.wire.traversal import Traverse

__all__ = ["Intake"]

log = logging.getLogger(__name__)

#: Which bucket of core.limits.REQUEST_RATES each request type spends from.
RATE_KINDS: dict[type[Message], str] = {
    StatusRequest: "status",
    GossipRecords: "gossip",
    GossipSuspect: "gossip",
    # each of these makes us send a digest or records: a tighter bucket bounds amplification
    GossipSummary: "gossip_sync",
    GossipDigest: "gossip_sync",
    GossipRequest: "gossip_sync",
    Traverse: "traverse",
    PipeStep: "traverse",
    VersionGet: "version_get",
    ChunkGet: "chunk_get",
    ShardDelta: "delta",
    ShardUpdate: "update",
}
#: How long the node stops reading from a peer that exceeded one of its buckets.
THROTTLE_S = 0.25


def cost(message: Message) -> float:
    """Tokens a request spends: a record batch one per record, a chunk request one per
    chunk, a traversal one per block-step it asks for, anything else one."""
    if isinstance(message, GossipRecords):
        return float(max(1, len(message.records)))
    if isinstance(message, ChunkGet):
        return float(max(1, len(message.indices)))
    if isinstance(message, Traverse):
        hop = message.route[message.hop]
        return float(message.steps_per_block * (hop.last_block - hop.first_block + 1))
    return 1.0


class Intake:
    """Per-peer request buckets, and refusals answered on the request's own connection."""

    def __init__(self, peers: PeerManager, tag: str) -> None:
        self.peers = peers
        self.tag = tag
        self.limits: PeerLimits[PeerId] = PeerLimits()

    def admit(self, peer: PeerId, message: Message) -> bool:
        """Whether ``message`` is within ``peer``'s budget; if not, it is refused and the
        peer throttled."""
        kind = RATE_KINDS.get(type(message))
        if isinstance(message, VersionInfo) and message.request_id == 0:
            kind = "version_push"  # unasked: each may start a fetch (answers are not charged)
        if kind is None or self.limits.allow(peer, kind, time.monotonic(), cost(message)):
            return True
        self.refuse(peer, message, "request rate limit")
        self.peers.throttle(peer, THROTTLE_S)  # read no more of it for a while
        return False

    def refuse(
        self, peer: PeerId, message: Message, reason: str, code: ErrorCode = ErrorCode.OVERLOADED
    ) -> None:
        """Answer a request we will not serve on the connection it came from, or drop it
        when its type has no answer (gossip, status)."""
        log.debug("[%s] refusing %s from %s: %s", self.tag, type(message).__name__, peer, reason)
        self.peers.traffic.reject(code_name(code))
        answer: Message | None = None
        if isinstance(message, Traverse | PipeStep):
            answer = traverse_error(message, self.peers.me.digest, code, reason)
        elif isinstance(message, VersionGet | ChunkGet):
            answer = TransferError(request_id=message.request_id, code=int(code), reason=reason)
        elif isinstance(message, ShardDelta):
            answer = DeltaAck(
                stream_id=message.stream_id,
                block=message.block,
                round=message.round,
                code=int(code),
                reason=reason,
            )
        if answer is not None:
            self.peers.send(peer, answer)

    def forget(self, peer: PeerId) -> None:
        self.limits.forget(peer)
