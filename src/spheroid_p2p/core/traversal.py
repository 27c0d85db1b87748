"""What a hop does with a traversal (10 §10.4), sans-I/O: check it, then forward it or answer.

:func:`from_route` is step 0 (who may send it), :func:`check_hop` steps 1-2 (is it ours, for
our model, with codes of the right shape, in time), :func:`forward` step 3's hand-on to the
next hop (the deadline budget and the hop times it carries) and :func:`hop_times` the times a
hop passes on. The glue (``node.serving``) computes in between and sends what these return.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

from spheroid_p2p.errors import ErrorCode
from spheroid_p2p.params import MAX_COMBINED_ROWS, MAX_WEIGHTED_BLOCKS
from spheroid_p2p.wire.traversal import (
    COMBINE_LAST,
    COMBINE_WEIGHTED,
    COMBINED_ROW_BYTES,
    HOP_TIMINGS,
    PREFIX_KNOWN,
    Hop,
    InlineTensor,
    Traverse,
)

__all__ = [
    "Compute",
    "Refuse",
    "ServedModel",
    "check_hop",
    "forward",
    "from_route",
    "hop_reused",
    "hop_times",
    "output_rows",
]


@dataclass(frozen=True, slots=True)
class ServedModel:
    """What this hop serves: its blocks of one model config, and that model's span."""

    blocks: frozenset[int]
    config_hash: str
    span: int
    #: a per-byte model (layout S), which alone serves the known-prefix rule (10 §10.8)
    per_byte: bool = True
    context: int = 0


@dataclass(frozen=True, slots=True)
class Refuse:
    """Answer the client ``TRAVERSE_ERROR`` with ``code``; ``peer`` is the one at fault
    (None: this hop)."""

    code: ErrorCode
    reason: str
    peer: bytes | None = None


@dataclass(frozen=True, slots=True)
class Compute:
    """Run blocks ``first..last``; ``starting``: block 0 draws the initial noise itself."""

    first: int
    last: int
    starting: bool


def from_route(sender: bytes, client: bytes, route: tuple[Hop, ...], hop: int) -> bool:
    """A traversal reaches hop 0 from its client and hop k from route[k-1] (10 §10.4 step 0):
    nobody else can make us run blocks for, or dial, a route they are not on."""
    return sender == (client if hop == 0 else route[hop - 1].peer)


