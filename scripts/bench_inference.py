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
pipeline are comparable.

With ``--corpus PATH`` (repeatable) it also serves the trained checkpoints of each corpus
(``--models``, written by ``bench_prefix.py``) on 4 servers and generates from held-out prompts
by cached per-byte traversals and by speculative traversals with each drafter (prompt lookup,
an n-gram model of the corpus's training text, the first of both): bytes per traversal (the
acceptance depends on real weights), time, and whether the output is identical to per-byte
generation. Writes JSON and prints one summary line.
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

from spheroid_p2p.client.drafts import DRAFTERS, drafter_by_name  # noqa: E402
from spheroid_p2p.client.traversal import GenerationReport, TraversalClient  # noqa: E402
from spheroid_p2p.ml.baselines import ARTransformer  # noqa: E402
from spheroid_p2p.ml.block import BlockDenoiser  # noqa: E402
from spheroid_p2p.ml.checkpoint import save_ar, save_block  # noqa: E402
from spheroid_p2p.ml.config import ModelConfig  # noqa: E402
from spheroid_p2p.ml.data import load_corpus  # noqa: E402
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


def _speculative(addr: str, prompt: bytes, n: int, drafter: Any, seed: int) -> GenerationReport:
    async def run() -> GenerationReport:
        client = TraversalClient(timeout_s=60.0)
        await client.start()
        try:
            return await client.generate(addr, prompt, n, seed=seed, drafter=drafter)
        finally:
            await client.close()

    return asyncio.run(run())


def _trained(workdir: Path, models: Path, path: str, sizes: list[int], prompts: int) -> Any:
    """Cached per-byte and speculative traversals on a corpus's trained checkpoints."""
    corpus = load_corpus(path)
    folder = models / corpus.name
    paths = [folder / f"block-{b}.safetensors" for b in range(4)]
    if not all(p.exists() for p in paths):
        return {"skipped": f"no trained checkpoints in {folder} (run bench_prefix.py)"}
    train = bytes(corpus.train[:1_000_000].tolist())
    held = bytes(corpus.eval.tolist())
    step = len(held) // (prompts + 1)
    texts = [held[(i + 1) * step : (i + 1) * step + 96] for i in range(prompts)]
    nodes = _start(workdir, f"{corpus.name}-", [["--checkpoint", str(p)] for p in paths])
    out: dict[str, Any] = {"corpus": corpus.name, "prompts": prompts}
    try:
        _speculative(nodes[0].addr, texts[0], 4, None, 0)  # warm-up
        for n in sizes:
            rows: dict[str, Any] = {}
            baseline: list[bytes] = []
            for name in DRAFTERS:
                drafter = drafter_by_name(name, train)
                seconds = traversals = drafted = identical = 0
                for i, text in enumerate(texts):
                    report = _speculative(nodes[0].addr, text, n, drafter, seed=i)
                    if name == "none":
                        baseline.append(report.output)
                    identical += report.output == baseline[i]
                    seconds += report.seconds
                    traversals += report.traversals
                    drafted += report.drafted
                rows[name] = {
                    "seconds": seconds / len(texts),
                    "traversals": traversals / len(texts),
                    "bytes_per_traversal": n * len(texts) / traversals,
                    "drafted_per_traversal": drafted / traversals,
                    "identical_to_per_byte": identical,
                }
                print(f"  {corpus.name} {n} B {name}: {json.dumps(rows[name])}", file=sys.stderr)
            out[str(n)] = rows
    finally:
        for node in nodes:
            node.stop()
    return out


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
    parser.add_argument("--corpus", action="append", default=[], help="trained-model rows")
    parser.add_argument("--models", type=Path, default=ROOT / "bench-out" / "models")
    parser.add_argument("--prompts", type=int, default=2, help="held-out prompts per corpus")
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
    trained = {
        path: _trained(workdir, args.models, path, sizes, args.prompts) for path in args.corpus
    }
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
        "trained": trained,
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
    for value in trained.values():
        if "corpus" in value:
            cells = ", ".join(
                f"{name} {value[str(n)][name]['bytes_per_traversal']:.2f} B/trav"
                for n in sizes[-1:]
                for name in DRAFTERS[1:]
            )
            parts.append(f"{value['corpus']} ({sizes[-1]} B): {cells};")
    parts.append(f"-> {args.out}")
    print(" ".join(parts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
