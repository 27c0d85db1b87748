"""Span quality: variants of the span-K model (layout P) against the per-byte model, per corpus.

A span model denoises K bytes jointly, so one traversal emits K bytes; today it pays about
0.8-1.1 nats/byte for it. The suspected cause: at sigma >= 5 a slot's noisy code carries almost
nothing about its byte, so the slots cannot use each other. Each variant trains the default
model with ``--span`` (single-process reference run, ``--block-steps`` per block) and reports,
on the same held-out windows as ``bench_prefix.py``:

* CE_span (mean of 3 noise seeds over every slot), CE of the first and the last slot, with 1
  and with ``--more-steps`` Euler steps per block (more steps in every block, the last one's
  included, at inference only);
* leakage: teacher-forced CE of the last block, whose input code is the true byte noised at
  its own sigma (far below CE_span means the block reads the answer off its input, which the
  sampler cannot give it);
* the gap to the per-byte model (K = 1, layout S) of the same corpus, from ``bench_prefix.json``.

The default variant's checkpoints are kept in ``--models`` (``<corpus>-span<K>``): the span
drafter of speculative traversals uses them.

Variants: ``default``; ``sigma1`` / ``sigma2``: a sigma floor of 1 / 2 (more signal in the
codes of the last block); a variant is ``name:key=value,...`` over ModelConfig fields.

    python scripts/bench_spans.py --corpus ../shared/data/tinyshakespeare/input.txt \\
        --corpus ../shared/data/wikitext-2-raw

Writes JSON and prints one summary line.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

from spheroid_p2p.ml.checkpoint import save_block
from spheroid_p2p.ml.config import ModelConfig, TrainConfig
from spheroid_p2p.ml.data import load_corpus
from spheroid_p2p.ml.evaluate import ce_teacher_forced, evaluate_sampler
from spheroid_p2p.ml.training import block_trainers, train_blocktrain

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
from benchlib import git_commit  # noqa: E402

VARIANTS = {
    "default": {},
    "sigma2": {"sigma_min": 2.0},
    "sigma1": {"sigma_min": 1.0},
}


def _variant(text: str) -> tuple[str, dict[str, Any]]:
    if text in VARIANTS:
        return text, VARIANTS[text]
    name, _, fields = text.partition(":")
    changes: dict[str, Any] = {}
    for item in filter(None, fields.split(",")):
        key, _, value = item.partition("=")
        kind = type(getattr(ModelConfig(), key))
        changes[key] = value == "True" if kind is bool else kind(value)
    return name, changes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", action="append", required=True)
    parser.add_argument("--span", type=int, default=8)
    parser.add_argument("--variants", default="default,sigma2,sigma1")
    parser.add_argument("--block-steps", type=int, default=500)
    parser.add_argument("--eval-windows", type=int, default=128)
    parser.add_argument("--more-steps", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--per-byte", type=Path, default=ROOT / "bench-out" / "bench_prefix.json")
    parser.add_argument("--models", type=Path, default=ROOT / "bench-out" / "models")
    parser.add_argument("--out", type=Path, default=ROOT / "bench-out" / "bench_spans.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    per_byte = {}
    if args.per_byte.exists():
        for name, row in json.loads(args.per_byte.read_text())["results"].items():
            per_byte[name] = row["today"]["ce_sampler"]
    results: dict[str, Any] = {}
    for path in args.corpus:
        corpus = load_corpus(path)
        windows = corpus.eval_windows(128, args.eval_windows)
        rows: dict[str, Any] = {}
        for text in args.variants.split(","):
            name, changes = _variant(text)
            cfg = ModelConfig(layout="P", span=args.span, **changes)
            tcfg = TrainConfig(
                steps=args.block_steps, warmup_steps=min(100, args.block_steps // 10)
            )
            trainers = block_trainers(cfg, tcfg, args.seed)
            start = time.perf_counter()
            train_blocktrain(trainers, corpus, args.block_steps * cfg.n_blocks, args.seed)
            seconds = time.perf_counter() - start
            blocks = [t.block for t in trainers]
            if name == "default":  # the span drafter of bench_inference / bench_prefix uses it
                folder = args.models / f"{corpus.name}-span{args.span}"
                folder.mkdir(parents=True, exist_ok=True)
                for b, block in enumerate(blocks):
                    save_block(folder / f"block-{b}.safetensors", block)
            one = evaluate_sampler(blocks, windows)
            more = evaluate_sampler(blocks, windows, steps_per_block=args.more_steps)
            leak = ce_teacher_forced(blocks, windows)
            rows[name] = {
                "changes": changes,
                "train_seconds": seconds,
                "ce_span": one.ce_sampler,
                "ce_first_slot": one.ce_by_slot[0],
                "ce_last_slot": one.ce_by_slot[-1],
                "ce_by_slot": one.ce_by_slot,
                f"ce_span_{args.more_steps}_steps": more.ce_sampler,
                "teacher_forced_per_block": leak,
                "gap_to_per_byte": one.ce_sampler - per_byte[corpus.name]
                if corpus.name in per_byte
                else None,
            }
            print(f"[bench_spans] {corpus.name} {name}: {json.dumps(rows[name])}", file=sys.stderr)
        results[corpus.name] = {"per_byte_ce_sampler": per_byte.get(corpus.name), "variants": rows}
    report = {
        "benchmark": "bench_spans",
        "git_commit": git_commit(),
        "span": args.span,
        "block_steps": args.block_steps,
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    cells = []
    for name, res in results.items():
        for variant, row in res["variants"].items():
            gap = row["gap_to_per_byte"]
            cells.append(
                f"{name} {variant} CE_span {row['ce_span']:.3f}"
                + (f" ({gap:+.3f} vs K=1)" if gap is not None else "")
            )
    print(f"bench_spans K={args.span}: {'; '.join(cells)} -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
