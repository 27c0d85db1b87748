"""Fair turns on a node's compute thread (asyncio glue around ``core.limits.FairQueue``)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from spheroid_p2p.core.limits import FairQueue

__all__ = ["ComputeTurns", "Overloaded"]


class Overloaded(Exception):  # noqa: N818 (an answer, OVERLOADED, not an error of ours)
    """This peer already has ``per_peer`` requests waiting for compute."""


class ComputeTurns:
    """Turns on the compute thread for requests, fair across peers (security.md §S.4): at most
    ``slots`` run at once, the waiting ones are served round-robin by the peer that sent them,
    and a peer with ``per_peer`` waiting is refused (:class:`Overloaded`). A flood from one
    peer then waits behind itself: another peer's request waits for at most one of its jobs."""

    def __init__(self, slots: int = 1, per_peer: int = 8) -> None:
        self.free = slots
        self.queue: FairQueue[bytes, asyncio.Future[None]] = FairQueue(per_peer)

    @contextlib.asynccontextmanager
    async def turn(self, peer: bytes) -> AsyncIterator[None]:
        if self.free > 0 and not len(self.queue):
            self.free -= 1
        else:
            ticket: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            if not self.queue.join(peer, ticket):
                raise Overloaded(f"{len(self.queue)} requests wait for compute")
            try:
                await ticket
            except asyncio.CancelledError:
                self.queue.leave(peer, ticket)
                if ticket.done() and not ticket.cancelled():
                    self._release()  # the turn was ours already: pass it on
                raise
        try:
            yield
        finally:
            self._release()

    def _release(self) -> None:
        while (ticket := self.queue.next_ticket()) is not None:
            if not ticket.done():
                ticket.set_result(None)
                return
        self.free += 1
