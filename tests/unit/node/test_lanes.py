"""Stream turns (node.transfer.lanes): one stream at a time, lowest shard first, and a
cancelled waiter neither blocks the lane nor loses a turn given to it."""

from __future__ import annotations

import asyncio

from spheroid_p2p.node.transfer.lanes import Lane


def test_waiters_go_lowest_shard_first_one_at_a_time() -> None:
    async def main() -> list[int]:
        lane, order, inside = Lane(), [], []
        queued = asyncio.Event()

        async def stream(shard: int) -> None:
            async with lane.turn(shard):
                inside.append(shard)
                assert len(inside) == 1  # alone on the lane
                order.append(shard)
                if shard == 5:
                    await queued.wait()
                await asyncio.sleep(0)
                inside.remove(shard)

        first = asyncio.create_task(stream(5))
        await asyncio.sleep(0)  # 5 holds the lane; the others queue in any order
        others = [asyncio.create_task(stream(s)) for s in (3, 9, 1, 7)]
        await asyncio.sleep(0)
        queued.set()
        await asyncio.gather(first, *others)
        assert not lane.busy
        return order

    assert asyncio.run(main()) == [5, 1, 3, 7, 9]


def test_a_cancelled_waiter_leaves_the_lane_usable() -> None:
    async def main() -> list[int]:
        lane, order = Lane(), []
        release = asyncio.Event()

        async def stream(shard: int, hold: bool = False) -> None:
            async with lane.turn(shard):
                order.append(shard)
                if hold:
                    await release.wait()

        holder = asyncio.create_task(stream(0, hold=True))
        await asyncio.sleep(0)
        doomed = asyncio.create_task(stream(1))
        later = asyncio.create_task(stream(2))
        await asyncio.sleep(0)
        doomed.cancel()  # gives up while waiting
        release.set()
        await asyncio.gather(holder, later)
        assert doomed.cancelled()
        # cancelled right after the turn was handed to it: the turn passes on
        holder = asyncio.create_task(stream(0, hold=True))
        release.clear()
        await asyncio.sleep(0)
        unlucky = asyncio.create_task(stream(1))
        after = asyncio.create_task(stream(3))
        await asyncio.sleep(0)
        release.set()
        await asyncio.sleep(0)  # the holder leaves and hands the turn to 1 ...
        unlucky.cancel()  # ... which is cancelled before it runs
        await asyncio.gather(holder, after, return_exceptions=True)
        assert not lane.busy
        return order

    assert asyncio.run(main())[:2] == [0, 2]
