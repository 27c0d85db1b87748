"""WAN rounds: sharded averaging rounds of R replicas, one per emulated host, against the link
floor, and the single-aggregator round at the same R in the same run.

Each replica is ``scripts/roundlab.py`` (a real node and the real round: sharded exchange,
judging, averaging, building, publishing, installing; only the training is synthetic) in its
own host namespace of ``topology.py`` (every host's link shaped to the profile's rate, with
the profile's delay through the router). For R = 2, 3, 4, 6 (``--replicas``) the swarm runs
``--rounds`` rounds with one shard per replica, and for ``--single`` (R = 3 by default) again
with one shard (``--round-shards 1``: one aggregator takes every delta and sends every update,
the round of protocol r9). A round is timed from the first replica's delta to the last
replica's install (``roundlab.round_times``), from round 3 on (the first rounds have no plan
and warm the buffers); the figure is the median.

The floor of a sharded round is the link floor ``2 (R − 1) / R × size / rate``: each replica
uploads the (R − 1)/R of its delta that others aggregate, then downloads the (R − 1)/R of the
update it does not aggregate, where ``size`` is a delta's payload bytes and ``rate`` a host
link's (upload = download). The single aggregator's link carries ``(R − 1) × size`` each way.
What the emulation itself allows is measured on the same hosts just before each swarm: the
same traffic as plain bytes over plain TCP (``rawexchange.py``: no node code at all); on a
2-core machine, R hosts' traffic through the user-space delay router can be slower than the
links, and the round is also reported against that.

    python3 scripts/wan/bench_wan_rounds.py [--profile default] [--replicas 2,3,4,6]
        [--size-mb 50] [--rounds 6] [--single 3]

Writes JSON and a PNG under ``bench-out/`` and prints one summary line. Needs root.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT / "scripts"))

from topology import Profile, Topology, profile_named, signals_end_cleanly, unavailable  # noqa: E402

from benchlib import git_commit  # noqa: E402
from roundlab import round_times  # noqa: E402

#: Wire bytes per payload byte on the link (TCP/IP headers on 1448-byte segments).
WIRE_OVERHEAD = 1514 / 1448
#: Bytes per element of a delta on the wire, by encoding.
ELEM_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "int8": 1}
#: Rounds before this one are not timed (no plan yet, buffers warming).
FIRST_TIMED_ROUND = 3
PORT = 7300
#: Rounds of the raw exchange (the emulation's ceiling) per replica count.
RAW_ROUNDS = 3
#: Seconds a host's replica may take to answer its first status query.
READY_S = 60.0


def payload_bytes(size_mb: float, encoding: str) -> int:
    """A delta's payload: ``roundlab.SyntheticBlock``'s elements in ``encoding``."""
    n = int(size_mb * 1e6 / 4 / 8) * 8
    return n * ELEM_BYTES[encoding]


def link_floor_s(replicas: int, size: int, profile: Profile) -> float:
    rate = min(min(lk.up_mbit, lk.down_mbit) for lk in profile.links) * 1e6 / 8
    return 2 * (replicas - 1) / replicas * size / rate


def _wait_ready(topo: Topology, host: int, addr: str) -> None:
    """Until the node at ``addr`` answers a status query from ``host`` (bounded)."""
    probe = [*topo.exec_prefix(host), sys.executable, "-m", "spheroid_p2p.node.launcher", addr]
    deadline = time.monotonic() + READY_S
    while time.monotonic() < deadline:
        if subprocess.run(probe, capture_output=True, timeout=30).returncode == 0:
            return
        time.sleep(0.2)
    raise RuntimeError(f"the replica at {addr} did not answer within {READY_S:.0f} s")


def raw_exchange(topo: Topology, replicas: int, size: int, work: Path) -> list[float]:
    """The emulation's ceiling for this round's traffic (``rawexchange.py`` on every host):
    each round's time from the first host's start to the last host's end."""
    hosts = ",".join(topo.addr(i) for i in range(replicas))
    procs = []
    for i in range(replicas):
        out = work / f"raw-h{i + 1}.json"
        cmd = [
            *topo.exec_prefix(i), sys.executable, str(HERE / "rawexchange.py"),
            "--me", str(i), "--hosts", hosts, "--port", str(PORT + 100), "--bytes", str(size),
            "--rounds", str(RAW_ROUNDS), "--out", str(out),
        ]  # fmt: skip
        procs.append((subprocess.Popen(cmd), out))
    for proc, _ in procs:
        if proc.wait(timeout=600) != 0:
            raise RuntimeError("the raw exchange failed")
    runs = [json.loads(out.read_text()) for _, out in procs]
    return [
        max(r[k]["end"] for r in runs) - min(r[k]["start"] for r in runs) for k in range(RAW_ROUNDS)
    ]


