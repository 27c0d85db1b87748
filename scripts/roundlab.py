"""A replica process for round benchmarks: a real node and a real round, synthetic training.

``python scripts/roundlab.py --size-mb 100 --rounds 4 --listen HOST:PORT --out FILE
[--bootstrap HOST:PORT] [--round-shards N] [--encoding bfloat16] [--replicas R]``

The node (connections, gossip, transfers) and the round (``node.installer``,
``node.replica``, ``node.aggregator``: sharded exchange, judging, averaging, install) are the
ones a trainer runs; only the training is synthetic: a block of ``--size-mb`` MB of float32
weights whose "training" adds a small random step to every weight (a real delta, at no
optimizer cost), so the benchmark measures the round itself. The process waits until
``--replicas`` replicas are live, runs ``--rounds`` rounds, waits for the last version to be
installed everywhere it can see, and writes its round log lines as JSON to ``--out``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from spheroid_p2p.core.gossip_params import LocalClaim
from spheroid_p2p.core.rounds import RoundParams
from spheroid_p2p.node.app import running_node
from spheroid_p2p.node.cli import run_async
from spheroid_p2p.node.config import NodeConfig
from spheroid_p2p.node.installer import Installer
from spheroid_p2p.node.replica import BlockReplica, RoundSettings
from spheroid_p2p.wire.deltas import ShardDelta, ShardUpdate

CONFIG = "roundlab"


class SyntheticBlock(torch.nn.Module):
    """``size_mb`` MB of float32 weights in eight tensors (a block's few large matrices)."""

    def __init__(self, size_mb: float, seed: int) -> None:
        super().__init__()
        n = int(size_mb * 1e6 / 4 / 8)
        g = torch.Generator().manual_seed(0)  # every replica starts from the same version 0
        for i in range(8):
            self.register_parameter(f"w{i}", torch.nn.Parameter(torch.randn(n, generator=g)))
        self.rng = torch.Generator().manual_seed(seed)


class SyntheticTraining:
    """``LocalTraining`` whose step adds a small random change to every weight."""

    def __init__(self, module: SyntheticBlock) -> None:
        self._module = module
        self._steps = 0

    @property
    def module(self) -> torch.nn.Module:
        return self._module

    @property
    def steps_done(self) -> int:
        return self._steps

    async def train_for(self, steps: int, stop_at_wall: float) -> tuple[int, float]:
        def step() -> None:
            with torch.no_grad():
                for p in self._module.parameters():
                    p.add_(torch.randn(p.shape, generator=self._module.rng), alpha=1e-4)

        await asyncio.to_thread(step)
        self._steps += steps
        return steps, 1.0


async def member(args: argparse.Namespace) -> list[dict[str, object]]:
    config = NodeConfig(
        listen=args.listen,
        bootstrap=tuple(args.bootstrap),
        key=args.workdir / "node.key",
        data_dir=args.workdir,
        compression=args.compression,
        tcp_congestion=args.tcp_congestion,
    )
    torch.set_num_threads(1)
    async with running_node(config) as node:
        params = RoundParams(period_s=args.period, grace_s=args.grace, max_shards=args.round_shards)
        module = SyntheticBlock(args.size_mb, args.seed)
        tag = f"{node.tag} lab"
        installer = Installer(
            node.swarm,
            node.transfers,
            node.store,
            node.key,
            block=0,
            n_blocks=1,
            config_hash=CONFIG,
            module=module,
            params=params,
            data_dir=args.workdir,
            spawn=node.spawn,
            tag=tag,
        )
        settings = RoundSettings(
            round_steps=1,
            encoding=args.encoding,
            params=params,
            min_replicas=args.replicas,
            replica_wait_s=120.0,
        )
        replica = BlockReplica(
            node.swarm,
            node.transfers,
            installer,
            node.key,
            SyntheticTraining(module),
            settings,
            data_dir=args.workdir,
            spawn=node.spawn,
            tag=tag,
        )

        def on_stream(peer: object, header: ShardDelta | ShardUpdate) -> None:
            if isinstance(header, ShardDelta):
                replica.aggregators.admit(peer, header)  # type: ignore[arg-type]
            else:
                replica.updates.admit(peer, header)  # type: ignore[arg-type]

        node.transfers.on_stream = on_stream  # type: ignore[assignment]
        node.transfers.on_manifest = installer.on_manifest
        node.swarm.announce(LocalClaim(block=0, role="train", config_hash=CONFIG))
        await replica.run(args.rounds)
        # stay (serving chunks, taking part) until every live replica installed the last one
        ends = time.monotonic() + 60
        last = installer.base.version if installer.base else 0
        while time.monotonic() < ends:
            versions = [r.version for r in node.swarm.owners(0) if r.role == "train"]
            if versions and min(versions) >= last:
                break
            await node.swarm.changed(1.0)
    path = args.workdir / "block-0.rounds.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mb", type=float, default=100.0)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--replicas", type=int, default=2)
    ap.add_argument("--round-shards", type=int, default=64)
    ap.add_argument("--encoding", default="bfloat16")
    ap.add_argument("--compression", default="none")
    ap.add_argument("--tcp-congestion")
    ap.add_argument("--period", type=float, default=60.0)
    ap.add_argument("--grace", type=float, default=20.0)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--listen", default="127.0.0.1:0")
    ap.add_argument("--bootstrap", action="append", default=[])
    ap.add_argument("--workdir", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    log = run_async(member(args))
    args.out.write_text(json.dumps(log))
    return 0 if any(e.get("kind") == "exchange" for e in log) else 1


def round_times(logs: list[list[dict[str, object]]]) -> list[dict[str, float]]:
    """Per round every replica took part in: from the first replica's delta to the last
    install (``time`` of each exchange line is its end)."""
    by_round: dict[int, list[dict[str, object]]] = {}
    for log in logs:
        for e in log:
            if e.get("kind") == "exchange" and e["installed"] == e["round"]:
                by_round.setdefault(int(e["round"]), []).append(e)  # type: ignore[arg-type]
    out = []
    for r, entries in sorted(by_round.items()):
        if len(entries) < len(logs):
            continue
        starts = [float(e["time"]) - float(e["seconds"]) for e in entries]  # type: ignore[arg-type]
        ends = [float(e["time"]) for e in entries]  # type: ignore[arg-type]
        out.append(
            {
                "round": r,
                "seconds": max(ends) - min(starts),
                "slowest_replica_s": max(float(e["seconds"]) for e in entries),  # type: ignore[arg-type]
                "bytes_out": float(sum(int(e["bytes_out"]) for e in entries)),  # type: ignore[arg-type]
            }
        )
    return out


def median(values: list[float]) -> float:
    values = sorted(values)
    return values[len(values) // 2] if values else math.nan


if __name__ == "__main__":
    sys.exit(main())
