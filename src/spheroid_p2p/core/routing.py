"""Route planning for traversals (spec: 10-traversal.md §10.2): a pure function.

The chain order is fixed (block 0, 1, ..., B-1), so the cheapest chain is a shortest path over
(block, server) states: staying on the same server for the next block costs only its load;
moving to another server costs that server's hop cost (its measured RTT, or a default, plus a
fixed per-hop cost) plus its load. Consecutive blocks on one server become one hop. Ties are
broken by peer id (sorted), so every caller computes the same route from the same inputs.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

from spheroid_p2p.errors import ErrorCode, ProtocolError
from spheroid_p2p.wire.traversal import Hop

__all__ = ["NoRouteError", "ServerOffer", "plan_route"]


class NoRouteError(ProtocolError):
    """Some block has no usable server."""

    code = ErrorCode.BLOCK_NOT_SERVED


@dataclass(frozen=True)
class ServerOffer:
    """A server that announced it serves ``block`` (from a live ownership record)."""

    peer: bytes
    addr: str
    block: int
    load: float = 0.0
    n_blocks: int = 0
    config_hash: str = ""
    #: The model's context in bytes (0: not said).
    context: int = 0


def plan_route(
    offers: Sequence[ServerOffer],
    n_blocks: int,
    exclude: Collection[bytes] = (),
    rtt_ms: Mapping[bytes, float] | None = None,
    default_rtt_ms: float = 50.0,
    hop_cost_ms: float = 5.0,
    load_cost_ms: float = 20.0,
) -> tuple[Hop, ...]:
    """The cheapest chain of servers covering blocks 0..n_blocks-1; raises :class:`NoRouteError`."""
    rtt = rtt_ms or {}
    by_block: dict[int, list[ServerOffer]] = {}
    for offer in sorted(offers, key=lambda o: (o.block, o.peer)):
        if offer.peer not in exclude and 0 <= offer.block < n_blocks:
            by_block.setdefault(offer.block, []).append(offer)
    missing = [b for b in range(n_blocks) if b not in by_block]
    if missing:
        raise NoRouteError(f"no live server for block(s) {missing}")

    def enter(o: ServerOffer) -> float:
        return rtt.get(o.peer, default_rtt_ms) + hop_cost_ms

    # cost[peer] = (total cost, path of offers) for the chain ending at block b on that peer
    cost: dict[bytes, tuple[float, tuple[ServerOffer, ...]]] = {
        o.peer: (enter(o) + load_cost_ms * o.load, (o,)) for o in by_block[0]
    }
    for b in range(1, n_blocks):
        best_prev = min(cost.values(), key=lambda cp: (cp[0], [o.peer for o in cp[1]]))
        nxt: dict[bytes, tuple[float, tuple[ServerOffer, ...]]] = {}
        for o in by_block[b]:
            options = [(best_prev[0] + enter(o), best_prev[1])]
            if o.peer in cost:
                options.append(cost[o.peer])  # stay on the same server: no new hop
            base, path = min(options, key=lambda cp: (cp[0], [x.peer for x in cp[1]]))
            nxt[o.peer] = (base + load_cost_ms * o.load, (*path, o))
        cost = nxt
    _, path = min(cost.values(), key=lambda cp: (cp[0], [o.peer for o in cp[1]]))
    hops: list[Hop] = []
    for offer in path:
        if hops and hops[-1].peer == offer.peer:
            hops[-1] = Hop(offer.peer, hops[-1].addr, hops[-1].first_block, offer.block)
        else:
            hops.append(Hop(offer.peer, offer.addr, offer.block, offer.block))
    return tuple(hops)
