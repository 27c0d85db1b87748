"""Quality benchmark: BlockTrain against its baselines at matched compute, on one corpus.

Trains, on the same data and evaluation windows:

* the 4-block BlockTrain model (single-process reference: a random block per step,
  ``4 x --block-steps`` block-steps in total);
* (A) an autoregressive Transformer of the same total depth, ``--block-steps`` steps;
* (C) the one-block control (A with one block's layers), ``--block-steps`` steps;
* optionally (B) the same blocks trained end to end through the unrolled sampler;
* optionally span-K models (layout P), one per ``--spans`` value, and sampler variants
  (Euler steps per block) evaluated on the trained model.

Reports CE_sampler (mean of 3 noise seeds), CE_first, teacher-forced CE per block, CE of the
baselines, every gap, peak tensor memory and process RSS of one block-step against one step
of (A); writes JSON and a PNG of CE against training time, and prints one summary line.

Example::

    python scripts/bench_quality.py --corpus ../shared/data/tinyshakespeare/input.txt
    python scripts/bench_quality.py --corpus ../shared/data/wikitext-2-raw --spans 1,8,32,128
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from spheroid_p2p.ml.config import ModelConfig, TrainConfig
from spheroid_p2p.ml.data import ByteCorpus, load_corpus
from spheroid_p2p.ml.evaluate import (
    ce_autoregressive,
    ce_teacher_forced,
    evaluate_sampler,
    nats_report,
)
from spheroid_p2p.ml.memory import max_rss_bytes, peak_tensor_memory
from spheroid_p2p.ml.training import (
    ARTrainer,
    BlockTrainer,
    EndToEndTrainer,
    StepLog,
    block_trainers,
    train_blocktrain,
)

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
from benchlib import git_commit  # noqa: E402


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class Curve:
    """CE against training time, evaluated every ``every`` steps on a few windows."""

    def __init__(self, name: str, evaluate: Callable[[], float], every: int) -> None:
        self.name = name
        self.evaluate = evaluate
        self.every = every
        self.points: list[tuple[float, int, float]] = []
        self.train_seconds = 0.0

    def after_step(self, steps: int, entry: StepLog, total: int) -> None:
        self.train_seconds += entry.seconds
        if steps % self.every == 0 or steps == total:
            ce = self.evaluate()
            self.points.append((self.train_seconds, steps, ce))
            _log(
                f"{self.name}: step {steps}/{total} train loss {entry.loss:.3f} eval CE {ce:.3f} "
                f"({self.train_seconds:.0f} s)"
            )


def train_blocktrain_curve(
    cfg: ModelConfig,
    tcfg: TrainConfig,
    corpus: ByteCorpus,
    steps: int,
    probe: torch.Tensor,
    seed: int,
    name: str,
) -> tuple[list[BlockTrainer], Curve]:
    """The reference run of :func:`train_blocktrain`, with an eval curve on ``probe``."""
    trainers = block_trainers(cfg, tcfg, seed)
    blocks = [t.block for t in trainers]
    total = steps * cfg.n_blocks
    curve = Curve(
        name,
        lambda: evaluate_sampler(blocks, probe, seeds=(0,)).ce_sampler,
        max(1, total // 10),
    )
    train_blocktrain(
        trainers,
        corpus,
        total,
        seed,
        on_step=lambda i, _b, entry: curve.after_step(i, entry, total),
    )
    return trainers, curve


def train_ar(
    cfg: ModelConfig,
    tcfg: TrainConfig,
    corpus: ByteCorpus,
    steps: int,
    n_layers: int,
    probe: torch.Tensor,
    seed: int,
    name: str,
) -> tuple[ARTrainer, Curve]:
    trainer = ARTrainer(cfg, tcfg, n_layers, seed=seed)
    curve = Curve(name, lambda: ce_autoregressive(trainer.model, probe), max(1, steps // 10))
    data = torch.Generator().manual_seed(seed + 1)
    for i in range(steps):
        curve.after_step(
            i + 1, trainer.step(corpus.batch(tcfg.batch_size, cfg.context, data)), steps
        )
    return trainer, curve


def train_e2e(
    cfg: ModelConfig,
    tcfg: TrainConfig,
    corpus: ByteCorpus,
    steps: int,
    probe: torch.Tensor,
    seed: int,
) -> tuple[EndToEndTrainer, Curve]:
    trainer = EndToEndTrainer(cfg, tcfg, seed=seed)
    blocks = list(trainer.blocks)
    curve = Curve(
        "B (end-to-end)",
        lambda: evaluate_sampler(blocks, probe, seeds=(0,)).ce_sampler,  # type: ignore[arg-type]
        max(1, steps // 10),
    )
    data = torch.Generator().manual_seed(seed + 1)
    for i in range(steps):
        curve.after_step(
            i + 1, trainer.step(corpus.batch(tcfg.batch_size, cfg.context, data)), steps
        )
    return trainer, curve


def memory_probe(which: str, context: int, batch: int) -> dict[str, Any]:
    """Peak tensor memory of one optimizer step of a block (block 0) or of baseline (A)."""
    cfg = ModelConfig(context=context)
    tcfg = TrainConfig(batch_size=batch)
    gen = torch.Generator().manual_seed(0)
    windows = torch.randint(0, 256, (batch, context + 1), generator=gen)
    rss_before = max_rss_bytes()  # the interpreter and torch, before any model exists
    if which == "block":
        trainer: Any = BlockTrainer(cfg, tcfg, 0, seed=0)
        module = trainer.block
    else:
        trainer = ARTrainer(cfg, tcfg, cfg.n_blocks * cfg.layers_per_block, seed=0)
        module = trainer.model
    for _ in range(4):  # plain training steps: their high-water mark is the RSS we report
        trainer.step(windows)
    rss = max_rss_bytes()
    # Then one step under the tensor tracker (which itself costs memory, so it comes last).
    peak = peak_tensor_memory(module, trainer.optimizer, lambda: trainer.step(windows))
    return {
        "peak_tensor_bytes": peak,
        "max_rss_bytes": rss,
        "rss_training_bytes": rss - rss_before,
        "params": sum(p.numel() for p in module.parameters()),
    }


def _probe_subprocess(which: str, context: int, batch: int) -> dict[str, Any]:
    """Run :func:`memory_probe` in a fresh process, so its RSS is its own."""
    out = subprocess.run(
        [
            sys.executable,
            __file__,
            "--memory-probe",
            which,
            "--context",
            str(context),
            "--batch",
            str(batch),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def plot(curves: list[Curve], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for curve in curves:
        if curve.points:
            ax.plot(
                [p[0] for p in curve.points],
                [p[2] for p in curve.points],
                marker="o",
                label=curve.name,
            )
    ax.set_xlabel("training time (s, this machine)")
    ax.set_ylabel("eval CE (nats/byte)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--corpus",
        default="embedded",
        help="text file, WikiText raw folder, or 'embedded' (default)",
    )
    parser.add_argument("--name", default=None, help="corpus name in the report")
    parser.add_argument("--context", type=int, default=128)
    parser.add_argument(
        "--block-steps",
        type=int,
        default=1000,
        help="optimizer steps per block; A, B and C get as many steps",
    )
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--eval-windows", type=int, default=128)
    parser.add_argument("--sigma-min", type=float, default=None)
    parser.add_argument("--sigma-max", type=float, default=None)
    parser.add_argument("--layers-per-block", type=int, default=None)
    parser.add_argument("--d-model", type=int, default=None)
    parser.add_argument(
        "--gate-offset",
        type=float,
        default=None,
        help="residual gate start (0: AdaLN-Zero, 1: plain pre-LN)",
    )
    parser.add_argument("--no-loss-weighting", action="store_true")
    parser.add_argument(
        "--z-lr-scale",
        type=float,
        default=TrainConfig.z_lr_scale,
        help="lr multiplier of W_in (reads the noisy code)",
    )
    parser.add_argument("--baselines", default="A,C", help="subset of A,B,C")
    parser.add_argument("--skip-blocktrain", action="store_true")
    parser.add_argument("--spans", default="", help="train span-K models, e.g. 1,8,32,128")
    parser.add_argument(
        "--euler-steps",
        default="1,2,4",
        help="Euler steps per block to evaluate the trained model with",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "bench-out" / "quality")
    parser.add_argument("--memory-probe", choices=["block", "A"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.memory_probe:
        print(json.dumps(memory_probe(args.memory_probe, args.context, args.batch)))
        return 0

    corpus = load_corpus(args.corpus)
    name = args.name or corpus.name
    overrides: dict[str, Any] = {"context": args.context}
    for key in ("sigma_min", "sigma_max", "layers_per_block", "d_model", "gate_offset"):
        if getattr(args, key) is not None:
            overrides[key] = getattr(args, key)
    if args.no_loss_weighting:
        overrides["loss_weighting"] = False
    cfg = ModelConfig(**overrides)
    tcfg = TrainConfig(
        batch_size=args.batch,
        steps=args.block_steps,
        warmup_steps=min(100, args.block_steps // 10),
        z_lr_scale=args.z_lr_scale,
    )
    windows = corpus.eval_windows(cfg.context, args.eval_windows)
    probe = windows[: min(32, len(windows))]
    args.out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {
        "benchmark": "bench_quality",
        "git_commit": git_commit(),
        "corpus": name,
        "train_bytes": corpus.train.numel(),
        "eval_bytes": corpus.eval.numel(),
        "eval_windows": int(windows.shape[0]),
        "config": json.loads(cfg.to_json()),
        "train": {
            "batch": tcfg.batch_size,
            "block_steps": args.block_steps,
            "lr": tcfg.lr,
            "z_lr_scale": tcfg.z_lr_scale,
        },
        "threads": args.threads,
        "results": {},
    }
    curves: list[Curve] = []
    results = report["results"]
    _log(f"corpus {name}: {corpus.train.numel()} train bytes, {windows.shape[0]} eval windows")

    if not args.skip_blocktrain:
        start = time.perf_counter()
        trainers, curve = train_blocktrain_curve(
            cfg, tcfg, corpus, args.block_steps, probe, args.seed, "BlockTrain (4 blocks)"
        )
        curves.append(curve)
        blocks = [t.block for t in trainers]
        main_eval = evaluate_sampler(blocks, windows)
        by_steps = {}
        for m in (int(v) for v in args.euler_steps.split(",") if v):
            by_steps[m] = evaluate_sampler(blocks, windows, steps_per_block=m).ce_sampler
        results["blocktrain"] = {
            **nats_report(main_eval.ce_sampler),
            "ce_sampler_per_seed": main_eval.ce_per_seed,
            # ce_sampler is the weighted rule's (protocol r14); the last block's alone:
            "ce_last_block": main_eval.ce_last,
            "ce_by_block": main_eval.ce_by_block,
            "ce_mix3": main_eval.ce_mix,
            "ce_first": main_eval.ce_first,
            "ce_teacher_forced_per_block": ce_teacher_forced(blocks, windows),
            "ce_sampler_by_euler_steps_per_block": by_steps,
            "train_seconds": curve.train_seconds,
            "wall_seconds": time.perf_counter() - start,
            "block_steps": [t.step_count for t in trainers],
            "curve": curve.points,
            "params_per_block": sum(p.numel() for p in blocks[0].parameters()),
        }
    for label in (b.strip() for b in args.baselines.split(",") if b.strip()):
        start = time.perf_counter()
        if label in ("A", "C"):
            layers = cfg.n_blocks * cfg.layers_per_block if label == "A" else cfg.layers_per_block
            trainer, curve = train_ar(
                cfg,
                tcfg,
                corpus,
                args.block_steps,
                layers,
                probe,
                args.seed,
                f"{label} (AR, {layers} layers)",
            )
            ce = ce_autoregressive(trainer.model, windows)
            params = sum(p.numel() for p in trainer.model.parameters())
            results[label] = {**nats_report(ce), "layers": layers, "params": params}
        elif label == "B":
            e2e, curve = train_e2e(cfg, tcfg, corpus, args.block_steps, probe, args.seed)
            ev = evaluate_sampler(list(e2e.blocks), windows)  # type: ignore[arg-type]
            results["B"] = {**nats_report(ev.ce_sampler), "ce_first": ev.ce_first}
        else:
            parser.error(f"unknown baseline {label}")
        results[label].update(
            train_seconds=curve.train_seconds,
            curve=curve.points,
            wall_seconds=time.perf_counter() - start,
        )
        curves.append(curve)
    spans = [int(v) for v in args.spans.split(",") if v]
    if spans:
        table = {}
        for k in spans:
            span_cfg = cfg.replace(layout="P", span=k)
            trainers, curve = train_blocktrain_curve(
                span_cfg, tcfg, corpus, args.block_steps, probe, args.seed, f"span K={k} (layout P)"
            )
            curves.append(curve)
            ev = evaluate_sampler([t.block for t in trainers], windows)
            table[k] = {
                "ce_span": ev.ce_sampler,
                "ce_first": ev.ce_first,
                "ce_first_slot": ev.ce_by_slot[0],
                "ce_last_slot": ev.ce_by_slot[-1],
                "traversals_per_window": -(-cfg.context // k),
                "train_seconds": curve.train_seconds,
            }
        results["span_table"] = table
    block_mem = _probe_subprocess("block", cfg.context, args.batch)
    a_mem = _probe_subprocess("A", cfg.context, args.batch)
    report["memory"] = {
        "block": block_mem,
        "A": a_mem,
        "peak_tensor_ratio_block_over_A": block_mem["peak_tensor_bytes"]["total"]
        / a_mem["peak_tensor_bytes"]["total"],
        "rss_ratio_block_over_A": block_mem["max_rss_bytes"] / a_mem["max_rss_bytes"],
        "rss_training_ratio_block_over_A": block_mem["rss_training_bytes"]
        / max(1, a_mem["rss_training_bytes"]),
    }
    gaps = {}
    if "blocktrain" in results:
        for label in ("A", "B", "C"):
            if label in results:
                gaps[f"blocktrain_minus_{label}"] = (
                    results["blocktrain"]["ce"] - results[label]["ce"]
                )
    report["gaps_nats"] = gaps
    stem = f"quality_{name}"
    (args.out / f"{stem}.json").write_text(json.dumps(report, indent=2) + "\n")
    plot(curves, args.out / f"{stem}.png", f"{name}: eval CE against training time")
    parts = [f"bench_quality {name}:"]
    for label in ("blocktrain", "A", "B", "C"):
        if label in results:
            parts.append(f"{label} {results[label]['ce']:.3f}")
    parts += [f"{k} {v:+.3f}" for k, v in gaps.items()]
    parts.append(f"mem block/A {report['memory']['peak_tensor_ratio_block_over_A']:.2f}")
    if spans:
        parts.append(
            "span " + " ".join(f"K{k}={v['ce_span']:.3f}" for k, v in results["span_table"].items())
        )
    parts.append(f"-> {args.out / stem}.json")
    print(" ".join(parts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
