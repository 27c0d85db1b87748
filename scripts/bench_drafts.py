"""Drafters for exact speculative traversals, side by side, in one process on trained models.

For each corpus it loads the per-byte model ``bench_prefix.py`` trained (``--models``) and
generates from held-out prompts by per-byte generation with the known-prefix rule, then with
speculative traversals under each drafter:

* prompt lookup, a byte n-gram model of the corpus's training text, the first of both
  (``client.drafts``);
* a span-K model's own one-traversal output (``--models/<corpus>-span<K>``, which
  ``bench_spans.py`` keeps): each draft costs one traversal of the span model's chain, counted
  apart and in ``traversals_with_drafts``.

Reports bytes per traversal of the per-byte chain, the same counting the span drafter's
traversals, the mean draft length, and whether every output is identical to per-byte
generation. No network: ``bench_inference.py --corpus`` times the same through servers.

    python scripts/bench_drafts.py --corpus ../shared/data/tinyshakespeare/input.txt \\
        --corpus ../shared/data/wikitext-2-raw

Writes JSON and prints one summary line.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch

from spheroid_p2p.client.drafts import DRAFTERS, drafter_by_name
from spheroid_p2p.ml.block import BlockDenoiser
from spheroid_p2p.ml.checkpoint import load_block
from spheroid_p2p.ml.data import load_corpus
from spheroid_p2p.ml.generate import generate
from spheroid_p2p.ml.prefixed import generate_prefixed

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
from benchlib import git_commit  # noqa: E402


class SpanDrafter:
    """Drafts with a span model: one traversal of its chain emits its K bytes."""

    def __init__(self, blocks: dict[int, BlockDenoiser]) -> None:
        self.blocks = blocks
        self.span = blocks[0].cfg.span
        self.calls = 0

    def __call__(self, text: bytes, most: int) -> bytes:
        self.calls += 1
        return generate(self.blocks, text, min(most, self.span), seed=self.calls)


def _blocks(folder: Path) -> dict[int, BlockDenoiser] | None:
    paths = sorted(folder.glob("block-*.safetensors"))
    if not paths:
        return None
    return {b: load_block(folder / f"block-{b}.safetensors") for b in range(len(paths))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", action="append", required=True)
    parser.add_argument("--models", type=Path, default=ROOT / "bench-out" / "models")
    parser.add_argument("--span", type=int, default=8)
    parser.add_argument("--prompts", type=int, default=6)
    parser.add_argument("--bytes", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "bench-out" / "bench_drafts.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    results: dict[str, Any] = {}
    for path in args.corpus:
        corpus = load_corpus(path)
        blocks = _blocks(args.models / corpus.name)
        if blocks is None:
            results[corpus.name] = {"skipped": "no trained model: run bench_prefix.py"}
            continue
        held = bytes(corpus.eval.tolist())
        step = len(held) // (args.prompts + 1)
        prompts = [held[(i + 1) * step : (i + 1) * step + 96] for i in range(args.prompts)]
        base = [generate_prefixed(blocks, p, args.bytes, seed=i) for i, p in enumerate(prompts)]
        train = bytes(corpus.train[:1_000_000].tolist())
        drafters: dict[str, Any] = {name: drafter_by_name(name, train) for name in DRAFTERS[1:]}
        span_blocks = _blocks(args.models / f"{corpus.name}-span{args.span}")
        if span_blocks is not None:
            drafters[f"span{args.span}"] = None  # made per prompt (it counts its traversals)
        rows: dict[str, Any] = {}
        for name, drafter in drafters.items():
            traversals = drafted = identical = extra = 0
            for i, prompt in enumerate(prompts):
                if name.startswith("span"):
                    assert span_blocks is not None
                    drafter = SpanDrafter(span_blocks)
                stats: dict[str, int] = {}
                out = generate_prefixed(
                    blocks, prompt, args.bytes, seed=i, drafter=drafter, stats=stats
                )
                identical += out == base[i]
                traversals += stats["traversals"]
                drafted += stats["drafted"]
                extra += drafter.calls if isinstance(drafter, SpanDrafter) else 0
            total = args.bytes * len(prompts)
            rows[name] = {
                "bytes_per_traversal": total / traversals,
                "traversals_with_drafts": traversals + extra,
                "bytes_per_traversal_with_drafts": total / (traversals + extra),
                "draft_per_traversal": drafted / traversals,
                "identical": identical,
                "prompts": len(prompts),
            }
            print(f"[bench_drafts] {corpus.name} {name}: {json.dumps(rows[name])}", file=sys.stderr)
        results[corpus.name] = rows
    report = {
        "benchmark": "bench_drafts",
        "git_commit": git_commit(),
        "bytes": args.bytes,
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    cells = []
    for name, rows in results.items():
        if "skipped" in rows:
            cells.append(f"{name}: skipped")
            continue
        cells.append(
            f"{name}: "
            + ", ".join(
                f"{d} {r['bytes_per_traversal']:.2f}"
                + (
                    f" ({r['bytes_per_traversal_with_drafts']:.2f} counting drafts)"
                    if d.startswith("span")
                    else ""
                )
                for d, r in rows.items()
            )
        )
    print(f"bench_drafts ({args.bytes} B, bytes per traversal): {'; '.join(cells)} -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
