"""What gossip is configured with (07 §7.2, the node parameters) and what a node announces."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["GossipParams", "LocalClaim"]


@dataclass(frozen=True)
class GossipParams:
    """Parameters of §7.2 (defaults equal the spec table)."""

    interval_s: float = 1.0
    fanout: int = 3
    push_delay_s: float = 0.1
    record_ttl_s: float = 300.0
    refresh_fraction: float = 1 / 3
    departure_ttl_s: float = 10.0
    tombstone_s: float = 60.0
    target_peers: int = 8
    #: Gossip connections beyond this are refused (OVERLOADED), so per-peer traffic stays
    #: flat however large the swarm grows.
    max_peers: int = 12
    #: How long to wait before dialling again a peer that refused us as overloaded.
    overloaded_backoff_s: float = 60.0
    dial_backoff_s: float = 5.0


@dataclass(frozen=True)
class LocalClaim:
    """What this node announces about one block it serves or trains."""

    block: int
    role: str
    version: int = 0
    content_hash: bytes = b""
    load: float = 0.0
    n_blocks: int = 0
    config_hash: str = ""
    context: int = 0
