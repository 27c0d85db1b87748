"""Prefix rules: today's (every row fresh noise) against the known-prefix rule, on trained models.

For each corpus it trains the default per-byte BlockTrain model (single-process reference run,
``--block-steps`` per block; reused from ``--models`` when already there) and measures, on the
same held-out windows and noise seeds:

* CE_sampler and CE_first under today's rule (``ml.evaluate.evaluate_sampler``);
* the same under the known-prefix rule (``ml.evaluate.evaluate_prefixed``), where every row
  whose next byte is known carries that byte's code noised to the block's sigma;
* per-byte generation from held-out prompts with the known-prefix rule, with and without each
  block's key/value cache: whether the bytes are identical, and the time per byte of each.

The trained checkpoints stay in ``--models`` for ``bench_inference.py --models``. Writes JSON
and prints one summary line.

Example::

    python scripts/bench_prefix.py --corpus ../shared/data/tinyshakespeare/input.txt \\
        --corpus ../shared/data/wikitext-2-raw
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

from spheroid_p2p.ml.block import BlockDenoiser
from spheroid_p2p.ml.checkpoint import load_block, save_block
from spheroid_p2p.ml.config import ModelConfig, TrainConfig
from spheroid_p2p.ml.data import ByteCorpus, load_corpus
from spheroid_p2p.ml.evaluate import evaluate_prefixed, evaluate_sampler
from spheroid_p2p.ml.prefixed import generate_prefixed
from spheroid_p2p.ml.training import block_trainers, train_blocktrain

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
from benchlib import git_commit  # noqa: E402


def _log(msg: str) -> None:
    print(f"[bench_prefix] {msg}", file=sys.stderr, flush=True)


def trained_blocks(
    corpus: ByteCorpus, cfg: ModelConfig, steps: int, folder: Path, seed: int
) -> tuple[list[BlockDenoiser], float]:
    """The corpus's trained blocks: loaded from ``folder`` if all are there, else trained."""
    paths = [folder / f"block-{b}.safetensors" for b in range(cfg.n_blocks)]
    if all(p.exists() for p in paths):
        blocks = [load_block(p, expect=cfg) for p in paths]
        _log(f"{corpus.name}: loaded {len(blocks)} trained blocks from {folder}")
        return blocks, 0.0
    tcfg = TrainConfig(steps=steps, warmup_steps=min(100, steps // 10))
    trainers = block_trainers(cfg, tcfg, seed)
    start = time.perf_counter()
    total = steps * cfg.n_blocks

    def progress(i: int, _b: int, entry: Any) -> None:
        if i % max(1, total // 10) == 0:
            _log(f"{corpus.name}: block-step {i}/{total}, loss {entry.loss:.3f}")

    train_blocktrain(trainers, corpus, total, seed, on_step=progress)
    seconds = time.perf_counter() - start
    folder.mkdir(parents=True, exist_ok=True)
    for path, trainer in zip(paths, trainers, strict=True):
        save_block(path, trainer.block)
    return [t.block for t in trainers], seconds


def prompts(corpus: ByteCorpus, count: int, length: int) -> list[bytes]:
    """``count`` held-out prompts of ``length`` bytes, spread over the evaluation stream."""
    data = bytes(corpus.eval.tolist())
    step = max(1, (len(data) - length) // count)
    return [data[i * step : i * step + length] for i in range(count)]


def generation(blocks: list[BlockDenoiser], texts: list[bytes], n_bytes: int) -> dict[str, Any]:
    """Cached against uncached per-byte generation under the known-prefix rule."""
    by_index = dict(enumerate(blocks))
    identical = 0
    times = {"cached": 0.0, "uncached": 0.0}
    for i, prompt in enumerate(texts):
        outs = {}
        for mode in times:
            start = time.perf_counter()
            outs[mode] = generate_prefixed(
                by_index, prompt, n_bytes, seed=i, cached=mode == "cached"
            )
            times[mode] += time.perf_counter() - start
        identical += outs["cached"] == outs["uncached"]
    per_byte = {k: v * 1000 / (n_bytes * len(texts)) for k, v in times.items()}
    return {
        "prompts": len(texts),
        "bytes_each": n_bytes,
        "identical": identical,
        "ms_per_byte": per_byte,
        "speedup_cached": per_byte["uncached"] / per_byte["cached"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", action="append", required=True, help="text file or folder")
    parser.add_argument("--context", type=int, default=128)
    parser.add_argument("--block-steps", type=int, default=500)
    parser.add_argument("--eval-windows", type=int, default=128)
    parser.add_argument("--gen-prompts", type=int, default=4)
    parser.add_argument("--gen-bytes", type=int, default=160)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--models", type=Path, default=ROOT / "bench-out" / "models")
    parser.add_argument("--out", type=Path, default=ROOT / "bench-out" / "bench_prefix.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = ModelConfig(context=args.context)
    results: dict[str, Any] = {}
    for path in args.corpus:
        corpus = load_corpus(path)
        blocks, train_s = trained_blocks(
            corpus, cfg, args.block_steps, args.models / corpus.name, args.seed
        )
        windows = corpus.eval_windows(cfg.context, args.eval_windows)
        today = evaluate_sampler(blocks, windows)
        known = evaluate_prefixed(blocks, windows)
        gen = generation(blocks, prompts(corpus, args.gen_prompts, 64), args.gen_bytes)
        results[corpus.name] = {
            "train_seconds": train_s,
            "today": {
                "ce_sampler": today.ce_sampler,
                "per_seed": today.ce_per_seed,
                "ce_first": today.ce_first,
            },
            "known_prefix": {
                "ce_sampler": known.ce_sampler,  # the output rule's (weighted, r14)
                "ce_last_block": known.ce_last,
                "per_seed": known.ce_per_seed,
                "ce_first": known.ce_first,
            },
            "delta_known_minus_today": known.ce_sampler - today.ce_sampler,
            "generation": gen,
        }
        _log(f"{corpus.name}: {json.dumps(results[corpus.name])}")
    report = {
        "benchmark": "bench_prefix",
        "git_commit": git_commit(),
        "config": json.loads(cfg.to_json()),
        "block_steps": args.block_steps,
        "eval_windows": args.eval_windows,
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    cells = [
        f"{name}: CE_sampler today {r['today']['ce_sampler']:.3f}, known prefix "
        f"{r['known_prefix']['ce_sampler']:.3f} ({r['delta_known_minus_today']:+.3f}); cached "
        f"generation identical {r['generation']['identical']}/{r['generation']['prompts']}, "
        f"x{r['generation']['speedup_cached']:.1f} per byte"
        for name, r in results.items()
    ]
    print(f"bench_prefix: {'; '.join(cells)} -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
