"""Gossip benchmark: real node processes on 127.0.0.1, for several swarm sizes.

For each N (default 8, 16, 32) it starts N ``python -m spheroid_p2p.node run`` processes, each
bootstrapped to one random earlier node (they find the rest through gossip), waits until every
node holds all N records, then lets the swarm run at steady state. From the nodes' own logs it
measures:

* **propagation**: for every record an owner re-signed at steady state (the periodic refresh
  is a changed record), the time from its publication to its acceptance by the last node;
* **traffic**: frames and bytes sent per node per second at steady state.

Writes JSON and prints one summary line. The per-node byte rate is compared with log(N) and N
(from the smallest swarm) so its growth can be read directly.

Example::

    python scripts/bench_gossip.py --sizes 8,16,32 --steady 20
"""

from __future__ import annotations

import argparse
import json
import math
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.swarm import NodeProcess, live_view, wait_for  # noqa: E402

from spheroid_p2p.errors import TransportError  # noqa: E402

STAMP = r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) "
PUBLISHED = re.compile(STAMP + r".*published record owner=(\S+) block=(\d+) seq=(\d+)", re.M)
ACCEPTED = re.compile(
    STAMP + r".*\[(\S+)\] accepted record owner=(\S+) block=(\d+) seq=(\d+)", re.M
)
TRAFFIC = re.compile(STAMP + r".*traffic uptime=([\d.]+) frames_out=(\d+) bytes_out=(\d+)", re.M)


def _t(stamp: str) -> float:
    return datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()


def _git_commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _count(node: NodeProcess) -> int:
    """Live records a node holds (0 if it does not answer in time, e.g. still starting)."""
    try:
        return len(live_view(node.status()))
    except (TransportError, OSError):
        return 0


def run_size(n: int, ttl: float, steady_s: float, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    workdir = Path(tempfile.mkdtemp(prefix=f"bench-gossip-{n}-"))
    nodes: list[NodeProcess] = []
    common = ("--record-ttl", str(ttl), "--gossip-interval", "1.0")
    try:
        for i in range(n):
            extra = ("--bootstrap", rng.choice(nodes).addr) if nodes else ()
            nodes.append(
                NodeProcess(workdir, f"n{i}", *common, "--serve-block", str(i % 4), *extra).start()
            )
        start = time.monotonic()
        converge_s = wait_for(
            lambda: all(_count(x) == n for x in nodes), timeout_s=120, interval_s=0.5
        )
        steady_from = time.time()
        time.sleep(steady_s)
        steady_to = time.time()
    finally:
        for node in nodes:
            node.stop()
    logs = {node.name: node.log() for node in nodes}
    published: dict[tuple[str, int, int], float] = {}
    for text in logs.values():
        for stamp, owner, block, seq in PUBLISHED.findall(text):
            published[(owner, int(block), int(seq))] = _t(stamp)
    arrivals: dict[tuple[str, int, int], list[float]] = {}
    for text in logs.values():
        for stamp, _me, owner, block, seq in ACCEPTED.findall(text):
            arrivals.setdefault((owner, int(block), int(seq)), []).append(_t(stamp))
    latencies = []
    for key, t0 in published.items():
        if steady_from <= t0 <= steady_to - 3.0 and len(arrivals.get(key, [])) == n - 1:
            latencies.append(max(arrivals[key]) - t0)
    frames, byts = [], []
    for text in logs.values():
        points = [(_t(s), float(u), int(f), int(b)) for s, u, f, b in TRAFFIC.findall(text)]
        window = [p for p in points if steady_from <= p[0] <= steady_to]
        if len(window) >= 2:
            (_t1, u1, f1, b1), (_t2, u2, f2, b2) = window[0], window[-1]
            frames.append((f2 - f1) / (u2 - u1))
            byts.append((b2 - b1) / (u2 - u1))
    return {
        "n": n,
        "converge_after_start_s": converge_s,
        "startup_s": time.monotonic() - start - steady_s - converge_s,
        "propagation_samples": len(latencies),
        "propagation_median_s": statistics.median(latencies) if latencies else None,
        "propagation_p90_s": statistics.quantiles(latencies, n=10)[-1]
        if len(latencies) > 9
        else (max(latencies) if latencies else None),
        "propagation_max_s": max(latencies) if latencies else None,
        "frames_per_node_s": statistics.mean(frames) if frames else None,
        "bytes_per_node_s": statistics.mean(byts) if byts else None,
        "record_ttl_s": ttl,
        "steady_s": steady_s,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="8,16,32")
    parser.add_argument("--ttl", type=float, default=6.0, help="record ttl (refresh every ttl/3)")
    parser.add_argument("--steady", type=float, default=20.0, help="seconds at steady state")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "bench-out" / "bench_gossip.json")
    args = parser.parse_args(argv)
    results = []
    for n in (int(v) for v in args.sizes.split(",")):
        result = run_size(n, args.ttl, args.steady, args.seed)
        results.append(result)
        print(f"  N={n}: {json.dumps(result)}", file=sys.stderr, flush=True)
    base = results[0]
    for r in results:
        if base["bytes_per_node_s"] and r["bytes_per_node_s"]:
            r["bytes_ratio_vs_smallest"] = r["bytes_per_node_s"] / base["bytes_per_node_s"]
            r["log_n_ratio"] = math.log(r["n"]) / math.log(base["n"])
            r["n_ratio"] = r["n"] / base["n"]
    report = {
        "benchmark": "bench_gossip",
        "git_commit": _git_commit(),
        "params": vars(args) | {"out": str(args.out)},
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    last = results[-1]
    parts = [
        f"bench_gossip: N={last['n']} propagation median "
        f"{(last['propagation_median_s'] or 0) * 1000:.0f} ms, max "
        f"{(last['propagation_max_s'] or 0) * 1000:.0f} ms (goal < 2000 ms);"
    ]
    parts += [
        f"N={r['n']} {r['bytes_per_node_s'] or 0:.0f} B/s/node "
        f"{r['frames_per_node_s'] or 0:.1f} msg/s/node"
        for r in results
    ]
    if "bytes_ratio_vs_smallest" in last:
        parts.append(
            f"bytes x{last['bytes_ratio_vs_smallest']:.2f} vs logN x"
            f"{last['log_n_ratio']:.2f}, N x{last['n_ratio']:.1f}"
        )
    parts.append(f"-> {args.out}")
    print(" ".join(parts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