def run_swarm(
    profile: Profile, replicas: int, shards: int, args: argparse.Namespace, tmp: Path
) -> dict[str, Any]:
    """``replicas`` roundlab replicas, one per host, for ``args.rounds`` rounds; with the raw
    exchange of the same traffic on the same hosts first."""
    work = tmp / f"r{replicas}-s{shards}"
    work.mkdir(parents=True)
    size = payload_bytes(args.size_mb, args.encoding)
    with Topology(profile.with_hosts(replicas), workdir=tmp) as topo:
        raw = raw_exchange(topo, replicas, size, work) if shards > 1 else []
        first = f"{topo.addr(0)}:{PORT}"
        procs = []
        for i in range(replicas):
            wd = work / f"h{i + 1}"
            wd.mkdir()
            cmd = [
                *topo.exec_prefix(i), sys.executable, str(ROOT / "scripts" / "roundlab.py"),
                "--size-mb", str(args.size_mb), "--rounds", str(args.rounds),
                "--replicas", str(replicas), "--round-shards", str(shards),
                "--encoding", args.encoding, "--seed", str(i + 1),
                "--period", str(args.period), "--grace", str(args.grace),
                "--workdir", str(wd), "--out", str(wd / "log.json"),
                "--listen", f"{topo.addr(i)}:{PORT}",
                *(["--bootstrap", first] if i else []),
            ]  # fmt: skip
            log = open(wd / "stderr.log", "w")  # noqa: SIM115 (closed with the process)
            procs.append((subprocess.Popen(cmd, stderr=log, stdout=log), wd, log))
            if i == 0:  # the others bootstrap from it
                _wait_ready(topo, 0, first)
        try:
            limit = time.monotonic() + args.timeout
            for proc, wd, _ in procs:
                if proc.wait(timeout=max(1.0, limit - time.monotonic())) != 0:
                    raise RuntimeError(f"a replica failed: see {wd / 'stderr.log'}")
        finally:
            for proc, _, log in procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait(10)
                log.close()
    stats = topo.router_stats()
    logs = [json.loads((wd / "log.json").read_text()) for _, wd, _ in procs]
    times = [r for r in round_times(logs) if r["round"] >= FIRST_TIMED_ROUND]
    if not times:
        raise RuntimeError(f"no round of R={replicas} completed everywhere: see {work}")
    seconds = [r["seconds"] for r in times]
    return {
        "replicas": replicas,
        "shards": shards,
        "round_s": statistics.median(seconds),
        "round_s_all": [round(s, 3) for s in seconds],
        "rounds_measured": len(times),
        "replica_bytes_out_per_round": statistics.median(r["bytes_out"] for r in times) / replicas,
        "wan_bytes": sum(int(v.get("bytes", 0)) for v in stats.values()),
        "raw_exchange_s_all": [round(t, 3) for t in raw],
        "raw_exchange_s": statistics.median(raw) if raw else None,
    }


