"""The swarm evaluator: assemble the current model from the swarm and score it.

Any peer can do this; it needs nothing but the gossip and the transfer protocol (08). For each
block it takes the newest version that trainers announce (records with a weights hash and the
model's config hash), fetches it from every live holder at once, checks the manifest's config
hash, and builds the block from those tensors. A block whose newest version is already here is
not fetched again. The composed model is then scored with the one-traversal sampler on fixed
evaluation windows (CE_sampler, nats/byte), and each score is logged with the time, the
versions it used and the bytes fetched so far.

``python -m spheroid_p2p.node eval --bootstrap HOST:PORT --corpus PATH [--every S]`` runs it
as a process; the demo and the swarm benchmark do.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import deque
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from spheroid_p2p.ml.block import BlockDenoiser
from spheroid_p2p.ml.config import ModelConfig
from spheroid_p2p.ml.evaluate import evaluate_sampler
from spheroid_p2p.node.swarm import version_records
from spheroid_p2p.node.transfer import FetchError

if TYPE_CHECKING:
    from spheroid_p2p.node.swarm import SwarmView
    from spheroid_p2p.node.transfer import Transfers

__all__ = ["EvalPoint", "SwarmEvaluator"]

log = logging.getLogger(__name__)

#: Seconds between "still waiting for block B" lines while the model is assembled.
WAIT_REPORT_S = 10.0
#: Scores an evaluator keeps for the swarm page.
HISTORY_POINTS = 1000


@dataclass
class EvalPoint:
    """One score of the swarm's current model."""

    elapsed_s: float
    ce_sampler: float
    versions: list[int]
    fetched_bytes: int  # by this evaluator, all fetches so far
    fetch_s: float
    eval_s: float


