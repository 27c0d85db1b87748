"""The known-prefix rule at a block server (10 §10.8): one hop's blocks over a window, with the
keys and values of its known rows kept per generation session.

A traversal takes its session out of the table (``core.sessions``) while it computes, keeps the
rows its window leaves valid (``PrefixCache.reuse``), computes the rest, and puts the session
back. A traversal that finds no session (first of a generation, evicted, another server after
a failover) computes the whole window from the bytes it carries: the prefix is replayed by the
request itself, and the answer says how many rows each hop reused.

Sessions idle for ``PREFIX_SESSION_IDLE_S`` are dropped when they go idle
(:meth:`KnownPrefixRunner.expire_when_idle`, a task of the node that sleeps until the table's
next deadline), not only when a later traversal touches the table: a burst of generations
never leaves its keys and values (up to ``MAX_PREFIX_SESSION_BYTES``) held on an idle server.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Mapping
from functools import lru_cache

import torch

from spheroid_p2p.core.sessions import SessionLimits, SessionTable
from spheroid_p2p.ml.block import BlockDenoiser
from spheroid_p2p.ml.combine import Combination
from spheroid_p2p.ml.config import ModelConfig
from spheroid_p2p.ml.noise import NoisePartition
from spheroid_p2p.ml.prefixed import BlockCache, PrefixCache, prefix_noise, prefixed_hop, start_row
from spheroid_p2p.ml.sampler import block_points
from spheroid_p2p.node.tensor_bridge import torch_dtype
from spheroid_p2p.wire.traversal import Traverse

__all__ = ["KnownPrefixRunner"]


@lru_cache(maxsize=16)
def _points(cfg: ModelConfig, steps: int) -> list[tuple[list[float], float | None]]:
    """Each block's sigma points (the schedule is the same for every traversal of a model)."""
    return block_points(NoisePartition(cfg), steps)


class KnownPrefixRunner:
    """Runs known-prefix traversals for a server's blocks; owns their session table."""

    def __init__(self, limits: SessionLimits | None = None) -> None:
        self.table: SessionTable[PrefixCache] = SessionTable(limits)
        self._lock = threading.Lock()  # traversal threads share the table
        #: called from a traversal thread after it kept a session (wakes expire_when_idle)
        self.on_kept: Callable[[], None] | None = None

    def expire(self, now: float) -> int:
        """Drop the sessions idle for the table's ``idle_s``; returns how many."""
        with self._lock:
            return self.table.expire(now)

    def next_deadline(self) -> float | None:
        """When the least recently used session goes idle (``time.monotonic``), or None."""
        with self._lock:
            return self.table.next_deadline()

    async def expire_when_idle(self) -> None:
        """Drop sessions as they go idle, until cancelled: sleep to the table's next deadline,
        or, with no session, until a traversal keeps one."""
        kept = asyncio.Event()
        loop = asyncio.get_running_loop()
        self.on_kept = lambda: loop.call_soon_threadsafe(kept.set)
        try:
            while True:
                deadline = self.next_deadline()
                if deadline is None:
                    await kept.wait()
                    kept.clear()
                    continue
                await asyncio.sleep(max(0.0, deadline - time.monotonic()))
                self.expire(time.monotonic())
        finally:
            self.on_kept = None

    def _session(self, req: Traverse, cfg_d: int, context: int, now: float) -> PrefixCache:
        cached = None
        if req.session:
            with self._lock:
                cached = self.table.take((req.client, req.session), now)
        if (
            cached is None
            or cached.seed != req.prefix_seed
            or cached.steps_per_block != req.steps_per_block
        ):
            noise = prefix_noise(req.prefix_seed, context, cfg_d)
            cached = PrefixCache(req.prefix_seed, noise, req.steps_per_block)
        return cached

    @torch.no_grad()
    def run(
        self,
        blocks: Mapping[int, BlockDenoiser],
        req: Traverse,
        first: int,
        last: int,
        z_raw: bytes | None,
        gate: Callable[[], object] | None = None,
        mix: Combination | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None, int]:
        """Blocks first..last of one traversal. Returns (z of the trajectory rows, the final
        logits if ``last`` is the model's last block, rows reused from the session); under a
        combined rule these blocks' log-probabilities are added to ``mix``."""
        cfg = blocks[first].cfg
        window = req.prefix[-cfg.context :]
        rows = req.trajectory_rows
        session = self._session(req, cfg.d_z, cfg.context, time.monotonic())
        session.reuse(window)
        held = [
            session.blocks[b].rows if b in session.blocks else 0 for b in range(first, last + 1)
        ]
        reused = min(held)
        points = _points(cfg, req.steps_per_block)
        if z_raw is None:
            z = start_row(points[0][0][0], cfg.d_z, req.seed, rows)
        else:
            z = torch.frombuffer(bytearray(z_raw), dtype=torch_dtype(req.z.dtype))
            z = z.view(1, rows, cfg.d_z).float()
        text = torch.tensor(list(window), dtype=torch.long)[None]
        logits: torch.Tensor | None = None
        for b in range(first, last + 1):
            pts, nxt = points[b]
            cache = session.blocks.setdefault(b, BlockCache())
            z, out = prefixed_hop(blocks[b], text, z, pts, nxt, session.noise[None], cache, gate)
            if mix is not None:  # (adds nothing under COMBINE_LAST)
                mix.add(out, blocks[b].quality)
            logits = out if nxt is None else None
        if logits is not None and mix is not None:
            logits = mix.output(logits, last + 1)
        session.text = window
        if req.session:
            with self._lock:
                self.table.put(
                    (req.client, req.session), session, session.nbytes(), time.monotonic()
                )
            notify = self.on_kept
            if notify is not None:
                notify()
        return z, logits, reused
