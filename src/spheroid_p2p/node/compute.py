"""BlockRuntime: the torch side of a server. Owns the loaded blocks and one worker thread.

Forward passes run on a single worker thread (torch uses its own intra-op threads), so the
event loop never blocks on compute and requests are served in arrival order.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

from spheroid_p2p.ml.block import BlockDenoiser
from spheroid_p2p.ml.checkpoint import load_block
from spheroid_p2p.ml.combine import Combination
from spheroid_p2p.ml.config import ModelConfig
from spheroid_p2p.ml.generate import noisy_slots, pick_bytes, run_blocks, start_noise, window
from spheroid_p2p.ml.prefixed import pick_rows
from spheroid_p2p.node.prefix_sessions import KnownPrefixRunner
from spheroid_p2p.node.tensor_bridge import raw_of, torch_dtype
from spheroid_p2p.node.turns import StepGate
from spheroid_p2p.wire.manifests import tensor_entry, weights_hash
from spheroid_p2p.wire.traversal import COMBINE_LAST, PREFIX_KNOWN, Traverse

__all__ = ["BlockRuntime", "HopOutput"]

log = logging.getLogger(__name__)

#: Traversals computing at once (their steps interleave at the runtime's StepGate).
TRAVERSAL_THREADS = 4


class HopOutput:
    """What one hop computed: the codes to forward, or the final bytes (and logits)."""

    def __init__(
        self,
        z: torch.Tensor | None,
        output: bytes | None,
        logits: torch.Tensor | None,
        seconds: float,
        reused: int = 0,
        mix: Combination | None = None,
    ) -> None:
        self.z = z
        self.output = output
        self.logits = logits
        self.seconds = seconds
        #: known rows this hop took from its session cache (known-prefix rule; 10 §10.8)
        self.reused = reused
        #: the combined rule's running state after this hop (``lp``, ``lq``; 10 §10.9)
        self.mix = mix if mix is not None else Combination()


class BlockRuntime:
    """The blocks this node serves, loaded from safetensors checkpoints."""

    def __init__(self, checkpoints: tuple[Path, ...] = ()) -> None:
        self.blocks: dict[int, BlockDenoiser] = {}
        self.hashes: dict[int, bytes] = {}
        self.config: ModelConfig | None = None
        #: Training and the pipeline baseline run on this thread ...
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="compute")
        #: ... traversals on these; every denoiser step (training's too) takes its turn at
        #: ``gate``, so the requests of different peers interleave step by step.
        self.traversal_pool = ThreadPoolExecutor(
            max_workers=TRAVERSAL_THREADS, thread_name_prefix="traverse"
        )
        self.gate = StepGate()
        #: generation sessions of the known-prefix rule (10 §10.8)
        self.known = KnownPrefixRunner()
        for path in checkpoints:
            self.add(path)

    def add(self, path: Path) -> int:
        """Load a block checkpoint (same model config as the others); returns its index."""
        block = load_block(path, expect=self.config)
        if block.cfg.self_cond:
            raise ValueError(
                f"{path}: a self-conditioned model (self_cond) is an in-process experiment of "
                "bench_spans.py; traversals do not carry its estimate between hops, so it cannot "
                "be served"
            )
        self.config = block.cfg
        block.eval()
        self.blocks[block.index] = block
        # Gossip names what a node holds by weights hash (07 `h`, 08 §8.2): a block served
        # after training in rounds then names the swarm version it serves.
        self.hashes[block.index] = weights_hash(
            tuple(tensor_entry(name, raw_of(t)) for name, t in block.state_dict().items())
        )
        return block.index

    @property
    def config_hash(self) -> str:
        return self.config.config_hash() if self.config else ""

    def serves(self, first: int, last: int) -> bool:
        return all(b in self.blocks for b in range(first, last + 1))

    def z_shape(self, first: int, req: Traverse) -> tuple[int, int]:
        """The shape ``z`` must have on its way into block ``first`` for this request."""
        cfg = self.blocks[first].cfg
        if req.prefix_rule == PREFIX_KNOWN:
            return req.trajectory_rows, cfg.d_z
        return noisy_slots(cfg, window(cfg, req.prefix)), cfg.d_z

    async def run(
        self,
        req: Traverse,
        first: int,
        last: int,
        z_raw: bytes | None,
        start_by: float = float("inf"),
        peer: bytes = b"",
    ) -> HopOutput:
        """Run blocks first..last for one traversal on a traversal thread.

        Raises:
            TimeoutError: the request waited for the worker past ``start_by`` (monotonic).
        """
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self.traversal_pool, self._run, req, first, last, z_raw, start_by, peer
        )

    def _run(
        self,
        req: Traverse,
        first: int,
        last: int,
        z_raw: bytes | None,
        start_by: float,
        peer: bytes,
    ) -> HopOutput:
        if time.monotonic() > start_by:
            raise TimeoutError("the deadline passed while the traversal waited for compute")
        start = time.perf_counter()
        cfg = self.blocks[first].cfg
        steps, seed = req.steps_per_block, req.seed
        gate = lambda: self.gate.step(peer)  # noqa: E731
        reused = 0
        mix = Combination(req.combine, None, req.qualities)
        if req.combine != COMBINE_LAST and req.combined:
            acc = torch.frombuffer(bytearray(req.combined), dtype=torch.float16)
            mix.acc = acc.view(1, -1, 256)  # finite: checked at decode (wire.traversal)
        if req.prefix_rule == PREFIX_KNOWN:
            z, logits, reused = self.known.run(self.blocks, req, first, last, z_raw, gate, mix)
        else:
            clean = window(cfg, req.prefix)
            if z_raw is None:
                z = start_noise(cfg, clean, seed, steps)
            else:
                n = noisy_slots(cfg, clean)
                z = torch.frombuffer(bytearray(z_raw), dtype=torch_dtype(req.z.dtype))
                z = z.view(1, n, cfg.d_z).float()
            z, logits = run_blocks(self.blocks, first, last, clean, z, steps, gate, mix)
        seconds = time.perf_counter() - start
        if logits is None:
            return HopOutput(z, None, None, seconds, reused, mix)
        if req.prefix_rule == PREFIX_KNOWN:
            output = pick_rows(logits, req.temperature, seed)
        else:
            output = pick_bytes(cfg, logits, req.temperature, seed)
        return HopOutput(None, output, logits if req.want_logits else None, seconds, reused, mix)

    def close(self, wait: bool = False) -> None:
        """Drop queued work; with ``wait``, also wait for the running step to end."""
        self.pool.shutdown(wait=wait, cancel_futures=True)
        self.traversal_pool.shutdown(wait=wait, cancel_futures=True)


class ArStageRuntime:
    """One stage of the layer-pipelined autoregressive baseline, with per-session KV caches.

    Sessions are evicted least-recently-used beyond ``max_sessions`` and after ``idle_s``.
    """

    def __init__(
        self,
        path: Path,
        stage: int,
        stages: int,
        pool: ThreadPoolExecutor,
        max_sessions: int = 128,
        idle_s: float = 120.0,
    ) -> None:
        from spheroid_p2p.ml.checkpoint import load_ar

        self.model = load_ar(path)
        n_layers = len(self.model.layers)
        if not 0 <= stage < stages <= n_layers:
            raise ValueError(f"stage {stage}/{stages} does not fit {n_layers} layers")
        self.stage, self.stages = stage, stages
        self.first = stage * n_layers // stages
        self.last = (stage + 1) * n_layers // stages
        self.config_hash = f"ar-{self.model.cfg.config_hash()[:40]}-T{self.model.cfg.context}"
        #: announced in the stage's record (``ctx``): when the client starts a session over
        self.context = self.model.cfg.context
        self.pool = pool
        self.max_sessions = max_sessions
        self.idle_s = idle_s
        self._sessions: dict[int, tuple[list[Any], float]] = {}

    async def step(
        self, sid: int, pos: int, tokens: bytes, hidden: bytes | None, start_by: float
    ) -> tuple[torch.Tensor | None, bytes | None]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.pool, self._step, sid, pos, tokens, hidden, start_by)

    def _step(
        self, sid: int, pos: int, tokens: bytes, hidden: bytes | None, start_by: float
    ) -> tuple[torch.Tensor | None, bytes | None]:
        now = time.monotonic()
        if now > start_by:
            raise TimeoutError("the deadline passed while the step waited for compute")
        for old in [s for s, (_, used) in self._sessions.items() if now - used > self.idle_s]:
            del self._sessions[old]
        if pos + max(1, len(tokens)) > self.model.cfg.context and hidden is None:
            raise ValueError(f"position {pos} is past the model's context")
        caches, _ = self._sessions.get(sid, ([None] * (self.last - self.first), now))
        if pos == 0:
            caches = [None] * (self.last - self.first)
        x = torch.tensor(list(tokens), dtype=torch.long)[None] if hidden is None else None
        h = None
        if hidden is not None:
            h = torch.frombuffer(bytearray(hidden), dtype=torch.float32)
            h = h.view(1, -1, self.model.cfg.d_model)
        out, caches = self.model.stage(self.first, self.last, x, h, pos, caches)
        self._sessions[sid] = (caches, now)
        while len(self._sessions) > self.max_sessions:
            oldest = min(self._sessions, key=lambda s: self._sessions[s][1])
            del self._sessions[oldest]
        if self.last == len(self.model.layers):
            return None, bytes([int(out[0].argmax())])
        return out, None
