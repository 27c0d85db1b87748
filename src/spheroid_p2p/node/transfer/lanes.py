"""Turns for the streams of one kind to one peer (09 §9.5 "Order"): lowest shard first.

A stream that has the link to itself goes out at the link's full rate and completes early: its
aggregator averages it, or its receiver builds it into the new version, while the next one
streams. Streams sharing the link would all complete last. It also keeps a sender well
within the receiver's ``MAX_OPEN_STREAMS_PER_PEER``.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
from collections.abc import AsyncIterator

__all__ = ["Lane"]


class Lane:
    """One holder at a time; waiters get their turn lowest priority first (then first come).
    A waiter cancelled after it was given the turn passes it on."""

    def __init__(self) -> None:
        self.busy = False
        self._waiting: list[tuple[int, int, asyncio.Future[None]]] = []
        self._count = 0

    @contextlib.asynccontextmanager
    async def turn(self, priority: int) -> AsyncIterator[None]:
        """Hold the lane for the ``async with`` block."""
        if self.busy or self._waiting:
            future = asyncio.get_running_loop().create_future()
            self._count += 1
            entry = (priority, self._count, future)
            heapq.heappush(self._waiting, entry)
            try:
                await future
            except BaseException:
                if future.done() and not future.cancelled():
                    self._next()  # it was our turn: pass it on
                else:
                    self._waiting.remove(entry)
                    heapq.heapify(self._waiting)
                raise
        else:
            self.busy = True
        try:
            yield
        finally:
            self._next()

    def _next(self) -> None:
        while self._waiting:
            _, _, future = heapq.heappop(self._waiting)
            if not future.done():
                future.set_result(None)  # busy stays True: the turn passes
                return
        self.busy = False
