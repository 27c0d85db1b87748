"""One table of outstanding requests: ids, what waits on each, deadlines, failure on peer loss.

A node and a client correlate answers with requests the same way (aioquic's glue keeps its
futures the same way): a request gets an id, the table remembers which peer it went to and
what waits for the answer (a future, or a long-lived sink such as a fetch), and

* an answer is delivered only if it comes from the peer the request went to
  (:meth:`RequestTable.target`);
* when a connection closes, everything that waits on that peer fails at once
  (:meth:`RequestTable.peer_lost`), instead of waiting for its timeout;
* :meth:`RequestTable.ask` bounds a request by its deadline and always forgets it.

Ids are allocated from a counter, optionally with a fixed bit set (08 §8.4: request ids have
bit 63 set), so :meth:`was_issued` can tell an answer to a request we gave up on (dropped
quietly) from an answer to a request never made (a protocol violation).
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from typing import Generic, TypeVar

from spheroid_p2p.errors import SpheroidError, TransportError
from spheroid_p2p.wire.signing import PeerId

__all__ = ["PeerLostError", "RequestTable"]

T = TypeVar("T")


class PeerLostError(TransportError):
    """The connection to the peer a request went to closed before it was answered."""


class RequestTable(Generic[T]):
    """Outstanding requests: id -> (peer, target). ``T`` is what waits (a future or a sink)."""

    def __init__(self, id_bit: int = 0) -> None:
        self._bit = id_bit
        self._ids = itertools.count(1)
        self._last = 0
        self._open: dict[int, tuple[PeerId, T]] = {}

    def __len__(self) -> int:
        return len(self._open)

    def new_id(self) -> int:
        """A fresh id (with the table's bit set)."""
        self._last = next(self._ids)
        return self._bit | self._last

    def was_issued(self, rid: int) -> bool:
        """Whether ``rid`` is an id this table handed out (answered, open or abandoned)."""
        return rid & self._bit == self._bit and 0 < rid & ~self._bit <= self._last

    def add(self, rid: int, peer: PeerId, target: T) -> None:
        self._open[rid] = (peer, target)

    def target(self, peer: PeerId, rid: int) -> T | None:
        """What waits for ``rid``, if ``rid`` is open and went to ``peer``."""
        entry = self._open.get(rid)
        return entry[1] if entry is not None and entry[0] == peer else None

    def pop(self, rid: int) -> T | None:
        entry = self._open.pop(rid, None)
        return None if entry is None else entry[1]

    def forget(self, predicate: Callable[[T], bool]) -> None:
        """Forget every request whose target matches (a fetch that ended)."""
        for rid in [r for r, (_, t) in self._open.items() if predicate(t)]:
            del self._open[rid]

    def peer_lost(self, peer: PeerId) -> list[T]:
        """Forget ``peer``'s requests; returns their targets. Futures among them fail with
        :class:`PeerLostError` here; the caller handles any other kind of target."""
        lost = [rid for rid, (p, _) in self._open.items() if p == peer]
        targets = [self._open.pop(rid)[1] for rid in lost]
        for target in targets:
            if isinstance(target, asyncio.Future) and not target.done():
                target.set_exception(PeerLostError(f"{peer.short()} disconnected"))
        return targets

    def resolve(self, peer: PeerId, rid: int, answer: object) -> bool:
        """Deliver ``answer`` to the future waiting on ``rid`` from ``peer``; False if none."""
        target = self.target(peer, rid)
        if not isinstance(target, asyncio.Future):
            return False
        del self._open[rid]
        if not target.done():
            target.set_result(answer)
        return True

    async def ask(
        self,
        peer: PeerId,
        send: Callable[[int], bool],
        timeout_s: float,
        *,
        rid: int | None = None,
    ) -> object:
        """Send a request (``send(rid)`` writes it; False: not connected) and wait for its
        answer. Raises :class:`PeerLostError` (connection closed), ``TimeoutError`` (deadline),
        or :class:`SpheroidError` when it could not be sent."""
        rid = self.new_id() if rid is None else rid
        future: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        self.add(rid, peer, future)  # type: ignore[arg-type]  (a table that holds futures)
        try:
            if not send(rid):
                raise SpheroidError(f"{peer.short()} is not connected")
            async with asyncio.timeout(timeout_s):
                return await future
        finally:
            self._open.pop(rid, None)
