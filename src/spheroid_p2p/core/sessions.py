"""Generation sessions a block server keeps (10 §10.8), sans-I/O: a bounded table, time passed in.

A session is what a server keeps between the traversals of one generation under the
known-prefix rule: its blocks' keys and values of the window's known rows. Losing one costs
only time (the next traversal carries the whole window and the server recomputes it), so the
table evicts freely and safely: least recently used first, beyond ``MAX_PREFIX_SESSIONS``
sessions, ``MAX_PREFIX_SESSIONS_PER_CLIENT`` of one client, or ``MAX_PREFIX_SESSION_BYTES`` in
all, and any session idle for ``PREFIX_SESSION_IDLE_S``.

A traversal *takes* its session out of the table while it computes and *puts* it back after,
so two traversals of one session never share its tensors (the second finds none and
recomputes, which is always correct).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Generic, TypeVar

from spheroid_p2p.params import (
    MAX_PREFIX_SESSION_BYTES,
    MAX_PREFIX_SESSIONS,
    MAX_PREFIX_SESSIONS_PER_CLIENT,
    PREFIX_SESSION_IDLE_S,
)

__all__ = ["SessionKey", "SessionLimits", "SessionTable"]

V = TypeVar("V")

#: (client peer id, session id chosen by the client)
SessionKey = tuple[bytes, int]


@dataclass(frozen=True, slots=True)
class SessionLimits:
    max_sessions: int = MAX_PREFIX_SESSIONS
    max_per_client: int = MAX_PREFIX_SESSIONS_PER_CLIENT
    max_bytes: int = MAX_PREFIX_SESSION_BYTES
    idle_s: float = PREFIX_SESSION_IDLE_S


@dataclass(slots=True)
class _Entry(Generic[V]):
    value: V
    nbytes: int
    used: float


class SessionTable(Generic[V]):
    """Sessions by (client, id), least recently used first."""

    def __init__(self, limits: SessionLimits | None = None) -> None:
        self.limits = limits or SessionLimits()
        self._entries: OrderedDict[SessionKey, _Entry[V]] = OrderedDict()
        self._per_client: dict[bytes, int] = {}
        self.nbytes = 0
        #: counters for status and metrics
        self.hits = 0
        self.misses = 0
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._entries)

    def take(self, key: SessionKey, now: float) -> V | None:
        """Remove and return the session ``key`` (None: there is none, or it had expired)."""
        self.expire(now)
        entry = self._entries.get(key)
        if entry is None:
            self.misses += 1
            return None
        self._drop(key)
        self.hits += 1
        return entry.value

    def put(self, key: SessionKey, value: V, nbytes: int, now: float) -> list[SessionKey]:
        """Keep ``value`` as session ``key``; returns the sessions evicted to make room (a
        session larger than the whole budget is not kept: it is returned itself)."""
        self.expire(now)
        if key in self._entries:
            self._drop(key)
        if nbytes > self.limits.max_bytes:
            self.evicted += 1
            return [key]
        self._entries[key] = _Entry(value, nbytes, now)
        self._per_client[key[0]] = self._per_client.get(key[0], 0) + 1
        self.nbytes += nbytes
        evicted: list[SessionKey] = []
        while self._per_client[key[0]] > self.limits.max_per_client:
            oldest = next(k for k in self._entries if k[0] == key[0])
            evicted.append(self._evict(oldest))
        while len(self._entries) > self.limits.max_sessions or self.nbytes > self.limits.max_bytes:
            evicted.append(self._evict(next(iter(self._entries))))
        return evicted

    def expire(self, now: float) -> int:
        """Drop sessions idle for ``idle_s``; returns how many."""
        count = 0
        while self._entries:
            key, entry = next(iter(self._entries.items()))
            if now - entry.used < self.limits.idle_s:
                break
            self._evict(key)
            count += 1
        return count

    def next_deadline(self) -> float | None:
        """When the least recently used session expires (None: no session)."""
        if not self._entries:
            return None
        return next(iter(self._entries.values())).used + self.limits.idle_s

    def _evict(self, key: SessionKey) -> SessionKey:
        self._drop(key)
        self.evicted += 1
        return key

    def _drop(self, key: SessionKey) -> None:
        entry = self._entries.pop(key)
        self.nbytes -= entry.nbytes
        left = self._per_client[key[0]] - 1
        if left:
            self._per_client[key[0]] = left
        else:
            del self._per_client[key[0]]
