"""Gossip benchmark: real node processes on 127.0.0.1, for several swarm sizes.

For each N (default 8, 16, 32) it starts N ``python -m spheroid_p2p.node run`` processes, each
bootstrapped to one random earlier node (they find the rest through gossip), waits until every
node holds all N records, then lets the swarm run at steady state. From the nodes' own logs it
measures:

* **propagation**: a new peer joins through one random peer and announces its record (a
  changed record): the time from its publication to its acceptance by the last node;
* **traffic**: frames and bytes sent per node per second at steady state.

Writes JSON and prints one summary line. The per-node byte rate is compared with log(N) and N
(from the smallest swarm) so its growth can be read directly.

Example::

    python scripts/bench_gossip.py --sizes 8,16,32 --steady 20 --joins 3
"""

from __future__ import annotations

import argparse
import json
import math
import random
import re
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
from benchlib import git_commit  # noqa: E402

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


def _count(node: NodeProcess) -> int:
    """Live records a node holds (0 if it does not answer in time, e.g. still starting)."""
    try:
        return len(live_view(node.status()))
    except (TransportError, OSError):
        return 0


def _accepted_by_all(logs: dict[str, str], owner: str, n_others: int) -> list[float]:
    times: dict[str, float] = {}
    for name, text in logs.items():
        for stamp, _me, who, _block, _seq in ACCEPTED.findall(text):
            if who == owner and name not in times:
                times[name] = _t(stamp)
    return list(times.values()) if len(times) >= n_others else []


def run_size(n: int, steady_s: float, joins: int, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    workdir = Path(tempfile.mkdtemp(prefix=f"bench-gossip-{n}-"))
    nodes: list[NodeProcess] = []
    common = ("--gossip-interval", "1.0", "--announce-only")
    latencies: list[float] = []
    try:
        for i in range(n):
            extra = ("--bootstrap", rng.choice(nodes).addr) if nodes else ()
            nodes.append(
                NodeProcess(workdir, f"n{i}", *common, "--serve-block", str(i % 4), *extra).start()
            )
        converge_s = wait_for(
            lambda: all(_count(x) == n for x in nodes), timeout_s=120, interval_s=0.5
        )
        time.sleep(2.0)  # let the joins' own dials and syncs settle
        steady_from = time.time()
        time.sleep(steady_s)
        steady_to = time.time()
        # A changed record: a new peer joins (through one random peer) and announces itself.
        for j in range(joins):
            joiner = NodeProcess(
                workdir,
                f"join{j}",
                *common,
                "--serve-block",
                "0",
                "--bootstrap",
                rng.choice(nodes).addr,
            ).start()
            nodes.append(joiner)
            short = joiner.peer_id[:12]
            others = [x for x in nodes if x is not joiner]
            wait_for(
                lambda o=others, s=short: (
                    len(_accepted_by_all({x.name: x.log() for x in o}, s, len(o))) == len(o)
                ),
                timeout_s=30,
            )
            published = [
                _t(stamp) for stamp, owner, *_ in PUBLISHED.findall(joiner.log()) if owner == short
            ]
            arrivals = _accepted_by_all({x.name: x.log() for x in others}, short, len(others))
            latencies.append(max(arrivals) - min(published))
            time.sleep(1.0)
    finally:
        for node in nodes:
            node.stop()
    frames, byts = [], []
    for node in nodes[:n]:
        points = [(_t(s), float(u), int(f), int(b)) for s, u, f, b in TRAFFIC.findall(node.log())]
        window = [p for p in points if steady_from <= p[0] <= steady_to]
        if len(window) >= 2:
            (_t1, u1, f1, b1), (_t2, u2, f2, b2) = window[0], window[-1]
            frames.append((f2 - f1) / (u2 - u1))
            byts.append((b2 - b1) / (u2 - u1))
    return {
        "n": n,
        "converge_after_start_s": converge_s,
        "propagation_samples": len(latencies),
        "propagation_median_s": statistics.median(latencies) if latencies else None,
        "propagation_max_s": max(latencies) if latencies else None,
        "propagation_all_s": latencies,
        "frames_per_node_s": statistics.mean(frames) if frames else None,
        "bytes_per_node_s": statistics.mean(byts) if byts else None,
        "steady_s": steady_s,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="8,16,32")
    parser.add_argument("--steady", type=float, default=20.0, help="seconds at steady state")
    parser.add_argument("--joins", type=int, default=3, help="joins timed per swarm size")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "bench-out" / "bench_gossip.json")
    args = parser.parse_args(argv)
    results = []
    for n in (int(v) for v in args.sizes.split(",")):
        result = run_size(n, args.steady, args.joins, args.seed)
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
        "git_commit": git_commit(),
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
