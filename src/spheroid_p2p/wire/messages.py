"""Every message type, by job (spec: ``protocol/03-messages.md`` §3.2 is the registry).

Importing this module registers every type with :mod:`spheroid_p2p.wire.message` (the base:
field tables, checks, the registry), so the codec can decode any of them. Each job has its
own module; this one only gathers them:

* ``control``: HELLO, HELLO_ACK, CLOSE, PING, PONG (06, 01 §1.3);
* ``chunks``: TENSOR_HEADER, TENSOR_CHUNK (05);
* ``gossip``: GOSSIP_SUMMARY, _DIGEST, _RECORDS, _REQUEST, _SUSPECT (07 §7.5-7.6);
* ``status``: STATUS_REQUEST, STATUS_RESPONSE (07 §7.8);
* ``transfer``: VERSION_GET, VERSION_INFO, CHUNK_GET, TRANSFER_ERROR (08);
* ``deltas``: SHARD_DELTA, DELTA_ACK, SHARD_UPDATE (09);
* ``traversal``: TRAVERSE, TRAVERSE_RESULT, TRAVERSE_ERROR (10);
* ``pipeline``: PIPE_STEP, PIPE_RESULT (10 §10.7).
"""

from __future__ import annotations

from spheroid_p2p.wire import deltas as _deltas  # noqa: F401  (registers 09's types)
from spheroid_p2p.wire import pipeline as _pipeline  # noqa: F401  (registers 10.7's types)
from spheroid_p2p.wire import transfer as _transfer  # noqa: F401  (registers 08's types)
from spheroid_p2p.wire import traversal as _traversal  # noqa: F401  (registers 10's types)
from spheroid_p2p.wire.chunks import TensorChunk, TensorHeader, tensor_layout
from spheroid_p2p.wire.control import Close, Hello, HelloAck, Ping, Pong
from spheroid_p2p.wire.gossip import (
    DigestEntry,
    GossipDigest,
    GossipRecords,
    GossipRequest,
    GossipSummary,
    GossipSuspect,
    RelayedRecord,
)
from spheroid_p2p.wire.message import Message, MessageType, message_from_body, registry
from spheroid_p2p.wire.status import ConnView, RecordView, StatusRequest, StatusResponse

__all__ = [
    "Close",
    "ConnView",
    "DigestEntry",
    "GossipDigest",
    "GossipRecords",
    "GossipRequest",
    "GossipSummary",
    "GossipSuspect",
    "Hello",
    "HelloAck",
    "Message",
    "MessageType",
    "Ping",
    "Pong",
    "RecordView",
    "RelayedRecord",
    "StatusRequest",
    "StatusResponse",
    "TensorChunk",
    "TensorHeader",
    "message_from_body",
    "registry",
    "tensor_layout",
]
