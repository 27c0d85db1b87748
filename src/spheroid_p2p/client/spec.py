"""What one traversal asks for (everything but its route), and the client's fallbacks.

A route may not serve what the client first asks: the known-prefix rule needs a per-byte model
and an r11 hop (:class:`PerByteOnlyError`), the combined output rule at most 16 output rows
and r13 hops (:class:`NoCombineError`). The client then asks again with the earlier rule.
"""

from __future__ import annotations

from dataclasses import dataclass

from spheroid_p2p.wire.traversal import COMBINE_LAST, PREFIX_NOISY

__all__ = ["NoCombineError", "PerByteOnlyError", "TraversalSpec"]


@dataclass(frozen=True)
class TraversalSpec:
    """What one traversal asks for (everything but the route)."""

    config: str
    prefix: bytes
    steps: int
    seed: int
    temperature: float
    z_dtype: str
    span: int
    #: r11 (10 §10.8): the known-prefix rule's session and noise seed (rule PREFIX_NOISY: 0)
    rule: int = PREFIX_NOISY
    session: int = 0
    prefix_seed: int = 0
    trajectory_rows: int = 1
    #: r13 (10 §10.9): the output rule
    combine: int = COMBINE_LAST


class NoCombineError(Exception):
    """The route cannot apply the combined rule: too many output rows (SPAN_UNSUPPORTED), or
    a hop predates r13 (the answer has no ``cb``)."""


class PerByteOnlyError(Exception):
    """The route cannot serve the known-prefix rule: the model emits spans (it answered
    SPAN_UNSUPPORTED), or a hop predates r11 (its answer has no ``cr``)."""
