"""Fair use of a node's compute (security.md §S.4).

* :class:`ComputeTurns` (asyncio): admission. At most ``slots`` requests compute at once, the
  waiting ones are let in round-robin by the peer that sent them, and a peer with
  ``per_peer`` waiting is refused (:class:`Overloaded`).
* :class:`StepGate` (threads): the admitted requests run on their own threads but take *one
  denoiser step at a time*, handed round-robin to the peers with a step waiting. A peer whose
  request costs 64 steps a block therefore delays another peer's request by about one step
  per step of that request, not by its whole length. Training steps take their turns here too.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Iterator

from spheroid_p2p.core.limits import FairQueue

__all__ = ["ComputeTurns", "Overloaded", "StepGate"]


class Overloaded(Exception):  # noqa: N818 (an answer, OVERLOADED, not an error of ours)
    """This peer already has ``per_peer`` requests waiting for compute."""


class ComputeTurns:
    """Admission to compute, fair across peers (security.md §S.4): at most ``slots`` requests
    compute at once and at most ``per_peer_running`` of them from one peer, so a flood never
    holds every slot; the waiting ones are let in round-robin by the peer that sent them, and
    a peer with ``per_peer`` waiting is refused (:class:`Overloaded`)."""

    def __init__(self, slots: int = 1, per_peer: int = 8, per_peer_running: int = 2) -> None:
        self.free = slots
        self.per_peer_running = per_peer_running
        self.running: dict[bytes, int] = {}
        self.queue: FairQueue[bytes, asyncio.Future[None]] = FairQueue(per_peer)

    def _may_run(self, peer: bytes) -> bool:
        return self.running.get(peer, 0) < self.per_peer_running

    @contextlib.asynccontextmanager
    async def turn(self, peer: bytes) -> AsyncIterator[None]:
        if self.free > 0 and self._may_run(peer) and not len(self.queue):
            self._grant(peer)
        else:
            ticket: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            if not self.queue.join(peer, ticket):
                raise Overloaded(f"{len(self.queue)} requests wait for compute")
            self._dispatch()  # a free slot may be ours while others wait only at their cap
            try:
                await ticket
            except asyncio.CancelledError:
                self.queue.leave(peer, ticket)
                if ticket.done() and not ticket.cancelled():
                    self._release(peer)  # the turn was granted already: pass it on
                raise
        try:
            yield
        finally:
            self._release(peer)

    def _grant(self, peer: bytes) -> None:
        self.free -= 1
        self.running[peer] = self.running.get(peer, 0) + 1

    def _release(self, peer: bytes) -> None:
        left = self.running.get(peer, 0) - 1
        if left > 0:
            self.running[peer] = left
        else:
            self.running.pop(peer, None)
        self.free += 1
        self._dispatch()

    def _dispatch(self) -> None:
        """Hand the free slots to waiting peers below their running cap, in rotation."""
        while self.free > 0:
            nxt = self.queue.next_ticket(self._may_run)
            if nxt is None:
                return
            waiter, ticket = nxt
            if not ticket.done():
                self._grant(waiter)
                ticket.set_result(None)


class StepGate:
    """One step at a time, round-robin over the peers (keys) with a step waiting."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._busy = False
        self._waiting: OrderedDict[bytes, deque[object]] = OrderedDict()
        self.steps = 0

    def _next(self) -> object | None:
        if not self._waiting:
            return None
        return next(iter(self._waiting.values()))[0]

    @contextlib.contextmanager
    def step(self, peer: bytes, deadline: float = float("inf")) -> Iterator[None]:
        """Hold the compute for one step of ``peer``'s request. Raises ``TimeoutError`` if
        ``deadline`` (monotonic) passes while waiting: the request is past saving."""
        token = object()
        with self._cond:
            self._waiting.setdefault(peer, deque()).append(token)
            try:
                while self._busy or self._next() is not token:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise TimeoutError("the deadline passed while waiting for compute")
                    self._cond.wait(min(left, 1.0))
            except BaseException:
                queue = self._waiting[peer]
                queue.remove(token)
                if not queue:
                    del self._waiting[peer]
                self._cond.notify_all()
                raise
            queue = self._waiting.pop(peer)
            queue.popleft()
            if queue:
                self._waiting[peer] = queue  # this peer goes to the back of the rotation
            self._busy = True
        try:
            yield
        finally:
            with self._cond:
                self._busy = False
                self.steps += 1
                self._cond.notify_all()
