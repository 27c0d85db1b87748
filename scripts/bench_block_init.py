"""Initialisation study: how fast does one block learn, against the one-block control (C)?

Trains block 0 alone for ``--steps`` steps under each initialisation variant and reports its
teacher-forced CE at sigma = 6, 20 and 80 (block 0 predicts almost purely from context there),
next to baseline (C) trained the same number of steps on the same data. This is the
measurement behind the defaults ``zero_init_head=False``, ``zero_init_w_in=True`` and the
smooth sigma features. JSON out, one summary line.

Example::

    python scripts/bench_block_init.py --corpus ../shared/data/tinyshakespeare/input.txt
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
from benchlib import git_commit  # noqa: E402
from spheroid_p2p.ml.config import ModelConfig, TrainConfig  # noqa: E402
from spheroid_p2p.ml.data import load_corpus  # noqa: E402
from spheroid_p2p.ml.evaluate import ce_autoregressive  # noqa: E402
from spheroid_p2p.ml.training import ARTrainer, BlockTrainer  # noqa: E402

VARIANTS: dict[str, dict[str, Any]] = {
    "default": {},
    "zero head (AdaLN-Zero as in DiT)": {"zero_init_head": True},
    "zero head, random W_in": {"zero_init_head": True, "zero_init_w_in": False},
    "zero head, random W_in, sharp sigma features (x100)": {
        "zero_init_head": True,
        "zero_init_w_in": False,
        "noise_max_freq": 100.0,
    },
    "gate offset 1 (plain pre-LN start)": {"gate_offset": 1.0},
}


@torch.no_grad()
def block_ce(trainer: BlockTrainer, windows: torch.Tensor, sigma: float) -> float:
    block = trainer.block.eval()
    x, y = windows[:, :-1], windows[:, 1:]
    gen = torch.Generator().manual_seed(0)
    z = block.codebook[y] + sigma * torch.randn(*y.shape, block.cfg.d_z, generator=gen)
    logits = block(x, z, torch.full((x.shape[0],), sigma)).logits
    return float(F.cross_entropy(logits.reshape(-1, 256), y.reshape(-1)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", default="embedded")
    parser.add_argument("--context", type=int, default=64)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "bench-out" / "bench_block_init.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    corpus = load_corpus(args.corpus)
    windows = corpus.eval_windows(args.context, 48)
    tcfg = TrainConfig(steps=args.steps, warmup_steps=max(1, args.steps // 10))
    control = ARTrainer(ModelConfig(context=args.context), tcfg, 2, seed=0)
    gen = torch.Generator().manual_seed(1)
    for _ in range(args.steps):
        control.step(corpus.batch(32, args.context, gen))
    results: dict[str, Any] = {"C (2-layer AR)": ce_autoregressive(control.model, windows)}
    for name, changes in VARIANTS.items():
        cfg = ModelConfig(context=args.context, **changes)
        trainer = BlockTrainer(cfg, tcfg, 0, seed=0)
        gen = torch.Generator().manual_seed(1)
        for _ in range(args.steps):
            trainer.step(corpus.batch(32, args.context, gen))
        results[name] = {f"sigma_{s:g}": block_ce(trainer, windows, s) for s in (6.0, 20.0, 80.0)}
        print(f"  {name}: {results[name]}", file=sys.stderr, flush=True)
    report = {
        "benchmark": "bench_block_init",
        "git_commit": git_commit(),
        "params": {"corpus": corpus.name, "context": args.context, "steps": args.steps},
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    cells = [f"C {results['C (2-layer AR)']:.3f}"] + [
        f"{n.split(' (')[0]} {v['sigma_80']:.3f}" for n, v in results.items() if isinstance(v, dict)
    ]
    print(
        f"bench_block_init ({corpus.name}, {args.steps} steps, CE at sigma 80): "
        + "; ".join(cells)
        + f" -> {args.out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
