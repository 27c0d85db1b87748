"""plan_route: cheapest chain, consecutive blocks merged, exclusions, determinism."""

from __future__ import annotations

import pytest

from spheroid_p2p.core.routing import NoRouteError, ServerOffer, plan_route

A, B, C = b"a" * 32, b"b" * 32, b"c" * 32


def _offers(
    table: dict[bytes, list[int]], load: dict[bytes, float] | None = None
) -> list[ServerOffer]:
    return [
        ServerOffer(peer, f"{peer[:1].decode()}:1", block, (load or {}).get(peer, 0.0))
        for peer, blocks in table.items()
        for block in blocks
    ]


def test_blocks_on_one_server_form_one_hop() -> None:
    """A server holding blocks 0..3 gives a one-hop route."""
    (hop,) = plan_route(_offers({A: [0, 1, 2, 3]}), 4)
    assert (hop.peer, hop.first_block, hop.last_block) == (A, 0, 3)


def test_fewer_hops_win_and_load_and_rtt_steer() -> None:
    """Staying on a server is free; a loaded or distant server is avoided when possible."""
    offers = _offers({A: [0, 1], B: [1, 2, 3], C: [2, 3]})
    route = plan_route(offers, 4)
    assert [(h.peer, h.first_block, h.last_block) for h in route] == [(A, 0, 0), (B, 1, 3)] or [
        (h.peer, h.first_block, h.last_block) for h in route
    ] == [(A, 0, 1), (B, 2, 3)]
    busy = plan_route(_offers({A: [0, 1], B: [2, 3], C: [2, 3]}, load={B: 5.0}), 4)
    assert [h.peer for h in busy] == [A, C]
    far = plan_route(_offers({A: [0, 1], B: [2, 3], C: [2, 3]}), 4, rtt_ms={B: 1.0, C: 500.0})
    assert [h.peer for h in far] == [A, B]


def test_excluded_servers_are_routed_around_or_reported() -> None:
    """Excluding a server picks the other holder; with none left, NoRouteError names blocks."""
    offers = _offers({A: [0, 1], B: [2, 3], C: [2, 3]})
    assert [h.peer for h in plan_route(offers, 4, exclude={B})] == [A, C]
    with pytest.raises(NoRouteError, match=r"\[2, 3\]"):
        plan_route(offers, 4, exclude={B, C})


def test_the_plan_is_deterministic_whatever_the_offer_order() -> None:
    """Ties break on peer id, so shuffled offers give the same route."""
    offers = _offers({A: [0], B: [0, 1], C: [1]})
    assert plan_route(offers, 2) == plan_route(list(reversed(offers)), 2)