def check_hop(
    req: Traverse,
    me: bytes,
    served: ServedModel | None,
    z_shape: Callable[[int, Traverse], tuple[int, int]],
    waited_ms: float,
) -> Compute | Refuse:
    """Steps 1-2: the route names us, we serve its blocks of its model and span, ``z`` has
    the shape block ``first`` expects for this prefix (``z_shape``), and the deadline holds."""
    hop = req.route[req.hop]
    if hop.peer != me:
        return Refuse(ErrorCode.PROTOCOL_VIOLATION, "route names another peer for this hop")
    blocks = range(hop.first_block, hop.last_block + 1)
    if served is None or not all(b in served.blocks for b in blocks):
        return Refuse(
            ErrorCode.BLOCK_NOT_SERVED,
            f"blocks {hop.first_block}..{hop.last_block} are not served here",
        )
    if req.config_hash and req.config_hash != served.config_hash:
        return Refuse(ErrorCode.BLOCK_NOT_SERVED, "request is for a different model config")
    if req.span not in (0, served.span):
        return Refuse(
            ErrorCode.SPAN_UNSUPPORTED,
            f"this model emits spans of {served.span}: ask for that span (or 0, the model's "
            f"own); a span-K model is trained with `node run ... --span K` on every trainer",
        )
    if not req.prefix:
        return Refuse(ErrorCode.PROTOCOL_VIOLATION, "a traversal needs at least one prefix byte")
    if req.prefix_rule == PREFIX_KNOWN:
        if not served.per_byte:
            return Refuse(
                ErrorCode.SPAN_UNSUPPORTED,
                f"the known-prefix rule needs a per-byte model; this one emits spans of "
                f"{served.span}",
            )
        window = min(len(req.prefix), served.context) if served.context else len(req.prefix)
        if req.trajectory_rows > window:
            return Refuse(
                ErrorCode.PROTOCOL_VIOLATION,
                f"{req.trajectory_rows} trajectory rows in a window of {window} bytes",
            )
    starting = len(req.z.shape) == 1 and req.z.shape[0] == 0
    if starting != (hop.first_block == 0):
        return Refuse(ErrorCode.PROTOCOL_VIOLATION, "only block 0 starts from noise")
    if req.combine != COMBINE_LAST:
        rows = output_rows(req, served)
        if rows > MAX_COMBINED_ROWS:
            return Refuse(
                ErrorCode.SPAN_UNSUPPORTED,
                f"the combined rule carries at most {MAX_COMBINED_ROWS} rows; this traversal "
                f"outputs {rows} (ask for cb = 0)",
            )
        want_lp = 0 if starting else rows * COMBINED_ROW_BYTES
        if len(req.combined) != want_lp:
            return Refuse(
                ErrorCode.TENSOR_SHAPE_MISMATCH,
                f"lp has {len(req.combined)} bytes, want {want_lp} ({rows} rows after block "
                f"{hop.first_block - 1})"
                if want_lp
                else "lp must be empty at block 0",
            )
        if req.combine == COMBINE_WEIGHTED and len(req.qualities) != hop.first_block:
            return Refuse(
                ErrorCode.TENSOR_SHAPE_MISMATCH,
                f"lq has {len(req.qualities)} qualities, want {hop.first_block} (one per block "
                f"before block {hop.first_block})",
            )
        if req.combine == COMBINE_WEIGHTED and hop.last_block >= MAX_WEIGHTED_BLOCKS:
            return Refuse(
                ErrorCode.SPAN_UNSUPPORTED,
                f"the weighted rule carries the qualities of {MAX_WEIGHTED_BLOCKS} blocks at "
                f"most; this model has more (ask for cb = 1)",
            )
    want = z_shape(hop.first_block, req)
    if not starting and tuple(req.z.shape) != want:
        return Refuse(
            ErrorCode.TENSOR_SHAPE_MISMATCH, f"z has shape {list(req.z.shape)}, want {list(want)}"
        )
    if waited_ms > req.deadline_ms:
        return Refuse(ErrorCode.TIMEOUT, f"deadline passed after {waited_ms:.0f} ms in queue")
    return Compute(hop.first_block, hop.last_block, starting)


def output_rows(req: Traverse, served: ServedModel) -> int:
    """Rows whose prediction a traversal outputs (10 §10.9): every trajectory row under the
    known-prefix rule, the span's slots of a span model, else the last row."""
    if req.prefix_rule == PREFIX_KNOWN:
        return req.trajectory_rows
    return 1 if served.per_byte else served.span


def hop_times(req: Traverse, mine: tuple[float, float, float]) -> tuple[float, ...]:
    """The hop times this hop passes on: the earlier hops' (only if there are exactly three
    per earlier hop, 10 §10.3.1), then its own (queued, compute, encode ms)."""
    earlier = req.timings if len(req.timings) == len(HOP_TIMINGS) * req.hop else ()
    return (*earlier, *mine)


def hop_reused(req: Traverse, mine: int) -> tuple[int, ...]:
    """The reused rows this hop passes on (10 §10.8): the earlier hops' (only if there is one
    per earlier hop), then its own."""
    earlier = req.reused if len(req.reused) == req.hop else ()
    return (*earlier, mine)


def forward(
    req: Traverse,
    z: InlineTensor,
    payload: bytes,
    timings: tuple[float, ...],
    spent_ms: int,
    reused: tuple[int, ...] = (),
    combined: bytes = b"",
    qualities: tuple[float, ...] = (),
) -> Traverse | Refuse:
    """The traversal for the next hop: one hop on, the deadline less what this hop spent."""
    if req.hop + 1 >= len(req.route):
        return Refuse(ErrorCode.PROTOCOL_VIOLATION, "route ends before the last block")
    if spent_ms >= req.deadline_ms:
        return Refuse(ErrorCode.TIMEOUT, f"deadline passed at this hop ({spent_ms} ms)")
    return dataclasses.replace(
        req,
        hop=req.hop + 1,
        deadline_ms=req.deadline_ms - spent_ms,
        payload=payload,
        z=z,
        timings=timings,
        reused=reused if req.prefix_rule == PREFIX_KNOWN else (),
        combined=combined if req.combine != COMBINE_LAST else b"",
        qualities=qualities if req.combine == COMBINE_WEIGHTED else (),
    )
