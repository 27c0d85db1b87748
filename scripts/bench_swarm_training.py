"""Benchmark: decentralised BlockTrain training over a loopback swarm against the
single-process reference at equal total block-steps.

The swarm: one trainer process per block plus one extra replica on each block in
``--replicas`` (default 0,1: the two highest-noise blocks, six workers for four blocks). Each
trainer trains only its block and averages with its block's other replicas in deadline rounds
(bf16 deltas with error feedback). Total block-steps equal the reference's: a block with two
replicas gives each half the steps. An evaluator process scores the swarm's current model
every ``--eval-every`` seconds (CE_sampler against wall time and bytes fetched). Afterwards
the final swarm model and the reference (``train_blocktrain``, same config, same total
block-steps, in this process) are scored on the same evaluation windows with 3 noise seeds.

Bytes are split into deltas (replica -> shard aggregator) and updates (shard aggregator ->
every other replica), both from the round logs' shard entries, and compared with what moving
fp32 full block checkpoints both ways each round would cost.

Writes JSON (``--out``) and a PNG of CE against wall time and bytes, and prints one summary
line.

    python scripts/bench_swarm_training.py --corpus ../shared/data/tinyshakespeare.txt \\
        [--steps-per-block 500 --context 128 --batch 32 ...]
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import git_commit
from spheroid_p2p.ml.checkpoint import load_block
from spheroid_p2p.ml.config import ModelConfig, TrainConfig
from spheroid_p2p.ml.data import load_corpus
from spheroid_p2p.ml.evaluate import evaluate_sampler
from spheroid_p2p.ml.training import block_trainers, train_blocktrain
from spheroid_p2p.node.launcher import NodeProcess, evaluator_command, swarm_plan, wait_for


def _swarm(args: argparse.Namespace, tmp: Path, cfg: ModelConfig) -> dict:
    plan = swarm_plan(cfg.n_blocks, args.replicas)
    replicas = {b: sum(1 for x, _ in plan if x == b) for b in range(cfg.n_blocks)}
    model = [
        "--context",
        str(cfg.context),
        "--d-model",
        str(cfg.d_model),
        "--layers-per-block",
        str(cfg.layers_per_block),
        "--n-blocks",
        str(cfg.n_blocks),
    ]
    nodes: list[NodeProcess] = []
    evaluator = None
    eval_out = tmp / "eval.jsonl"
    start = time.monotonic()
    hosts = json.loads(args.hosts_json) if args.hosts_json else None
    try:
        for i, (b, r) in enumerate(plan):
            extra = ["--bootstrap", nodes[0].addr] if nodes else []
            placed = {}
            if hosts:  # scripts/wan: a block's replicas on alternate hosts of the first two
                host = hosts[(b + r) % 2]
                placed = {"listen": f"{host['addr']}:0", "prefix": tuple(host["prefix"])}
            nodes.append(
                NodeProcess(
                    tmp,
                    f"b{b}r{r}",
                    "--corpus",
                    args.corpus,
                    *model,
                    "--batch",
                    str(args.batch),
                    "--threads",
                    "1",
                    "--train-block",
                    str(b),
                    "--min-replicas",
                    str(replicas[b]),
                    "--train-steps",
                    str(args.steps_per_block // replicas[b]),
                    "--round-steps",
                    str(args.round_steps),
                    "--round-period",
                    str(args.round_period),
                    "--delta-encoding",
                    args.delta_encoding,
                    "--seed",
                    str(i),
                    "--chain-fraction",
                    str(args.chain_fraction),
                    *extra,
                    verbose=1,
                    **placed,  # type: ignore[arg-type]
                ).start(timeout_s=120)
            )
        evaluator = subprocess.Popen(
            evaluator_command(
                nodes[0].addr, ["--corpus", args.corpus, *model], args.eval_every, eval_out
            ),
            stdout=subprocess.DEVNULL,
            stderr=open(tmp / "eval.log", "w"),  # noqa: SIM115 - closed with the process
        )
        finished: set[str] = set()

        def all_serving() -> bool:  # readiness by status query
            for n in nodes:
                if n.name not in finished and (not n.alive() or n.serving_trained()):
                    finished.add(n.name)
            return len(finished) == len(nodes)

        wait_for(all_serving, timeout_s=args.timeout, interval_s=2.0)
        wall = time.monotonic() - start
    finally:
        if evaluator is not None:
            evaluator.terminate()
            evaluator.wait(20)
        for n in nodes:
            n.stop()
    dead = [n.name for n in nodes if not any((tmp / n.name).glob("block-?.safetensors"))]
    if dead:
        raise RuntimeError(f"trainers {dead} did not finish; see {tmp}")
    rounds = []
    for n in nodes:
        b = int(n.name[1 : n.name.index("r")])
        path = tmp / n.name / f"block-{b}.rounds.jsonl"
        if path.exists():
            rounds += [json.loads(x) for x in path.read_text().splitlines() if x]
    shards = [r for r in rounds if r.get("kind") == "shard"]
    versions = [r for r in rounds if r.get("kind") == "version"]
    delta_bytes = sum(r["bytes_in"] for r in shards)
    update_bytes = sum(r["update_bytes"] for r in shards)
    blocks = [load_block(tmp / f"b{b}r0" / f"block-{b}.safetensors") for b in range(cfg.n_blocks)]
    block_fp32 = sum(p.numel() * 4 for p in blocks[0].state_dict().values())
    multi = [r for r in versions if len(r["contributors"]) > 1]
    fp32_cost = sum(2 * len(r["contributors"]) * block_fp32 for r in multi)
    curve = [json.loads(x) for x in eval_out.read_text().splitlines()] if eval_out.exists() else []
    # trajectory-matched training: what each trainer fetched for its chain inputs (node.chain)
    chain_mb = {n.name: max(map(float, CHAIN_FETCHED.findall(n.log())), default=0.0) for n in nodes}
    return {
        "chain_fetched_mb": chain_mb,
        "chain_refreshes": {n.name: len(CHAIN_FETCHED.findall(n.log())) for n in nodes},
        "workers": [n.name for n in nodes],
        "wall_s": wall,
        "blocks": blocks,
        "rounds": len(versions),
        "round_reports": rounds,
        "averaged_rounds": len(multi),
        "delta_bytes": delta_bytes,
        "update_bytes": update_bytes,
        "fp32_full_checkpoint_bytes": fp32_cost,
        "bytes_ratio_vs_fp32": (delta_bytes + update_bytes) / fp32_cost if fp32_cost else None,
        "curve": curve,
    }


CHAIN_FETCHED = re.compile(r"chain inputs from versions .*\((\d+\.\d+) MB fetched")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--corpus", default="embedded")
    ap.add_argument("--name", help="corpus name in the report (default: the path's last part)")
    ap.add_argument("--steps-per-block", type=int, default=500, help="total steps per block")
    ap.add_argument("--replicas", default="0,1", help="blocks with one extra replica each")
    ap.add_argument("--context", type=int, default=128)
    ap.add_argument("--d-model", type=int, default=128)
    ap.add_argument("--layers-per-block", type=int, default=2)
    ap.add_argument("--blocks", type=int, default=4)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--round-steps", type=int, default=50)
    ap.add_argument(
        "--chain-fraction",
        type=float,
        default=0.0,
        help="trajectory-matched training of blocks > 0 (node run --chain-fraction)",
    )
    ap.add_argument("--round-period", type=float, default=60.0)
    ap.add_argument("--delta-encoding", default="bfloat16")
    ap.add_argument("--eval-every", type=float, default=30.0)
    ap.add_argument("--windows", type=int, default=128)
    ap.add_argument(
        "--reference-seeds", default="0,1", help="seeds of the single-process reference runs"
    )
    ap.add_argument("--timeout", type=float, default=7200.0)
    ap.add_argument("--out", type=Path, default=Path("bench_swarm_training.json"))
    ap.add_argument("--workdir", type=Path, help="keep the nodes' logs and data here")
    ap.add_argument(
        "--hosts-json",
        help="run the trainers on these hosts (scripts/wan/bench_wan_training.py passes them)",
    )
    args = ap.parse_args()
    args.replicas = [int(x) for x in args.replicas.split(",") if x.strip()]
    args.reference_seeds = [int(x) for x in args.reference_seeds.split(",") if x.strip()]
    torch.set_num_threads(1)
    cfg = ModelConfig(
        context=args.context,
        d_model=args.d_model,
        layers_per_block=args.layers_per_block,
        n_blocks=args.blocks,
    )
    corpus = load_corpus(args.corpus)
    windows = corpus.eval_windows(cfg.context, args.windows)
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
        swarm = _swarm(args, args.workdir, cfg)
    else:
        with tempfile.TemporaryDirectory(prefix="swarm-bench-") as d:
            swarm = _swarm(args, Path(d), cfg)
    torch.set_num_threads(2)  # the swarm is done: the reference gets both cores
    tcfg = TrainConfig(
        batch_size=args.batch,
        steps=args.steps_per_block,
        warmup_steps=min(100, args.steps_per_block // 10),
    )
    with torch.no_grad():
        swarm_eval = evaluate_sampler(swarm.pop("blocks"), windows)
    # ce_sampler is the weighted output rule's (protocol r14: each block weighed by its
    # trainer's quality, kept in the checkpoints); the swarm's model must keep its gain over
    # block 0 alone (ce_first) and over the last block alone (ce_last)
    ce_swarm = swarm_eval.ce_sampler
    # The reference with more than one seed: the spread says how much of a gap is seed noise.
    ce_refs, ref_walls, ref_evals = [], [], []
    for seed in args.reference_seeds:
        t0 = time.monotonic()
        # trained as the swarm's blocks are (W_in learns where the blocks train chained)
        trainers = block_trainers(cfg, tcfg, seed=seed, chain_fraction=args.chain_fraction)
        train_blocktrain(
            trainers,
            corpus,
            args.steps_per_block * cfg.n_blocks,
            seed=seed,
            chain_fraction=args.chain_fraction,  # trained as the swarm's blocks are
        )
        ref_walls.append(time.monotonic() - t0)
        with torch.no_grad():
            ref_evals.append(evaluate_sampler([t.block for t in trainers], windows))
        ce_refs.append(ref_evals[-1].ce_sampler)
    ce_ref = sum(ce_refs) / len(ce_refs) if ce_refs else float("nan")
    ref_wall = sum(ref_walls) / len(ref_walls) if ref_walls else 0.0
    result = {
        "commit": git_commit(),
        "corpus": args.corpus,
        "name": args.name or Path(args.corpus).name,
        "config": {**vars(args), "out": str(args.out), "workdir": str(args.workdir)},
        "model": json.loads(cfg.to_json()),
        "total_block_steps": args.steps_per_block * cfg.n_blocks,
        "ce_swarm": ce_swarm,
        "ce_swarm_first_block": swarm_eval.ce_first,
        "ce_swarm_last_block": swarm_eval.ce_last,
        "ce_swarm_by_block": swarm_eval.ce_by_block,
        "ce_swarm_mean_rule": swarm_eval.ce_combined,
        "swarm_qualities": swarm_eval.qualities,
        "ce_reference": ce_ref,
        "ce_reference_first_block": [r.ce_first for r in ref_evals],
        "ce_reference_last_block": [r.ce_last for r in ref_evals],
        "ce_reference_per_seed": dict(zip(map(str, args.reference_seeds), ce_refs, strict=True)),
        "gap": ce_swarm - ce_ref,
        "reference_wall_s": ref_wall,
        **swarm,
    }
    args.out.write_text(json.dumps(result, indent=2))
    png = args.out.with_suffix(".png")
    _plot(result, png)
    ratio = result["bytes_ratio_vs_fp32"]
    print(
        f"bench_swarm_training: {len(result['workers'])} workers, "
        f"{result['total_block_steps']} block-steps on {result['name']}: "
        f"swarm CE {ce_swarm:.3f} (block 0 alone {swarm_eval.ce_first:.3f}, last block alone "
        f"{swarm_eval.ce_last:.3f}) vs reference {ce_ref:.3f} "
        f"(seeds {', '.join(f'{c:.3f}' for c in ce_refs)}; gap {ce_swarm - ce_ref:+.3f}); "
        f"{result['averaged_rounds']} averaged rounds, deltas {result['delta_bytes'] / 1e6:.1f} MB "
        f"+ updates {result['update_bytes'] / 1e6:.1f} MB = "
        + (f"{ratio:.2f}x fp32 checkpoints" if ratio is not None else "n/a")
        + f"; swarm {result['wall_s']:.0f} s, reference {ref_wall:.0f} s -> {args.out}, {png}"
    )
    return 0


def _plot(result: dict, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curve = result["curve"]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    if curve:
        a.plot([p["elapsed_s"] for p in curve], [p["ce_sampler"] for p in curve], "o-")
        b.plot([p["fetched_bytes"] / 1e6 for p in curve], [p["ce_sampler"] for p in curve], "o-")
    for ax in (a, b):
        ax.axhline(
            result["ce_reference"], color="gray", ls="--", label="reference (final, seed mean)"
        )
        ax.set_ylabel("CE_sampler (nats/byte, 16 windows)")
        ax.legend()
    a.set_xlabel("wall time (s)")
    b.set_xlabel("MB fetched by the evaluator")
    fig.suptitle(f"swarm training on {result['name']}")
    fig.tight_layout()
    fig.savefig(png, dpi=100)


if __name__ == "__main__":
    raise SystemExit(main())
