"""The emulation's own ceiling for a round's traffic: a reduce-scatter then an all-gather of
plain bytes over plain TCP, one process per host, no node code at all.

Each host sends ``bytes / R`` to every other host and receives as much from each (the deltas'
shards); once it has received all of that, it sends ``bytes / R`` to every other host again
and receives as much (the updates) — the traffic of a sharded round, with nothing computed,
checked, signed or stored. Run in every host's namespace
(``bench_wan_rounds.py`` does); each writes its rounds' start and end (wall clock, shared by
the namespaces) as JSON::

    python3 scripts/wan/rawexchange.py --me 0 --hosts 10.77.1.2,10.77.2.2 --port 7400 \
        --bytes 25000000 --rounds 3 --out FILE
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

#: Bytes written per call.
PIECE = 1 << 20
#: Seconds to wait for every other host to listen.
CONNECT_S = 30.0


async def _connect(host: str, port: int) -> asyncio.StreamWriter:
    deadline = time.monotonic() + CONNECT_S
    while True:
        try:
            _, writer = await asyncio.open_connection(host, port)
            return writer
        except OSError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


async def main(args: argparse.Namespace) -> list[dict[str, float]]:
    hosts = args.hosts.split(",")
    others = [h for i, h in enumerate(hosts) if i != args.me]
    share = args.bytes // len(hosts)
    readers: list[asyncio.StreamReader] = []
    arrived = asyncio.Event()

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        readers.append(reader)
        if len(readers) == len(others):
            arrived.set()

    server = await asyncio.start_server(accept, hosts[args.me], args.port)
    writers = [await _connect(h, args.port) for h in others]
    await asyncio.wait_for(arrived.wait(), CONNECT_S)
    data = memoryview(bytes(PIECE))

    async def send(writer: asyncio.StreamWriter) -> None:
        left = share
        while left > 0:
            writer.write(data[: min(PIECE, left)])
            left -= PIECE
            await writer.drain()

    async def receive(reader: asyncio.StreamReader) -> None:
        left = share
        while left > 0:
            got = await reader.read(min(left, 1 << 20))
            if not got:
                raise ConnectionError("a host hung up")
            left -= len(got)

    async def one_round() -> None:
        deltas_in = asyncio.Event()

        async def out(writer: asyncio.StreamWriter) -> None:
            await send(writer)  # our shards of the delta
            await deltas_in.wait()  # every delta of our shard is in: the update goes out
            await send(writer)

        async def gather_in() -> None:
            await asyncio.gather(*(receive(r) for r in readers))
            deltas_in.set()
            await asyncio.gather(*(receive(r) for r in readers))  # the others' updates

        await asyncio.gather(gather_in(), *(out(w) for w in writers))

    rounds = []
    for _ in range(args.rounds):
        start = time.time()
        await one_round()
        rounds.append({"start": start, "end": time.time()})
        await asyncio.sleep(0.5)  # the others finish theirs (each round is timed across hosts)
    for w in writers:
        w.close()
    server.close()
    return rounds


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--me", type=int, required=True)
    ap.add_argument("--hosts", required=True)
    ap.add_argument("--port", type=int, default=7400)
    ap.add_argument("--bytes", type=int, required=True, help="a delta's payload bytes")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()
    a.out.write_text(json.dumps(asyncio.run(main(a))))
    sys.exit(0)
