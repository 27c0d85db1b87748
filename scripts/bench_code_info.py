"""The information budget through the code (issue 19, part 3).

For each corpus: how much a noisy true code can tell about the byte at each sigma (any
model: ``ml.codeinfo.code_capacity``), and for every trained model kept under
``bench-out/models`` (``<corpus>``, ``<corpus>-traj1``, ``<corpus>-smin0.5``, ... as
scripts/bench_combine.py leaves them) what each block makes of its code at its entry sigma:
teacher-forced CE with the noisy true code, with an unrelated byte's code (its context-only
prediction) and with the code the chain hands it from noise. The leak (true against blind)
and what flows between blocks (chain against blind) are reported apart.

Writes ``bench-out/bench_code_info.json`` and prints one summary line per model.

    python scripts/bench_code_info.py --corpus ../shared/data/tinyshakespeare/input.txt \\
        --corpus ../shared/data/wikitext-2-raw --corpus bench-out/corpora/pystdlib.txt
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch

from spheroid_p2p.ml.checkpoint import load_block
from spheroid_p2p.ml.codeinfo import capacity_curve, code_use, entropy
from spheroid_p2p.ml.config import ModelConfig
from spheroid_p2p.ml.data import load_corpus

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
from benchlib import git_commit  # noqa: E402

SIGMAS = (0.1, 0.2, 0.3, 0.5, 0.7, 1.0, 1.5, 2.0, 3.0, 5.0, 8.0, 80.0)


def model_folders(models: Path, name: str) -> list[Path]:
    """``<name>`` and its variants (``<name>-...``) that hold a whole model."""
    found = [
        p
        for p in sorted(models.glob(f"{name}*"))
        if (p.name == name or p.name.startswith(f"{name}-"))
        and (p / "block-0.safetensors").exists()
    ]
    return [p for p in found if "span" not in p.name]  # per-byte (layout S) models only


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", action="append", required=True)
    parser.add_argument("--eval-windows", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--models", type=Path, default=ROOT / "bench-out" / "models")
    parser.add_argument("--out", type=Path, default=ROOT / "bench-out" / "bench_code_info.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    results: dict[str, Any] = {"commit": git_commit(), "corpora": {}}
    for path in args.corpus:
        corpus = load_corpus(path)
        cfg = ModelConfig()
        windows = corpus.eval_windows(cfg.context, args.eval_windows)
        targets = windows[:, 1:].reshape(-1)
        row: dict[str, Any] = {
            "corpus": path,
            "byte_entropy": round(entropy(torch.bincount(targets, minlength=cfg.vocab)), 4),
            "capacity_by_sigma": {
                f"{s:g}": round(v, 4) for s, v in capacity_curve(cfg, targets, SIGMAS).items()
            },
            "models": {},
        }
        for folder in model_folders(args.models, corpus.name):
            blocks = []
            for b in range(cfg.n_blocks):
                blocks.append(load_block(folder / f"block-{b}.safetensors"))
            mcfg = blocks[0].cfg
            if mcfg.context != cfg.context or mcfg.layout != "S":
                continue
            uses = code_use(blocks, windows)
            row["models"][folder.name] = {
                "sigma_min": mcfg.sigma_min,
                "blocks": [
                    {
                        "block": u.block,
                        "sigma": round(u.sigma, 3),
                        "capacity": round(u.capacity, 4),
                        "ce_true": round(u.ce_true, 4),
                        "ce_blind": round(u.ce_blind, 4),
                        "ce_chain": round(u.ce_chain, 4),
                        "leak": round(u.leak, 4),
                        "flows": round(u.flows, 4),
                    }
                    for u in uses
                ],
            }
            print(
                f"{folder.name}: "
                + "; ".join(
                    f"block {u.block} sigma {u.sigma:.2f} capacity {u.capacity:.3f} "
                    f"leak {u.leak:+.3f} flows {u.flows:+.3f}"
                    for u in uses
                ),
                flush=True,
            )
        results["corpora"][corpus.name] = row
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
