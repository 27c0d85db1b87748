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
