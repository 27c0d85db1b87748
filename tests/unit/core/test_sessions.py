"""The session table of the known-prefix rule (core.sessions): bounded by count, per client,
bytes and idle time, least recently used first, on a manual clock."""

from __future__ import annotations

from spheroid_p2p.core.sessions import SessionLimits, SessionTable

A, B = b"a" * 32, b"b" * 32


def test_take_removes_and_put_returns_it() -> None:
    table: SessionTable[str] = SessionTable(SessionLimits(4, 4, 1000, 10.0))
    assert table.take((A, 1), 0.0) is None and table.misses == 1
    assert table.put((A, 1), "s1", 100, 0.0) == []
    assert table.take((A, 1), 1.0) == "s1" and table.hits == 1
    assert table.take((A, 1), 1.0) is None  # taken: a second traversal recomputes
    assert len(table) == 0 and table.nbytes == 0


def test_bounds_evict_the_least_recently_used() -> None:
    table: SessionTable[int] = SessionTable(SessionLimits(3, 2, 1000, 10.0))
    table.put((A, 1), 1, 10, 0.0)
    table.put((B, 1), 2, 10, 1.0)
    table.put((A, 2), 3, 10, 2.0)
    assert table.put((A, 3), 4, 10, 3.0) == [(A, 1)]  # per client: A's oldest
    assert table.put((B, 2), 5, 10, 4.0) == [(B, 1)]  # count: the oldest of all
    assert table.put((B, 3), 6, 990, 5.0) == [(A, 2), (A, 3)]  # count, then bytes
    assert table.nbytes == 1000 and len(table) == 2
    assert table.put((A, 9), 7, 5000, 6.0) == [(A, 9)]  # larger than the budget: not kept
    assert table.evicted == 5


def test_idle_sessions_expire_and_the_next_deadline_says_when() -> None:
    table: SessionTable[int] = SessionTable(SessionLimits(8, 8, 1000, 10.0))
    assert table.next_deadline() is None
    table.put((A, 1), 1, 1, 0.0)
    table.put((A, 2), 2, 1, 5.0)
    assert table.next_deadline() == 10.0
    assert table.take((A, 1), 10.0) is None  # expired at 10 s
    assert table.take((A, 2), 14.9) == 2
