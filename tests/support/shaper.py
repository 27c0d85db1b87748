"""A rate-limited TCP relay on 127.0.0.1: a slow link for tests, in user space.

``SlowLink(target, down_bps)`` listens on an ephemeral port; each connection to it is relayed
to ``target``, with the bytes coming back from the target (``down``) held to ``down_bps``
by a token bucket, so the client's TCP sees a real slow stream. The other direction is not
shaped. Everything is bounded: each relay stops when either side closes or on ``close()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

__all__ = ["SlowLink"]

#: Bytes forwarded per write; small enough that the rate holds within ~10 ms at 8 MB/s.
PIECE = 64 * 1024


class SlowLink:
    def __init__(self, target: str, down_bps: float) -> None:
        host, port = target.rsplit(":", 1)
        self.target = (host, int(port))
        self.down_bps = down_bps
        self.bytes_down = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def addr(self) -> str:
        assert self._server is not None
        host, port = self._server.sockets[0].getsockname()[:2]
        return f"{host}:{port}"

    async def start(self) -> SlowLink:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        return self

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, OSError):
                await task

    async def __aenter__(self) -> SlowLink:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _relay(self, c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter) -> None:
        t_reader, t_writer = await asyncio.open_connection(*self.target)
        up = asyncio.ensure_future(self._pump(c_reader, t_writer, None))
        down = asyncio.ensure_future(self._pump(t_reader, c_writer, self.down_bps))
        for task in (up, down):
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        try:
            await asyncio.wait((up, down), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (up, down):
                task.cancel()
            for w in (c_writer, t_writer):
                w.close()

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, bps: float | None
    ) -> None:
        free_at = 0.0  # when the link has sent everything so far (no credit for idle time)
        while True:
            data = await reader.read(PIECE)
            if not data:
                return
            if bps is not None:
                self.bytes_down += len(data)
                now = time.monotonic()
                free_at = max(free_at, now) + len(data) / bps
                await asyncio.sleep(free_at - now)
            writer.write(data)
            await writer.drain()
