"""BlockRuntime: the torch side of a server. Owns the loaded blocks and one worker thread.

Forward passes run on a single worker thread (torch uses its own intra-op threads), so the
event loop never blocks on compute and requests are served in arrival order.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from spheroid_p2p.ml.block import BlockDenoiser
from spheroid_p2p.ml.checkpoint import load_block
from spheroid_p2p.ml.config import ModelConfig
from spheroid_p2p.ml.generate import noisy_slots, pick_bytes, run_blocks, start_noise, window

__all__ = ["BlockRuntime", "HopOutput"]

log = logging.getLogger(__name__)

_TORCH_DTYPES = {1: torch.float32, 2: torch.float16, 3: torch.bfloat16}


class HopOutput:
    """What one hop computed: the codes to forward, or the final bytes (and logits)."""

    def __init__(
        self,
        z: torch.Tensor | None,
        output: bytes | None,
        logits: torch.Tensor | None,
        seconds: float,
    ) -> None:
        self.z = z
        self.output = output
        self.logits = logits
        self.seconds = seconds


class BlockRuntime:
    """The blocks this node serves, loaded from safetensors checkpoints."""

    def __init__(self, checkpoints: tuple[Path, ...]) -> None:
        self.blocks: dict[int, BlockDenoiser] = {}
        self.hashes: dict[int, bytes] = {}
        config: ModelConfig | None = None
        for path in checkpoints:
            block = load_block(path, expect=config)
            config = block.cfg
            block.eval()
            self.blocks[block.index] = block
            self.hashes[block.index] = hashlib.sha256(path.read_bytes()).digest()
        self.config = config
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="block-runtime")

    @property
    def config_hash(self) -> str:
        return self.config.config_hash() if self.config else ""

    def serves(self, first: int, last: int) -> bool:
        return all(b in self.blocks for b in range(first, last + 1))

    async def run(
        self,
        first: int,
        last: int,
        prefix: bytes,
        z_raw: bytes | None,
        z_dtype: int,
        steps: int,
        seed: int,
        temperature: float,
        want_logits: bool,
    ) -> HopOutput:
        """Run blocks first..last for one traversal on the worker thread."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._pool,
            self._run,
            first,
            last,
            prefix,
            z_raw,
            z_dtype,
            steps,
            seed,
            temperature,
            want_logits,
        )

    def _run(
        self,
        first: int,
        last: int,
        prefix: bytes,
        z_raw: bytes | None,
        z_dtype: int,
        steps: int,
        seed: int,
        temperature: float,
        want_logits: bool,
    ) -> HopOutput:
        import time

        start = time.perf_counter()
        cfg = self.blocks[first].cfg
        clean = window(cfg, prefix)
        if z_raw is None:
            z = start_noise(cfg, clean, seed, steps)
        else:
            n = noisy_slots(cfg, clean)
            z = torch.frombuffer(bytearray(z_raw), dtype=_TORCH_DTYPES[z_dtype])
            z = z.view(1, n, cfg.d_z).float()
        z, logits = run_blocks(self.blocks, first, last, clean, z, steps)
        seconds = time.perf_counter() - start
        if logits is None:
            return HopOutput(z, None, None, seconds)
        output = pick_bytes(cfg, logits, temperature, seed)
        return HopOutput(None, output, logits if want_logits else None, seconds)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