class SwarmEvaluator:
    """Fetches the newest version of every block from the swarm and scores the model."""

    def __init__(
        self,
        swarm: SwarmView,
        transfers: Transfers,
        model: ModelConfig,
        windows: torch.Tensor,
        seeds: tuple[int, ...] = (0,),
    ) -> None:
        self.swarm = swarm
        self.transfers = transfers
        self.model = model
        self.windows = windows
        self.seeds = seeds
        self.started = time.monotonic()
        self._blocks: dict[int, tuple[bytes, int, BlockDenoiser]] = {}  # weights, version, module
        self.fetched_bytes = 0
        #: (wall time, CE_sampler, versions) of each score, for the swarm page and metrics
        self.history: deque[tuple[float, float, list[int]]] = deque(maxlen=HISTORY_POINTS)

    def newest(self, block: int) -> tuple[int, bytes, list] | None:
        """(version, weights hash, holders) of the newest announced version of ``block``."""
        recs = version_records(self.swarm, block, self.model.config_hash())
        if not recs:
            return None
        top = max(recs, key=lambda r: r.version)
        holders = [r.owner for r in recs if r.content_hash == top.content_hash]
        return top.version, top.content_hash, holders

    async def assemble(
        self, timeout_s: float = 120.0, upto: int | None = None
    ) -> list[BlockDenoiser]:
        """The current model: every block (or blocks ``0..upto-1``) at its newest announced
        version (waits for them to be announced, up to ``timeout_s``)."""
        deadline = time.monotonic() + timeout_s
        wanted = self.model.n_blocks if upto is None else upto
        for b in range(wanted):
            said = time.monotonic()
            while True:
                found = self.newest(b)
                if found is not None:
                    version, weights, holders = found
                    if b in self._blocks and self._blocks[b][0] == weights:
                        break
                    try:
                        self._blocks[b] = (weights, version, await self._fetch(b, weights, holders))
                        break
                    except FetchError as exc:
                        log.info("[eval] block %d v%d: %s; retrying", b, version, exc)
                left = deadline - time.monotonic()
                if left <= 0:
                    raise FetchError(
                        f"no version of block {b} could be fetched in {timeout_s:g} s: "
                        f"{self.why_missing(b)}"
                    )
                if time.monotonic() - said >= WAIT_REPORT_S:
                    said = time.monotonic()
                    log.info(
                        "[eval] waiting for block %d (%.0f s left): %s",
                        b,
                        left,
                        self.why_missing(b),
                    )
                await self.swarm.changed(min(left, 1.0))  # new records, or try again
        return [self._blocks[b][2] for b in range(wanted)]

    def versions(self, upto: int) -> list[int]:
        """The versions of blocks ``0..upto-1`` assembled last."""
        return [self._blocks[b][1] for b in range(upto) if b in self._blocks]

    def why_missing(self, block: int) -> str:
        """What the swarm says about ``block``, and what to do, when no version is there."""
        records = [r for r in self.swarm.owners(block) if r.owner != self.swarm.me]
        want = self.model.config_hash()
        if not records:
            return (
                f"no peer announces block {block} yet; start a trainer of it "
                f"(node run --train-block {block} --corpus ...)"
            )
        other = [r for r in records if r.config_hash not in ("", want)]
        if other and len(other) == len(records):
            return (
                f"{len(other)} peer(s) announce block {block} of another model config "
                f"({other[0].config_hash[:12]}, ours {want[:12]}); give eval the swarm's model "
                "flags (--context, --d-model, --layers-per-block, --n-blocks, --span)"
            )
        trainers = [r for r in records if r.role == "train" and not r.content_hash]
        if trainers:
            return (
                f"{len(trainers)} trainer(s) of block {block} publish no version: they run with "
                "--round-steps 0; restart them with --round-steps N (the default, 50, publishes "
                "a version every 50 steps)"
            )
        servers = [r for r in records if r.role == "serve" and r.version == 0]
        if servers:
            return (
                f"block {block} is only served from checkpoint files, which hold no version "
                "to fetch; score a model of checkpoint files with scripts/bench_quality.py"
            )
        return f"block {block}'s holders did not answer (see the log above)"

    async def _fetch(self, block: int, weights: bytes, holders: list) -> BlockDenoiser:
        reached = await self.swarm.connect(holders)
        if not reached:
            raise FetchError("no holder reachable")
        signed = await self.transfers.get_manifest(reached[0], block, weights)
        if signed.manifest.config_hash != self.model.config_hash():
            raise FetchError(f"{reached[0].short()} holds block {block} of another model config")
        result = await self.transfers.fetch(signed, reached)
        self.fetched_bytes += result.bytes_fetched
        tensors = await asyncio.to_thread(result.stored.tensors)
        module = BlockDenoiser(self.model, block)
        module.load_state_dict(tensors, strict=True)
        module.quality = signed.manifest.quality  # r14: what the weighted rule weighs it by
        log.info(
            "[eval] block %d v%d: %.2f MB from %d holder(s) in %.2f s",
            block,
            signed.manifest.version,
            result.bytes_fetched / 1e6,
            len(reached),
            result.seconds,
        )
        return module

    async def score(self, timeout_s: float = 120.0) -> EvalPoint:
        """Assemble the current model and score it."""
        start = time.monotonic()
        blocks = await self.assemble(timeout_s)
        fetched = time.monotonic()
        with torch.no_grad():
            report = await asyncio.to_thread(
                evaluate_sampler, blocks, self.windows, seeds=self.seeds
            )
        point = EvalPoint(
            elapsed_s=round(time.monotonic() - self.started, 3),
            ce_sampler=report.ce_sampler,
            versions=[self._blocks[b][1] for b in range(self.model.n_blocks)],
            fetched_bytes=self.fetched_bytes,
            fetch_s=round(fetched - start, 3),
            eval_s=round(time.monotonic() - fetched, 3),
        )
        self.history.append((time.time(), point.ce_sampler, point.versions))
        return point


async def run_evaluator(
    swarm: SwarmView,
    transfers: Transfers,
    model: ModelConfig,
    windows: torch.Tensor,
    *,
    every_s: float,
    count: int,
    out: Path | None,
    timeout_s: float,
    evaluator: SwarmEvaluator | None = None,
) -> list[EvalPoint]:
    """Score the swarm's model ``count`` times, ``every_s`` apart; print and log each."""
    evaluator = evaluator or SwarmEvaluator(swarm, transfers, model, windows)
    points: list[EvalPoint] = []
    for i in range(count):
        started = time.monotonic()
        point = await evaluator.score(timeout_s)
        points.append(point)
        versions = ",".join(str(v) for v in point.versions)
        print(
            f"eval t={point.elapsed_s:.1f}s CE={point.ce_sampler:.4f} nats/byte "
            f"versions={versions} fetched={point.fetched_bytes / 1e6:.2f}MB",
            flush=True,
        )
        if out is not None:
            await asyncio.to_thread(_append_line, out, json.dumps(asdict(point)))
        if i + 1 < count:
            await asyncio.sleep(max(0.0, every_s - (time.monotonic() - started)))
    return points


def _append_line(path: Path, line: str) -> None:
    with open(path, "a") as f:
        f.write(line + "\n")
