"""Inference benchmark on loopback: BlockTrain traversals against the autoregressive pipeline.

For each setup it starts 4 server processes on 127.0.0.1 (one block, or one layer stage, each),
then generates 128 and 512 bytes through them and records wall time, traversals and time per
traversal:

* BlockTrain, span K = 1 (layout S: one traversal per byte), under today's rule (every row of
  the window from fresh noise, recomputed by every block: ``K1``) and under the known-prefix
  rule with each server's session cache (10 §10.8: one new known row and one trajectory row per
  block: ``K1_cached``), on the same servers;
* BlockTrain, span K = 32 and K = the context (layout P: one traversal per span);
* the baseline: the autoregressive model of the same total depth, split by layers over the
  4 servers with KV caches (one traversal per byte).

Weights are random (timing does not depend on them); width, depth and context are the
defaults of the quality benchmark. All setups run in one invocation, so the ratios against the
pipeline are comparable. Writes JSON and prints one summary line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
from benchlib import git_commit  # noqa: E402

sys.path.insert(0, str(ROOT))

from spheroid_p2p.client.traversal import GenerationReport, TraversalClient  # noqa: E402
from spheroid_p2p.ml.baselines import ARTransformer  # noqa: E402
from spheroid_p2p.ml.block import BlockDenoiser  # noqa: E402
from spheroid_p2p.ml.checkpoint import save_ar, save_block  # noqa: E402
from spheroid_p2p.ml.config import ModelConfig  # noqa: E402
from spheroid_p2p.node.launcher import NodeProcess, wait_for  # noqa: E402

PROMPT = b"Day 12. Weather: rain from the west.\n"


def _serving(node: NodeProcess, count: int) -> bool:
    try:
        return sum(1 for r in node.status().records if r.role == "serve") >= count
    except Exception:
        return False


def _start(workdir: Path, name: str, per_node_args: list[list[str]]) -> list[NodeProcess]:
    nodes: list[NodeProcess] = []
    for i, args in enumerate(per_node_args):
        extra = ["--bootstrap", nodes[0].addr] if nodes else []
        nodes.append(
            NodeProcess(workdir, f"{name}{i}", *args, *extra, "--threads", "1", verbose=0).start()
        )
    wait_for(lambda: _serving(nodes[0], len(per_node_args)), timeout_s=120)
    return nodes


def _generate(addr: str, n: int, ar: bool, rule: str = "known") -> GenerationReport:
    async def run() -> GenerationReport:
        client = TraversalClient(timeout_s=60.0)
        await client.start()
        try:
            if ar:
                return await client.generate_ar(addr, PROMPT, n)
            return await client.generate(addr, PROMPT, n, rule=rule)
        finally:
            await client.close()

    return asyncio.run(run())


def _measure(addr: str, sizes: list[int], ar: bool, rule: str = "known") -> dict[str, Any]:
    out: dict[str, Any] = {}
    _generate(addr, 4, ar, rule)  # warm-up: connections, first forward passes
    for n in sizes:
        report = _generate(addr, n, ar, rule)
        reused = [min(hops) for hops in report.reused if hops]
        out[str(n)] = {
            "traversals_reusing_sessions": sum(1 for r in reused if r > 0),
            "seconds": report.seconds,
            "traversals": report.traversals,
            "ms_per_traversal": report.seconds * 1000 / max(1, report.traversals),
            "bytes_per_second": n / report.seconds,
            "client_bytes_sent": report.bytes_sent,
            "retries": report.retries,
        }
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="128,512")
    parser.add_argument("--context", type=int, default=128)
    parser.add_argument("--spans", default="1,32,full")
    parser.add_argument("--out", type=Path, default=ROOT / "bench-out" / "bench_inference.json")
    args = parser.parse_args(argv)
    sizes = [int(v) for v in args.sizes.split(",")]
    workdir = Path(tempfile.mkdtemp(prefix="bench-inference-"))
    torch.manual_seed(0)
    results: dict[str, Any] = {}
    for span_text in args.spans.split(","):
        span = args.context if span_text == "full" else int(span_text)
        cfg = ModelConfig(context=args.context, layout="S" if span == 1 else "P", span=span)
        paths = []
        for b in range(cfg.n_blocks):
            path = workdir / f"k{span}-block{b}.safetensors"
            save_block(path, BlockDenoiser(cfg, b))
            paths.append(path)
        nodes = _start(workdir, f"k{span}-", [["--checkpoint", str(p)] for p in paths])
        rules = [("noisy", f"blocktrain_K{span_text}")]
        if span == 1:
            rules.append(("known", "blocktrain_K1_cached"))
        try:
            for rule, key in rules:
                results[key] = {"span": span, **_measure(nodes[0].addr, sizes, False, rule)}
                print(f"  {key}: {json.dumps(results[key])}", file=sys.stderr, flush=True)
        finally:
            for node in nodes:
                node.stop()
    cfg = ModelConfig(context=args.context)
    ar_path = workdir / "ar.safetensors"
    save_ar(ar_path, ARTransformer(cfg, cfg.n_blocks * cfg.layers_per_block))
    nodes = _start(
        workdir,
        "ar-",
        [["--ar-checkpoint", str(ar_path), "--ar-stage", f"{s}/4"] for s in range(4)],
    )
    try:
        results["ar_pipeline"] = _measure(nodes[0].addr, sizes, ar=True)
    finally:
        for node in nodes:
            node.stop()
    for value in results.values():
        for n in sizes:
            value[str(n)]["speedup_vs_ar_pipeline"] = (
                results["ar_pipeline"][str(n)]["seconds"] / value[str(n)]["seconds"]
            )
    report = {
        "benchmark": "bench_inference",
        "git_commit": git_commit(),
        "params": {
            "sizes": sizes,
            "context": args.context,
            "servers": 4,
            "config": json.loads(cfg.to_json()),
        },
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    parts = ["bench_inference (4 servers, loopback):"]
    for key, value in results.items():
        cells = ", ".join(
            f"{n} B {value[str(n)]['seconds']:.2f} s "
            f"({value[str(n)]['traversals']} trav, "
            f"x{value[str(n)]['speedup_vs_ar_pipeline']:.1f})"
            for n in sizes
        )
        parts.append(f"{key}: {cells};")
    parts.append(f"-> {args.out}")
    print(" ".join(parts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
