"""Does the chain beat its first block? Trajectory-matched training and combined predictions.

For each corpus (issue 19), on the same held-out windows and noise seeds, in one run:

* the default model trained block-locally (``--block-steps`` per block; kept in
  ``bench-out/models/<corpus>``, reused when there);
* for each ``--fractions`` value f: blocks 1..N-1 retrained from scratch, in order, with a
  fraction f of their batches taken from the chain (``ml.trajectory.ChainInputs``: the code
  the earlier, already trained blocks hand them from noise) instead of noisy true codes;
  block 0 is kept (it reads pure noise either way). Kept in ``<corpus>-traj<f>``; f = 0 is
  the control (the same retraining, other seeds, noisy true codes). ``--w-in-lr-scale``
  sets W_in's rate in the retrained blocks (by default 0 for f = 0, the default since
  issue 19: the blocks never read the code; 0.1 for f > 0), ``--sigma-min`` /
  ``--sigma-data`` the code's scale against the noise,
  ``--first-block-from`` a block 0 from another model (it is only called at sigma_max);
* (A), the autoregressive Transformer of the same depth, ``--block-steps`` steps (the
  reference of scripts/bench_quality.py).

For each model: CE_first (block 0's first call), CE_sampler (the last block's prediction),
CE_combined (the mean of every block's log-probabilities, renormalised: a product of experts
that a traversal can carry forward; r13), CE_weighted (the same weighted by each block's
quality, the default since r14; checkpoints saved before blocks carried a quality get it
measured on training batches, ``ml.training.measure_quality``) and each block's own CE along
the sampler's trajectory.
Writes ``bench-out/bench_combine.json`` and prints one summary line per corpus.

    python scripts/bench_combine.py --corpus ../shared/data/tinyshakespeare/input.txt \\
        --corpus ../shared/data/wikitext-2-raw --corpus bench-out/corpora/pystdlib.txt
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
from spheroid_p2p.ml.evaluate import ce_autoregressive, evaluate_sampler
from spheroid_p2p.ml.training import ARTrainer, BlockTrainer, measure_quality
from spheroid_p2p.ml.trajectory import TRAJECTORY_Z_LR_SCALE, ChainInputs

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
from bench_prefix import trained_blocks  # noqa: E402  (the same base model, kept once)
from benchlib import git_commit  # noqa: E402


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def trajectory_model(
    corpus: ByteCorpus,
    base: list[BlockDenoiser],
    steps: int,
    fraction: float,
    folder: Path,
    seed: int,
    z_lr_scale: float = TrainConfig.z_lr_scale,
) -> tuple[list[BlockDenoiser], float]:
    """Block 0 kept; blocks 1.. retrained in order on a ``fraction`` of chain inputs (0: on
    noisy true codes, with other seeds than the base model's: the control), W_in learning at
    ``z_lr_scale`` times the rate (0: frozen at zero, the blocks never read the code)."""
    cfg = base[0].cfg
    paths = [folder / f"block-{b}.safetensors" for b in range(cfg.n_blocks)]
    if all(p.exists() for p in paths):
        return [load_block(p) for p in paths], 0.0
    tcfg = TrainConfig(steps=steps, warmup_steps=min(100, steps // 10), z_lr_scale=z_lr_scale)
    blocks = [base[0]]
    start = time.perf_counter()
    for b in range(1, cfg.n_blocks):
        trainer = BlockTrainer(cfg, tcfg, b, seed=seed * 1009 + b)
        chain = ChainInputs(cfg, blocks)
        trainer.trajectory, trainer.trajectory_sigma = chain, chain.sigma
        trainer.trajectory_fraction = fraction
        data = torch.Generator().manual_seed(seed * 7919 + b)
        for i in range(steps):
            log = trainer.step(corpus.batch(tcfg.batch_size, cfg.context, data))
            if i % 100 == 0:
                _log(f"{corpus.name} traj{fraction:g} block {b} step {i} loss {log.loss:.3f}")
        blocks.append(trainer.block)
    folder.mkdir(parents=True, exist_ok=True)
    for path, block in zip(paths, blocks, strict=True):
        save_block(path, block)
    return blocks, time.perf_counter() - start


def with_qualities(blocks: list[BlockDenoiser], corpus: ByteCorpus, seed: int) -> str:
    """Blocks saved before checkpoints carried their trainer's quality get it measured the
    way a trainer measures it (``ml.training.measure_quality``); says which it was."""
    missing = [b for b in blocks if b.quality is None]
    for block in missing:
        measure_quality(block, corpus, seed=seed)
    return "measured" if missing else "trainer"


def scores(blocks: list[BlockDenoiser], windows: torch.Tensor) -> dict[str, Any]:
    report = evaluate_sampler(blocks, windows)
    return {
        "ce_first": round(report.ce_first, 4),
        "ce_sampler": round(report.ce_last, 4),  # the last block's prediction (rule until r12)
        "ce_combined": round(report.ce_combined, 4),  # the plain mean (r13)
        "ce_weighted": round(report.ce_weighted, 4),  # the quality-weighted mean (r14)
        "ce_by_block": [round(v, 4) for v in report.ce_by_block],
        "qualities": [round(v, 4) for v in report.qualities],
        "sampler_minus_first": round(report.ce_last - report.ce_first, 4),
        "combined_minus_first": round(report.ce_combined - report.ce_first, 4),
        "weighted_minus_first": round(report.ce_weighted - report.ce_first, 4),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", action="append", required=True)
    parser.add_argument("--context", type=int, default=128)
    parser.add_argument("--block-steps", type=int, default=500)
    parser.add_argument("--fractions", default="0.5", help="chain-input fractions, e.g. 0.5,1")
    parser.add_argument("--eval-windows", type=int, default=128)
    parser.add_argument("--no-reference", action="store_true", help="skip training (A)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--sigma-min",
        type=float,
        default=ModelConfig.sigma_min,
        help="the lowest noise level (the code's scale against the noise: scripts/"
        "bench_code_info.py); models of another value are kept in <corpus>-smin<value>",
    )
    parser.add_argument(
        "--sigma-data",
        type=float,
        default=ModelConfig.sigma_data,
        help="EDM's data scale (a code coordinate's std is 1/sqrt(d_z)); kept in -sd<value>",
    )
    parser.add_argument(
        "--first-block-from",
        type=Path,
        help="for the trajectory-matched models, block 0 of the model in this folder (block 0 "
        "is only ever called at sigma_max, so it serves any sigma_min); kept in -b0<folder>",
    )
    parser.add_argument(
        "--w-in-lr-scale",
        type=float,
        help="W_in's learning-rate multiplier in the retrained blocks (default: the "
        "default TrainConfig.z_lr_scale, 0, for f = 0; 0.1 for trajectory-matched f > 0); "
        "kept in -frozen (0) or -win<value> (other than 0.1)",
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--models", type=Path, default=ROOT / "bench-out" / "models")
    parser.add_argument("--out", type=Path, default=ROOT / "bench-out" / "bench_combine.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = ModelConfig(context=args.context, sigma_min=args.sigma_min, sigma_data=args.sigma_data)
    suffix = "" if args.sigma_min == ModelConfig.sigma_min else f"-smin{args.sigma_min:g}"
    suffix += "" if args.sigma_data == ModelConfig.sigma_data else f"-sd{args.sigma_data:g}"
    results: dict[str, Any] = json.loads(args.out.read_text()) if args.out.exists() else {}
    results["commit"] = git_commit()
    for path in args.corpus:
        corpus = load_corpus(path)
        windows = corpus.eval_windows(cfg.context, args.eval_windows)
        row: dict[str, Any] = {"corpus": path, "block_steps": args.block_steps}
        base, _ = trained_blocks(
            corpus, cfg, args.block_steps, args.models / f"{corpus.name}{suffix}", args.seed
        )
        source = with_qualities(base, corpus, args.seed)
        row["default"] = {**scores(base, windows), "qualities_from": source}
        _log(f"{corpus.name} default: {row['default']}")
        traj_suffix = suffix
        if args.first_block_from is not None:
            first = load_block(args.first_block_from / "block-0.safetensors")
            base = [BlockDenoiser(cfg, 0), *base[1:]]
            base[0].load_state_dict(first.state_dict())
            traj_suffix += f"-b0{args.first_block_from.name}"
        for f in (float(v) for v in args.fractions.split(",") if v.strip()):
            scale = args.w_in_lr_scale
            if scale is None:  # trajectory-matched blocks learn to read the chain's code
                scale = TRAJECTORY_Z_LR_SCALE if f > 0 else TrainConfig.z_lr_scale
            variant = traj_suffix + (
                "-frozen" if scale == 0 else "" if scale == 0.1 else f"-win{scale:g}"
            )
            folder = args.models / f"{corpus.name}{variant}-traj{f:g}"
            blocks, seconds = trajectory_model(
                corpus, base, args.block_steps, f, folder, args.seed, z_lr_scale=scale
            )
            key = f"traj{f:g}{variant}"
            source = with_qualities(blocks, corpus, args.seed)
            row[key] = {**scores(blocks, windows), "train_s": round(seconds, 1)}
            row[key]["qualities_from"] = source
            _log(f"{corpus.name} {key}: {row[key]}")
        if not args.no_reference:
            tcfg = TrainConfig(
                steps=args.block_steps, warmup_steps=min(100, args.block_steps // 10)
            )
            ar = ARTrainer(cfg, tcfg, cfg.n_blocks * cfg.layers_per_block, seed=args.seed)
            data = torch.Generator().manual_seed(args.seed)
            for _ in range(args.block_steps):
                ar.step(corpus.batch(tcfg.batch_size, cfg.context, data))
            row["A"] = round(ce_autoregressive(ar.model, windows), 4)
        results[f"{corpus.name}{suffix}"] = row
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")
        variants = {k: v for k, v in row.items() if isinstance(v, dict)}
        best = min(variants, key=lambda k: variants[k]["ce_weighted"])
        print(
            f"{corpus.name}: "
            + "; ".join(
                f"{k} first {v['ce_first']:.4f} sampler {v['ce_sampler']:.4f} "
                f"combined {v['ce_combined']:.4f} weighted {v['ce_weighted']:.4f}"
                for k, v in variants.items()
            )
            + (f"; (A) {row['A']:.4f}" if "A" in row else "")
            + f"; best {best}",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
