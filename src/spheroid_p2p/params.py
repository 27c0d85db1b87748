"""Protocol constants and limits, mirroring the Parameters tables of ``protocol/``.

Every limit a peer enforces on input is a named constant here, with the same name, value and
unit as in the spec. ``tests/conformance/test_spec_params.py`` parses the spec tables and checks
that they agree with this module, so the two cannot drift.
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "CONTENT_HASH_BYTES",
    "FRAME_HEADER_BYTES",
    "HANDSHAKE_NONCE_BYTES",
    "HANDSHAKE_TIMEOUT_S",
    "INT8_BLOCK_ELEMS",
    "MAX_ADDRS",
    "MAX_ADDR_LEN",
    "MAX_ARRAY_LEN",
    "MAX_BIN_LEN",
    "MAX_CHUNKS_PER_REQUEST",
    "MAX_CLOCK_SKEW_MS",
    "MAX_COMBINED_ROWS",
    "MAX_CONTEXT_BYTES",
    "MAX_FRAME_BYTES",
    "MAX_GOSSIP_BATCH_BYTES",
    "MAX_MANIFEST_BYTES",
    "MAX_MAP_LEN",
    "MAX_MSGPACK_DEPTH",
    "MAX_PREFIX_SESSIONS",
    "MAX_PREFIX_SESSIONS_PER_CLIENT",
    "MAX_PREFIX_SESSION_BYTES",
    "MAX_QUALITY",
    "MAX_RECORDS_PER_ANSWER",
    "MAX_RECORDS_PER_MESSAGE",
    "MAX_RECORDS_PER_OWNER",
    "MAX_RECORD_TTL_MS",
    "MAX_REPORT_ENTRIES",
    "MAX_ROUTE_HOPS",
    "MAX_SHARDS",
    "MAX_SIGNED_BYTES",
    "MAX_STATUS_CONNECTIONS",
    "MAX_STATUS_JOBS",
    "MAX_STATUS_RECORDS",
    "MAX_STR_LEN",
    "MAX_TABLE_RECORDS",
    "MAX_TENSOR_BYTES",
    "MAX_TENSOR_CHUNKS",
    "MAX_TENSOR_DIMS",
    "MAX_TRAJECTORY_ROWS",
    "MAX_UPDATES_PER_SHARD",
    "MAX_VERSION_CHUNKS",
    "MAX_VERSION_TENSORS",
    "MAX_WEIGHTED_BLOCKS",
    "MAX_ZSTD_WINDOW_BYTES",
    "PREFIX_SESSION_IDLE_S",
    "PROTOCOL_VERSION",
    "PUBLIC_KEY_BYTES",
    "SESSION_KEY_BYTES",
    "SESSION_TAG_BYTES",
    "SHARD_ALIGN_ELEMS",
    "SIGNATURE_BYTES",
    "SUPPORTED_VERSIONS",
    "TENSOR_CHUNK_BYTES",
    "WEIGHT_TEMPERATURE",
]

# --- 01-framing.md ---------------------------------------------------------------------------
#: Size of the big-endian length prefix in front of every frame.
FRAME_HEADER_BYTES: Final = 4
#: Largest frame body. One tensor chunk (1 MiB raw, at most a little more once zstd-framed)
#: plus its envelope fits; so a control frame waits behind at most ~2 MiB of bulk data.
MAX_FRAME_BYTES: Final = 2 * 1024 * 1024 + 64 * 1024
#: Largest signed section (the msgpack envelope). Control messages are small; the largest
#: legitimate one is a tensor header listing 1024 chunk hashes (about 36 KiB).
MAX_SIGNED_BYTES: Final = 64 * 1024

# --- 02-encoding.md --------------------------------------------------------------------------
MAX_MSGPACK_DEPTH: Final = 8
MAX_STR_LEN: Final = 4096
MAX_BIN_LEN: Final = 48 * 1024
MAX_ARRAY_LEN: Final = 4096
MAX_MAP_LEN: Final = 64
#: Longest address text (02 §2.4): a 253-character DNS name, ':' and a five-digit port.
MAX_ADDR_LEN: Final = 259
#: Addresses in one record or HELLO.
MAX_ADDRS: Final = 8

# --- 04-identity-and-signing.md --------------------------------------------------------------
PUBLIC_KEY_BYTES: Final = 32
SIGNATURE_BYTES: Final = 64
#: A frame whose timestamp is further than this from the receiver's wall clock is rejected.
MAX_CLOCK_SKEW_MS: Final = 5 * 60 * 1000

# --- 05-tensor-frames.md ---------------------------------------------------------------------
#: Uncompressed bytes per chunk (the last chunk may be shorter).
TENSOR_CHUNK_BYTES: Final = 1024 * 1024
#: Largest tensor one stream may carry (1 GiB); bigger checkpoints are several tensors.
MAX_TENSOR_BYTES: Final = 1024 * 1024 * 1024
MAX_TENSOR_CHUNKS: Final = MAX_TENSOR_BYTES // TENSOR_CHUNK_BYTES
MAX_TENSOR_DIMS: Final = 8
#: Largest zstd window a chunk's frame may declare (a 1 MiB chunk never needs more).
MAX_ZSTD_WINDOW_BYTES: Final = 2 * 1024 * 1024
CONTENT_HASH_BYTES: Final = 32

# --- 06-handshake.md -------------------------------------------------------------------------
PROTOCOL_VERSION: Final = 1
SUPPORTED_VERSIONS: Final = (1,)
HANDSHAKE_NONCE_BYTES: Final = 32
#: Time allowed for the whole handshake, from connection open to DONE.
HANDSHAKE_TIMEOUT_S: Final = 10.0
#: X25519 public key in a HELLO's ``eph`` (§6.7), and the AES-GCM tag on every sealed frame.
SESSION_KEY_BYTES: Final = 32
SESSION_TAG_BYTES: Final = 16

# --- 07-ownership-gossip.md ------------------------------------------------------------------
#: Longest validity a record may claim; a record asking for more is dropped (STALE_RECORD),
#: so a dead peer's records vanish within this bound even if relays misbehave.
MAX_RECORD_TTL_MS: Final = 300_000
#: Records in one GOSSIP_RECORDS message (the rest goes in the next message).
MAX_RECORDS_PER_MESSAGE: Final = 256
#: Records one node holds (§7.4.1); its digest (about 47 bytes a record) then fits one frame.
MAX_TABLE_RECORDS: Final = 1024
#: Records of one owner a node holds (one per block it serves or trains).
MAX_RECORDS_PER_OWNER: Final = 16
#: Bytes of relayed records a node puts in one GOSSIP_RECORDS message (the rest goes in the
#: next), so a batch never approaches MAX_SIGNED_BYTES however long the records are.
MAX_GOSSIP_BATCH_BYTES: Final = 48 * 1024
#: Records one node sends in answer to one GOSSIP_DIGEST or GOSSIP_REQUEST (§7.5.2).
MAX_RECORDS_PER_ANSWER: Final = 256
#: Records in one STATUS_RESPONSE page (§7.8); a client asks for the next page from ``off``.
MAX_STATUS_RECORDS: Final = 128
#: Connections listed in one STATUS_RESPONSE (§7.8).
MAX_STATUS_CONNECTIONS: Final = 64
#: Training jobs listed in one STATUS_RESPONSE (07 §7.8, r12).
MAX_STATUS_JOBS: Final = 64

#: Largest model context a record may announce (``ctx``, r9), in bytes.
MAX_CONTEXT_BYTES: Final = 1 << 20

# --- 08-checkpoints.md -----------------------------------------------------------------------
#: Chunks in one block version or delta (1 GiB of raw bytes at most).
MAX_VERSION_CHUNKS: Final = 1024
#: Tensors in one block version or delta.
MAX_VERSION_TENSORS: Final = 512
#: Largest signed manifest; it fits one msgpack bin field (MAX_BIN_LEN).
MAX_MANIFEST_BYTES: Final = 48 * 1024
#: Chunks one CHUNK_GET may ask for.
MAX_CHUNKS_PER_REQUEST: Final = 32

# --- 09-averaging.md -------------------------------------------------------------------------
#: Peers named in one round report (contributors, rejected and late together).
MAX_REPORT_ENTRIES: Final = 256
#: Elements that share one float32 scale in the int8 delta encoding.
INT8_BLOCK_ELEMS: Final = 256
#: Shards of one round at most (a plan's length, a report's shard rows).
MAX_SHARDS: Final = 64
#: Shard boundaries are multiples of this many elements (whole int8 blocks, 256 KiB float32).
SHARD_ALIGN_ELEMS: Final = 65536
#: Updates of one shard a replica keeps per round (its aggregator's and one that took over).
MAX_UPDATES_PER_SHARD: Final = 2

# --- 10-traversal.md -------------------------------------------------------------------------
#: Hops in one route (a chain of at most this many servers).
MAX_ROUTE_HOPS: Final = 64
#: r11, 10 §10.8: trajectory rows of one known-prefix traversal (a draft of up to 63 bytes)
MAX_TRAJECTORY_ROWS: Final = 64
#: r13, 10 §10.9: output rows a traversal under the combined rule may carry the blocks'
#: log-probabilities for (``lp``: 512 bytes each, in the signed body)
MAX_COMBINED_ROWS: Final = 16
#: r14, 10 §10.9: blocks whose qualities a traversal under the weighted rule carries (``lq``)
MAX_WEIGHTED_BLOCKS: Final = 64
#: r14, 10 §10.9 and 08 §8.2: a block's quality (its next-byte CE, nats/byte) is at most this
MAX_QUALITY: Final = 16.0
#: r14, 10 §10.9: tau of the weighted rule's weights exp(-q / tau), nats/byte
WEIGHT_TEMPERATURE: Final = 0.03
#: r11, 10 §10.8: generation sessions a block server keeps (keys and values of known rows)
MAX_PREFIX_SESSIONS: Final = 256
#: r11: of which one client may hold
MAX_PREFIX_SESSIONS_PER_CLIENT: Final = 16
#: r11: bytes of keys and values a server keeps over all its sessions
MAX_PREFIX_SESSION_BYTES: Final = 512 * 1024 * 1024
#: r11: a session unused this long is dropped
PREFIX_SESSION_IDLE_S: Final = 120.0
