"""WAN training: the swarm of ``bench_swarm_training.py`` spread over three hosts, against the
same swarm on loopback at equal block-steps, in one run.

Six trainers (four blocks, an extra replica on blocks 0 and 1), each block's replicas on
different hosts (hosts 1 and 2), so every averaging round moves its deltas and its update across
the emulated links; the evaluator runs on host 3 and fetches the swarm's current versions over
the WAN too. Real checkpoints, deltas and versions cross the links; the router counts every
byte between hosts. Reports CE at start and end against time and gigabytes moved, per round
who contributed, the bytes, and how long each delta took against its link's floor (timed from
its header's arrival: the bytes at the link's rate), and the WAN bytes against moving fp32
checkpoints.

    python3 scripts/wan/bench_wan_training.py [--profile default] [--steps-per-block 500]

Writes JSON and a PNG under ``bench-out/`` and prints one summary line. Needs root.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT / "scripts"))

from topology import Topology, profile_named, signals_end_cleanly, unavailable  # noqa: E402

from benchlib import git_commit  # noqa: E402

#: Wire bytes per payload byte on the link (TCP/IP headers on 1448-byte segments).
WIRE_OVERHEAD = 1514 / 1448


def _swarm_args(args: argparse.Namespace, out: Path) -> list[str]:
    return [
        sys.executable,
        str(ROOT / "scripts" / "bench_swarm_training.py"),
        "--corpus",
        args.corpus,
        "--steps-per-block",
        str(args.steps_per_block),
        "--round-steps",
        str(args.round_steps),
        "--round-period",
        str(args.round_period),
        "--eval-every",
        str(args.eval_every),
        "--reference-seeds",
        "",
        "--out",
        str(out),
    ]


def _delta_rows(part: dict[str, Any], mbit: float) -> list[dict[str, Any]]:
    rows = []
    for rep in part.get("round_reports", []):
        for d in rep.get("deltas", []):
            # timed from the header's arrival, so the floor is the bytes at the link's rate
            floor = d["bytes"] * WIRE_OVERHEAD * 8 / (mbit * 1e6)
            rows.append(
                {
                    "block": rep["block"],
                    "round": rep["round"],
                    "contributors": [c["peer"] for c in rep["contributors"]],
                    "from": d["peer"],
                    "bytes": d["bytes"],
                    "seconds": d["seconds"],
                    "floor_s": floor,
                    "vs_floor": d["seconds"] / floor if floor else None,
                }
            )
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="default")
    ap.add_argument("--corpus", default="embedded")
    ap.add_argument("--steps-per-block", type=int, default=500)
    ap.add_argument("--round-steps", type=int, default=50)
    ap.add_argument("--round-period", type=float, default=60.0)
    ap.add_argument("--eval-every", type=float, default=30.0)
    ap.add_argument("--max-seconds", type=float, default=3600.0)
    ap.add_argument("--skip-loopback", action="store_true")
    ap.add_argument("--out", type=Path, default=ROOT / "bench-out" / "bench_wan_training.json")
    args = ap.parse_args(argv)
    reason = unavailable()
    if reason:
        print(f"error: the emulated hosts {reason}", file=sys.stderr)
        return 2
    args.out.parent.mkdir(parents=True, exist_ok=True)
    profile = profile_named(args.profile)
    wan_out = args.out.with_suffix(".wan.json")
    with signals_end_cleanly():
        with Topology(profile) as topo:
            hosts = [
                {"name": f"h{i + 1}", "addr": topo.addr(i), "prefix": topo.exec_prefix(i)}
                for i in range(3)
            ]
            cmd = [
                *topo.exec_prefix(2),
                *_swarm_args(args, wan_out),
                "--hosts-json",
                json.dumps(hosts),
            ]
            subprocess.run(cmd, check=True, timeout=args.max_seconds)
        router = topo.router_stats()
        loop: dict[str, Any] | None = None
        if not args.skip_loopback:
            lo_out = args.out.with_suffix(".loopback.json")
            subprocess.run(_swarm_args(args, lo_out), check=True, timeout=args.max_seconds)
            loop = json.loads(lo_out.read_text())
    wan = json.loads(wan_out.read_text())
    wan_bytes = sum(v["bytes"] for v in router.values())
    between_trainers = sum(router.get(k, {}).get("bytes", 0) for k in ("1->2", "2->1"))
    link = profile.links[0]
    rows = _delta_rows(wan, min(link.up_mbit, link.down_mbit))
    fp32 = wan["fp32_full_checkpoint_bytes"]
    report = {
        "benchmark": "bench_wan_training",
        "git_commit": git_commit(),
        "profile": profile.describe(),
        "params": {k: str(v) for k, v in vars(args).items()},
        "wan": {
            "ce_final": wan["ce_swarm"],
            "curve": wan["curve"],
            "wall_s": wan["wall_s"],
            "averaged_rounds": wan["averaged_rounds"],
            "wan_bytes": wan_bytes,
            "wan_bytes_between_trainers": between_trainers,
            "router": router,
            "fp32_checkpoint_bytes": fp32,
            "trainer_wan_bytes_vs_fp32": between_trainers / fp32 if fp32 else None,
            "deltas": rows,
            "delta_vs_floor_median": statistics.median(r["vs_floor"] for r in rows)
            if rows
            else None,
        },
        "loopback": None
        if loop is None
        else {
            "ce_final": loop["ce_swarm"],
            "curve": loop["curve"],
            "wall_s": loop["wall_s"],
            "averaged_rounds": loop["averaged_rounds"],
            "bytes": loop["delta_bytes"] + loop["update_bytes"],
        },
    }
    if loop is not None:
        report["ce_gap_wan_minus_loopback"] = wan["ce_swarm"] - loop["ce_swarm"]
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    _plot(report, args.out.with_suffix(".png"))
    w = report["wan"]
    start = w["curve"][0]["ce_sampler"] if w["curve"] else float("nan")
    gap = report.get("ce_gap_wan_minus_loopback")
    print(
        f"bench_wan_training ({profile.name}): CE {start:.3f} -> {w['ce_final']:.3f} in "
        f"{w['wall_s']:.0f} s, {wan_bytes / 1e9:.3f} GB across the WAN "
        f"({between_trainers / 1e9:.3f} GB between trainers = "
        f"{w['trainer_wan_bytes_vs_fp32'] or 0:.2f}x fp32 checkpoints); "
        + (f"loopback CE {loop['ce_swarm']:.3f} (gap {gap:+.3f}); " if loop else "")
        + f"deltas at x{w['delta_vs_floor_median'] or 0:.2f} their floor (median) -> {args.out}"
    )
    return 0


def _plot(report: dict[str, Any], png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    for name in ("wan", "loopback"):
        part = report.get(name)
        if not part or not part["curve"]:
            continue
        curve = part["curve"]
        a.plot([p["elapsed_s"] for p in curve], [p["ce_sampler"] for p in curve], "o-", label=name)
        b.plot(
            [p["fetched_bytes"] / 1e9 for p in curve],
            [p["ce_sampler"] for p in curve],
            "o-",
            label=name,
        )
    a.set_xlabel("wall time (s)")
    b.set_xlabel("GB fetched by the evaluator")
    for ax in (a, b):
        ax.set_ylabel("CE_sampler (nats/byte)")
        ax.legend()
    fig.suptitle(f"swarm training across 3 hosts ({report['profile']['name']}) and on loopback")
    fig.tight_layout()
    fig.savefig(png, dpi=100)


if __name__ == "__main__":
    sys.exit(main())