def _plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["sharded"]
    fig, ax = plt.subplots(figsize=(6, 4))
    rs = [r["replicas"] for r in rows]
    ax.plot(rs, [r["round_s"] for r in rows], "o-", label="sharded round (median)")
    ax.plot(rs, [r["floor_s"] for r in rows], "k--", label="link floor 2(R-1)/R x size/rate")
    ax.plot(rs, [1.3 * r["floor_s"] for r in rows], ":", color="gray", label="1.3 x floor")
    ax.plot(rs, [r["raw_exchange_s"] for r in rows], "^-", color="green", label="raw TCP exchange")
    for single in report["single_aggregator"]:
        ax.plot([single["replicas"]], [single["round_s"]], "rs", label="single aggregator")
    ax.set_xlabel("replicas (one per host)")
    ax.set_ylabel("round time (s)")
    ax.set_title(f"{report['profile']['name']}: {report['payload_mb']:.0f} MB deltas")
    ax.set_ylim(bottom=0)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="default", help="a topology.py profile")
    ap.add_argument("--replicas", default="2,3,4,6", help="replica counts, one host each")
    ap.add_argument("--single", default="3", help="replica counts also run with one shard")
    ap.add_argument(
        "--one-shard-each",
        default="",
        help="replica counts also run with one shard per replica (--round-shards R: no "
        "pipelining of an aggregator's shards), for comparison",
    )
    ap.add_argument("--size-mb", type=float, default=50.0, help="float32 MB of the block")
    ap.add_argument("--encoding", default="bfloat16", choices=sorted(ELEM_BYTES))
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--period", type=float, default=120.0, help="round period (deadline)")
    ap.add_argument("--grace", type=float, default=60.0, help="round grace")
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds per swarm")
    ap.add_argument("--keep", type=Path, help="keep the replicas' logs in this new directory")
    ap.add_argument("--out", type=Path, default=ROOT / "bench-out" / "bench_wan_rounds.json")
    args = ap.parse_args()
    reason = unavailable()
    if reason:
        print(f"bench_wan_rounds: cannot run here: {reason}", file=sys.stderr)
        return 2
    try:
        profile = profile_named(args.profile)
        counts = [int(x) for x in args.replicas.split(",") if x]
        singles = [int(x) for x in args.single.split(",") if x]
        for n in counts + singles:
            profile.with_hosts(n)
    except ValueError as exc:
        print(f"bench_wan_rounds: {exc}", file=sys.stderr)
        return 2
    size = payload_bytes(args.size_mb, args.encoding)
    sharded, single = [], []
    with signals_end_cleanly(), tempfile.TemporaryDirectory(prefix="wanrounds") as d:
        tmp = args.keep or Path(d)
        tmp.mkdir(parents=True, exist_ok=True)
        for n in counts:
            row = run_swarm(profile, n, 64, args, tmp)
            row["floor_s"] = link_floor_s(n, size, profile.with_hosts(n))
            row["ratio_to_floor"] = row["round_s"] / row["floor_s"]
            row["raw_ratio_to_floor"] = row["raw_exchange_s"] / row["floor_s"]
            row["ratio_to_raw"] = row["round_s"] / row["raw_exchange_s"]
            sharded.append(row)
            print(
                f"  R={n}: {row['round_s']:.2f} s = {row['ratio_to_floor']:.2f}x floor "
                f"(raw exchange {row['raw_exchange_s']:.2f} s)",
                file=sys.stderr,
            )
        unpiped = []
        for n in [int(x) for x in args.one_shard_each.split(",") if x]:
            row = run_swarm(profile, n, n, args, tmp)
            row["floor_s"] = link_floor_s(n, size, profile.with_hosts(n))
            row["ratio_to_floor"] = row["round_s"] / row["floor_s"]
            unpiped.append(row)
            print(f"  R={n} one shard each: {row['round_s']:.2f} s", file=sys.stderr)
        for n in singles:
            row = run_swarm(profile, n, 1, args, tmp)
            match = next((r for r in sharded if r["replicas"] == n), None)
            row["sharded_speedup"] = row["round_s"] / match["round_s"] if match else None
            single.append(row)
            print(f"  R={n} single aggregator: {row['round_s']:.2f} s", file=sys.stderr)
    report = {
        "commit": git_commit(),
        "profile": profile.describe(),
        "encoding": args.encoding,
        "payload_mb": size / 1e6,
        "wire_overhead": WIRE_OVERHEAD,
        "first_timed_round": FIRST_TIMED_ROUND,
        "sharded": sharded,
        "single_aggregator": single,
        "one_shard_per_replica": unpiped,
        "command": " ".join(sys.argv),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    png = args.out.with_suffix(".png")
    _plot(report, png)
    parts = [
        f"R={r['replicas']} {r['round_s']:.1f} s = {r['ratio_to_floor']:.2f}x "
        f"(raw TCP {r['raw_ratio_to_floor']:.2f}x)"
        for r in sharded
    ]
    singles_txt = [
        f"single aggregator at R={r['replicas']} {r['round_s']:.1f} s"
        + (f" ({r['sharded_speedup']:.2f}x the sharded round)" if r["sharded_speedup"] else "")
        for r in single
    ]
    print(
        f"bench_wan_rounds: {profile.name}, {size / 1e6:.0f} MB {args.encoding} deltas, round "
        f"(and the same traffic as raw TCP) against the link floor: {', '.join(parts)}; "
        f"{'; '.join(singles_txt)} -> {args.out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
