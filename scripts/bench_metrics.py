"""What ``--http`` costs a node: Prometheus scrapes and the swarm page's JSON, at 1 per second.

A real swarm on 127.0.0.1 (the default model, two blocks, one torch thread per node): a
trainer of block 0 with a long budget and ``--http`` (A), and a trainer of block 1 with a short
budget and ``--http`` that then serves its block, a node at rest (B). CPU time is read from
``/proc/PID/stat`` (user + system, every thread), in the same run:

* **A, a training node**: CPU per wall second with nobody scraping and while a client asks
  ``/metrics`` and ``/api/v1/swarm`` once a second (as a Prometheus and an open page would),
  alternated twice; the ratio is the overhead, but training's own noise is of the same order;
* **B, the cost of one scrape**: on the node at rest, where a scrape's CPU stands out, the same
  two phases; (scraped - idle) CPU per second at 1 scrape/s is the CPU of one scrape (both
  documents, the JSON rebuilt each time: the page's cache lasts 0.5 s).

The goal (under 2 % of a node's CPU) is checked as one scrape's CPU per second over the
training node's CPU per second. Writes ``bench-out/bench_metrics.json``, prints one line.

    python scripts/bench_metrics.py [--window 30]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
from benchlib import git_commit  # noqa: E402

sys.path.insert(0, str(ROOT))
from tests.support.swarm import NodeProcess, free_port, wait_for  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process, all its threads (/proc/PID/stat fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def scrape(addr: str) -> int:
    size = 0
    for path in ("/metrics", "/api/v1/swarm"):
        with urllib.request.urlopen(f"http://{addr}{path}", timeout=10) as answer:
            size += len(answer.read())
    return size


def rate(pid: int, seconds: float, every_s: float | None, addr: str) -> tuple[float, int]:
    """The node's CPU seconds per wall second over ``seconds``; scraping every ``every_s``."""
    start_cpu, start = cpu_seconds(pid), time.monotonic()
    scrapes = 0
    while (now := time.monotonic()) - start < seconds:
        if every_s is None:
            time.sleep(min(1.0, seconds - (now - start)))
            continue
        scrape(addr)
        scrapes += 1
        time.sleep(max(0.0, start + scrapes * every_s - time.monotonic()))
    return (cpu_seconds(pid) - start_cpu) / (time.monotonic() - start), scrapes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--window", type=float, default=30.0, help="seconds per phase")
    parser.add_argument("--out", type=Path, default=ROOT / "bench-out" / "bench_metrics.json")
    args = parser.parse_args()
    http_a, http_b = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    common = ["--corpus", "embedded", "--n-blocks", "2", "--threads", "1", "--round-steps", "50"]
    with tempfile.TemporaryDirectory(prefix="bench-metrics-") as tmp:
        work = Path(tmp)
        a = NodeProcess(
            work, "a", *common, "--train-block", "0", "--train-steps", "100000",
            "--http", http_a, verbose=1,
        ).start()  # fmt: skip
        b = NodeProcess(
            work, "b", *common, "--train-block", "1", "--train-steps", "100",
            "--bootstrap", a.addr, "--http", http_b, verbose=1,
        ).start()  # fmt: skip
        try:
            wait_for(b.serving_trained, timeout_s=300)
            assert a.proc is not None and b.proc is not None
            sizes = (scrape(http_a), scrape(http_b))
            phases: dict[str, float] = {}
            for node, pid, http in (("A", a.proc.pid, http_a), ("B", b.proc.pid, http_b)):
                # alternate twice, so a drift in the machine's load shows
                for phase in ("idle", "scraped", "idle2", "scraped2"):
                    every = 1.0 if phase.startswith("scraped") else None
                    phases[f"{node} {phase}"] = rate(pid, args.window, every, http)[0]
        finally:
            b.stop()
            a.stop()

    def mean(node: str, phase: str) -> float:
        return (phases[f"{node} {phase}"] + phases[f"{node} {phase}2"]) / 2

    training, training_scraped = mean("A", "idle"), mean("A", "scraped")
    rest, rest_scraped = mean("B", "idle"), mean("B", "scraped")
    per_scrape = max(0.0, rest_scraped - rest)  # CPU-s per second at 1 scrape/s
    report = {
        "commit": git_commit(),
        "command": "python scripts/bench_metrics.py " + " ".join(sys.argv[1:]),
        "window_s": args.window,
        "phases_cpu_per_s": {k: round(v, 5) for k, v in phases.items()},
        "training_node_cpu_per_s": round(training, 4),
        "training_node_scraped_over_idle": round(training_scraped / training, 4),
        "resting_node_cpu_per_s": round(rest, 5),
        "resting_node_cpu_per_s_scraped": round(rest_scraped, 5),
        "cpu_per_scrape_ms": round(per_scrape * 1000, 3),
        "scrape_bytes": {"training_node": sizes[0], "resting_node": sizes[1]},
        "overhead_of_training_node_cpu": round(per_scrape / training, 5),
        "overhead_of_one_core": round(per_scrape, 5),
        "goal_under_2_percent": per_scrape / training < 0.02,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(
        f"--http at 1 scrape/s: {per_scrape * 1000:.2f} ms CPU per scrape (/metrics + "
        f"/api/v1/swarm) = {100 * per_scrape / training:.2f} % of a training node's CPU "
        f"({training:.2f} CPU-s/s), {100 * per_scrape:.2f} % of a core; training node "
        f"scraped/idle CPU {training_scraped / training:.3f} -> {args.out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
