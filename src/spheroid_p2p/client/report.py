"""What a generation cost, as the client measured it: traversals, time, bytes, retries, hops."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["GenerationReport"]


@dataclass
class GenerationReport:
    """What a generation cost: traversals, time, bytes on the wire, retries."""

    output: bytes = b""
    traversals: int = 0
    seconds: float = 0.0
    traversal_ms: list[float] = field(default_factory=list)
    bytes_sent: int = 0
    retries: int = 0
    routes: list[tuple[str, ...]] = field(default_factory=list)
    last_ms: float = 0.0
    #: Per successful traversal, the hops' own times (10 §10.3.1): one dict per hop with
    #: ``queued_ms``, ``compute_ms``, ``encode_ms`` (empty where the servers did not say).
    hop_timings: list[list[dict[str, float]]] = field(default_factory=list)
    #: Per traversal tried, the ms spent connecting to its first and last hop before sending
    #: (0 once both are connected).
    connect_ms: list[float] = field(default_factory=list)
    #: Per successful known-prefix traversal, the rows each hop took from its session cache
    #: (10 §10.8; 0 where a hop recomputed the window).
    reused: list[tuple[int, ...]] = field(default_factory=list)
    #: Draft bytes the traversals carried (speculative traversals, 10 §10.8).
    drafted: int = 0
    #: Under the weighted rule, every block's quality as the last traversal weighed it
    #: (10 §10.9: nats/byte; ln 256 where a block's server did not know it).
    qualities: tuple[float, ...] = ()

    @property
    def bytes_per_traversal(self) -> float:
        return len(self.output) / self.traversals if self.traversals else 0.0
