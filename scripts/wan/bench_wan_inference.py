"""WAN inference: traversals (span K = the context, 32, 1) against the autoregressive pipeline,
across three hosts, each traversal's time split against its floor.

Block servers alternate between hosts 1 and 2 (blocks 0 and 2 on host 1, 1 and 3 on host 2),
so every hop crosses hosts; the client is on host 3. A traversal crosses five one-way paths
(client -> 1 -> 2 -> 1 -> 2 -> client). Its **floor** is what the links and the servers cannot
avoid: the five one-way delays, each message's bytes at the path's rate (serialisation), and
the hops' compute as they report it (10 §10.3.1). The measured time is split into compute,
queueing at the servers, encoding, propagation, serialisation, and the rest ("network excess":
TCP's window and pacing, decoding, the event loops). The first traversal of each generation is
reported apart, with the time the client spent connecting to its first and last hop.

Per-byte setups (each at per-byte quality): ``K1`` recomputes the window in every block (the
rule of 10 §10.4), ``K1c`` keeps each server's session cache (the known-prefix rule, 10 §10.8),
and ``K1s`` adds speculative traversals: the trained checkpoints of ``--draft-corpus`` (from
``--models``, written by ``bench_prefix.py``), a held-out prompt of that corpus and the
``--drafter`` built from its training text; each reports bytes per traversal.

Variants (each its own swarm, same hosts, same run): the hosts' default congestion control
(BBR), the nodes setting cubic or reno on their sockets (``--tcp-congestion``), and, for K = the
context, servers that neither keep next-hop connections warm nor keep them hot (the behaviour
before this benchmark). Weights are random (timing does not depend on them).

    python3 scripts/wan/bench_wan_inference.py [--profiles default,harsh,asymmetric]
    python3 scripts/wan/bench_wan_inference.py --hosts hosts.txt   # three real machines

Writes JSON and a PNG under ``bench-out/`` and prints one summary line. Needs root for the
emulated hosts (``scripts/wan/topology.py``).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT / "src"))

from hosts import Host, from_file, start_node  # noqa: E402
from topology import Profile, Topology, profile_named, signals_end_cleanly, unavailable  # noqa: E402

from benchlib import git_commit  # noqa: E402

PROMPT = b"Day 12. Weather: rain from the west.\n"
#: Bytes a TCP/IP packet carries per byte on the link (1448 of 1514 with timestamps).
WIRE_OVERHEAD = 1514 / 1448
#: Envelope, frame and AEAD bytes around a message's payload (03, 06 §6.7), about.
FRAME_BYTES = 260


def links_from_profile(profile: Profile) -> dict[str, Any]:
    """One-way delay (ms) and rate (Mbit/s) of each ordered host pair, from the profile."""
    return {
        f"{a}->{b}": {"one_way_ms": profile.one_way_ms(a, b), "mbit": profile.path_mbit(a, b)}
        for a in range(3)
        for b in range(3)
        if a != b
    }


def traversal_floor(
    links: dict[str, Any], sizes: list[int], compute_ms: float, path: list[int]
) -> dict[str, float]:
    """The floor of one traversal along ``path`` (host indices, client first and last) whose
    messages carry ``sizes`` bytes of payload: propagation, serialisation and compute."""
    prop = ser = 0.0
    for (a, b), size in zip(itertools.pairwise(path), sizes, strict=True):
        link = links[f"{a}->{b}"]
        prop += link["one_way_ms"]
        ser += (size + FRAME_BYTES) * WIRE_OVERHEAD * 8 / (link["mbit"] * 1e3)
    return {
        "propagation_ms": prop,
        "serialisation_ms": ser,
        "compute_ms": compute_ms,
        "floor_ms": prop + ser + compute_ms,
    }


# -- what runs on the client's host ---------------------------------------------------------
def _shape(args: argparse.Namespace) -> dict[str, int]:
    """The model shape flags (width, depth per block), for ModelConfig."""
    return {"d_model": args.d_model, "layers_per_block": args.layers_per_block}


def _checkpoints(workdir: Path, span: int, context: int, shape: dict[str, int]) -> list[Path]:
    import torch

    from spheroid_p2p.ml.block import BlockDenoiser
    from spheroid_p2p.ml.checkpoint import save_block
    from spheroid_p2p.ml.config import ModelConfig

    torch.manual_seed(0)
    cfg = ModelConfig(context=context, layout="S" if span == 1 else "P", span=span, **shape)
    paths = []
    for b in range(cfg.n_blocks):
        path = workdir / f"k{span}-block{b}.safetensors"
        save_block(path, BlockDenoiser(cfg, b))
        paths.append(path)
    return paths


def _ar_checkpoint(workdir: Path, context: int, shape: dict[str, int]) -> Path:
    import torch

    from spheroid_p2p.ml.baselines import ARTransformer
    from spheroid_p2p.ml.checkpoint import save_ar
    from spheroid_p2p.ml.config import ModelConfig

    torch.manual_seed(0)
    cfg = ModelConfig(context=context, **shape)
    path = workdir / "ar.safetensors"
    save_ar(path, ARTransformer(cfg, cfg.n_blocks * cfg.layers_per_block))
    return path


def _serving(node: Any, count: int) -> bool:
    try:
        return sum(1 for r in node.status().records if r.role == "serve") >= count
    except Exception:
        return False


def _generate(
    addr: str,
    n: int,
    ar: bool,
    congestion: str | None,
    timeout_s: float,
    rule: str = "known",
    drafter: Any = None,
    prompt: bytes = PROMPT,
) -> dict[str, Any]:
    from spheroid_p2p.client.traversal import TraversalClient

    async def run() -> Any:
        client = TraversalClient(timeout_s=timeout_s, tcp_congestion=congestion)
        await client.start(toward=addr)
        try:
            if ar:
                return await client.generate_ar(addr, prompt, n)
            return await client.generate(addr, prompt, n, rule=rule, drafter=drafter)
        finally:
            await client.close()

    report = asyncio.run(run())
    return {
        "bytes": n,
        "bytes_per_traversal": report.bytes_per_traversal,
        "drafted": report.drafted,
        "seconds": report.seconds,
        "traversals": report.traversals,
        "traversal_ms": report.traversal_ms,
        "connect_ms": report.connect_ms,
        "hop_timings": report.hop_timings,
        "retries": report.retries,
    }


def _split(run: dict[str, Any], links: dict[str, Any], sizes: list[int]) -> dict[str, Any]:
    """Each traversal against its floor; steady state = every traversal but the first."""
    path = [2, 0, 1, 0, 1, 2]
    rows = []
    for i, ms in enumerate(run["traversal_ms"]):
        hops = run["hop_timings"][i] if i < len(run["hop_timings"]) else []
        compute = sum(h["compute_ms"] for h in hops)
        floor = traversal_floor(links, sizes, compute, path)
        queued = sum(h["queued_ms"] for h in hops)
        encode = sum(h["encode_ms"] for h in hops)
        rows.append(
            {
                "ms": ms,
                **floor,
                "queued_ms": queued,
                "encode_ms": encode,
                "excess_ms": ms - floor["floor_ms"] - queued - encode,
                "vs_floor": ms / floor["floor_ms"],
            }
        )
    steady = rows[1:] or rows
    keys = ("ms", "floor_ms", "compute_ms", "propagation_ms", "serialisation_ms", "queued_ms")
    return {
        "first": rows[0] if rows else {},
        "first_connect_ms": run["connect_ms"][0] if run["connect_ms"] else 0.0,
        "steady_median": {
            k: statistics.median(r[k] for r in steady)
            for k in (*keys, "encode_ms", "excess_ms", "vs_floor")
        },
    }


def _pipeline_sizes(setup: str, context: int, d_model: int) -> list[int]:
    """Payload bytes of the five messages of one traversal (client -> ... -> client)."""
    if setup == "ar":
        hidden = d_model * 4  # one new byte's hidden state, fp32
        return [len(PROMPT) + 400, hidden, hidden, hidden, 64]
    if setup in ("K1c", "K1s"):  # the known-prefix rule: the trajectory rows only
        z = (8 if setup == "K1s" else 1) * d_model * 4
        return [context + 400, z, z, z, 64]
    span = context if setup == "Kfull" else int(setup[1:])
    rows = context if span == 1 else span  # layout S carries every position, P the span
    z = rows * d_model * 4
    return [context + 400, z, z, z, 64]


def _trained(args: argparse.Namespace) -> tuple[list[Path], Any, bytes]:
    """K1s: the draft corpus's trained checkpoints, its drafter and a held-out prompt."""
    from spheroid_p2p.client.drafts import drafter_by_name
    from spheroid_p2p.ml.data import load_corpus

    corpus = load_corpus(args.draft_corpus)
    paths = [Path(args.models) / corpus.name / f"block-{b}.safetensors" for b in range(4)]
    held = bytes(corpus.eval.tolist())
    prompt = held[len(held) // 3 : len(held) // 3 + 96]
    return paths, drafter_by_name(args.drafter, bytes(corpus.train[:1_000_000].tolist())), prompt


def inside(args: argparse.Namespace) -> int:
    """The part that runs on the client's host: start each swarm, generate, split."""
    hosts = [Host(**h) for h in json.loads(args.hosts_json)]
    links = json.loads(args.links_json)
    workdir = Path(tempfile.mkdtemp(prefix="wan-inference-"))
    results: dict[str, Any] = {}
    plan: list[str] = []
    drafter: Any = None
    prompt = PROMPT
    for variant in (args.force_variants or "bbr").split(","):
        congestion = None if variant in ("bbr", "cold") else variant
        setups = args.setups.split(",") if variant == "bbr" else ["Kfull", "K32"]
        if variant == "cold":
            setups = ["Kfull"]
        for setup in setups:
            extra: tuple[str, ...] = ("--threads", "1")
            if congestion:
                extra += ("--tcp-congestion", congestion)
            if variant == "cold":
                extra += ("--warm-next-hops", "0", "--keep-hot", "0")
            if setup == "ar":
                ar = _ar_checkpoint(workdir, args.context, _shape(args))
                per_node = [["--ar-checkpoint", str(ar), "--ar-stage", f"{s}/4"] for s in range(4)]
            elif setup == "K1s":
                trained, drafter, prompt = _trained(args)
                per_node = [["--checkpoint", str(p)] for p in trained]
            else:
                span = 1 if setup == "K1c" else args.context if setup == "Kfull" else int(setup[1:])
                paths = _checkpoints(workdir, span, args.context, _shape(args))
                per_node = [["--checkpoint", str(p)] for p in paths]
            nodes: list[Any] = []
            try:
                for i, node_args in enumerate(per_node):
                    boot = nodes[0].addr if nodes else None
                    name = f"{variant}-{setup}-{i}"
                    nodes.append(
                        start_node(
                            hosts[i % 2],
                            workdir,
                            name,
                            *node_args,
                            bootstrap=boot,
                            extra=extra,
                            plan=plan,
                        )
                    )
                from spheroid_p2p.node.launcher import wait_for

                def ready(swarm: list[Any] = nodes) -> bool:
                    # every server sees the others (and so opens its next-hop connection)
                    return all(_serving(n, 4) for n in swarm)

                wait_for(ready, timeout_s=120, interval_s=0.5)
                key = f"{variant}/{setup}"
                results[key] = {}
                sizes = [int(s) for s in args.sizes.split(",")]
                if setup in ("ar", "K1", "K1c", "K1s") and args.per_byte_sizes:
                    sizes = [int(s) for s in args.per_byte_sizes.split(",")]
                if variant != "bbr":
                    sizes = sizes[-1:]
                for n in sizes:
                    run = _generate(
                        nodes[0].addr,
                        n,
                        setup == "ar",
                        congestion,
                        args.timeout,
                        rule="noisy" if setup == "K1" else "known",
                        drafter=drafter if setup == "K1s" else None,
                        prompt=prompt if setup == "K1s" else PROMPT,
                    )
                    run["split"] = _split(
                        run, links, _pipeline_sizes(setup, args.context, args.d_model)
                    )
                    results[key][str(n)] = run
                    s = run["split"]
                    print(
                        f"  {args.profile} {key} {n} B: {run['seconds']:.2f} s, "
                        f"{run['traversals']} traversals, steady x"
                        f"{s['steady_median']['vs_floor']:.2f} floor, first x"
                        f"{s['first'].get('vs_floor', 0):.2f} (+{s['first_connect_ms']:.0f} ms "
                        "connect)",
                        file=sys.stderr,
                        flush=True,
                    )
            finally:
                for node in nodes:
                    node.stop()
    Path(args.out).write_text(
        json.dumps({"results": results, "plan": plan, "links": links}, indent=1) + "\n"
    )
    for weights in workdir.glob("*.safetensors"):  # random weights, up to GBs: the logs stay
        weights.unlink()
    return 0


# -- the driver ------------------------------------------------------------------------------
def _inner_args(args: argparse.Namespace, hosts: list[Host], links: dict, out: Path) -> list[str]:
    return [
        sys.executable,
        str(Path(__file__).resolve()),
        "--inside",
        "--profile",
        args.profile_name,
        "--hosts-json",
        json.dumps([{"name": h.name, "addr": h.addr, "prefix": list(h.prefix)} for h in hosts]),
        "--links-json",
        json.dumps(links),
        "--out",
        str(out),
        "--variants",
        args.variants,
        "--setups",
        args.setups,
        "--sizes",
        args.sizes,
        "--per-byte-sizes",
        args.per_byte_sizes,
        "--context",
        str(args.context),
        "--timeout",
        str(args.timeout),
        "--d-model",
        str(args.d_model),
        "--layers-per-block",
        str(args.layers_per_block),
        "--models",
        str(args.models),
        "--draft-corpus",
        str(args.draft_corpus),
        "--drafter",
        args.drafter,
    ]


#: What each profile runs: variants (bbr = the hosts' default congestion control), and whether
#: the per-byte setups (K = 1, the pipeline) generate the larger size too (slow on long paths).
PLAN: dict[str, tuple[str, bool]] = {
    "default": ("bbr,reno,cold", True),
    "harsh": ("bbr,reno", False),
    "asymmetric": ("bbr,reno", False),
    "default+iw64": ("bbr,reno", False),
}


def run_profile(args: argparse.Namespace, profile: Profile, out: Path) -> dict[str, Any]:
    links = links_from_profile(profile)
    with Topology(profile) as topo:
        hosts = [Host(f"h{i + 1}", topo.addr(i), tuple(topo.exec_prefix(i))) for i in range(3)]
        inner = [*topo.exec_prefix(2), *_inner_args(args, hosts, links, out)]
        done = subprocess.run(inner, timeout=args.max_seconds, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"the run on host 3 failed ({done.returncode})")
    part: dict[str, Any] = json.loads(out.read_text())
    part["router"] = topo.router_stats()
    part["profile"] = profile.describe()
    return part


def summarise(report: dict[str, Any]) -> str:
    """One line: per profile, the best traversal setup's speed-up over the pipeline at the
    largest size (the pipeline's time projected from its per-byte rate where that size was
    not run), and the steady traversals' worst and best median against their floor."""
    cells = []
    for name, part in report["profiles"].items():
        res = part["results"]
        ar = res.get("bbr/ar", {})
        per_byte = {int(n): run["seconds"] / int(n) for n, run in ar.items()}
        best: tuple[float, str] | None = None
        for key, runs in res.items():
            if not key.endswith("/Kfull") or not per_byte:
                continue
            for n, run in runs.items():
                rate = per_byte.get(int(n), next(iter(per_byte.values())))
                ratio = rate * int(n) / run["seconds"]
                if int(n) == 512 and (best is None or ratio > best[0]):
                    best = (ratio, key.split("/")[0])
        steady = [
            run["split"]["steady_median"]["vs_floor"]
            for runs in res.values()
            for run in runs.values()
            if run["traversals"] > 1 and "/ar" not in str(run.get("key", ""))
        ]
        cell = f"{name}:"
        for setup in ("K1", "K1c", "K1s"):
            runs = res.get(f"bbr/{setup}", {})
            for n, run in runs.items():
                if int(n) in per_byte:
                    ratio = per_byte[int(n)] * int(n) / run["seconds"]
                    bpt = run.get("bytes_per_traversal", 1.0)
                    cell += f" {setup} {n} B x{ratio:.2f} the pipeline ({bpt:.2f} B/trav);"
        if best:
            cell += f" 512 B x{best[0]:.0f} the pipeline ({best[1]})"
        if steady:
            cell += f" steady x{min(steady):.2f}-x{max(steady):.2f} floor"
        cells.append(cell)
    return "bench_wan_inference: " + "; ".join(cells)


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(report["profiles"])
    fig, axes = plt.subplots(1, len(names), figsize=(5 * len(names), 4), squeeze=False)
    parts = ("compute_ms", "queued_ms", "encode_ms", "propagation_ms", "serialisation_ms")
    for ax, name in zip(axes[0], names, strict=True):
        res = report["profiles"][name]["results"]
        labels, bottoms = [], None
        rows = []
        for key, runs in res.items():
            n = max(runs, key=int)  # the most traversals: a steady median
            med = runs[n]["split"]["steady_median"]
            labels.append(key)
            rows.append([med[p] for p in parts] + [max(0.0, med["excess_ms"])])
        for j, part in enumerate([*parts, "excess_ms"]):
            values = [r[j] for r in rows]
            ax.bar(labels, values, bottom=bottoms, label=part.removesuffix("_ms"))
            bottoms = (
                values if bottoms is None else [a + b for a, b in zip(bottoms, values, strict=True)]
            )
        ax.set_title(f"{name}: median steady traversal")
        ax.set_ylabel("ms")
        ax.tick_params(axis="x", rotation=60)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profiles", default=",".join(PLAN))
    parser.add_argument("--hosts", type=Path, help="three real machines (see hosts.py)")
    parser.add_argument(
        "--variants", dest="force_variants", default="", help="override PLAN's variants"
    )
    parser.add_argument("--setups", default="Kfull,K32,K1,ar")
    parser.add_argument("--sizes", default="128,512")
    parser.add_argument(
        "--per-byte-sizes", default="", help="sizes for K=1 and the pipeline (default --sizes)"
    )
    parser.add_argument("--context", type=int, default=128)
    parser.add_argument("--d-model", type=int, default=128)
    parser.add_argument("--layers-per-block", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=60.0)
    parser.add_argument("--models", type=Path, default=ROOT / "bench-out" / "models")
    parser.add_argument("--draft-corpus", default="", help="K1s: its trained model and drafter")
    parser.add_argument("--drafter", default="lookup+ngram")
    parser.add_argument("--max-seconds", type=float, default=3000, help="per profile")
    parser.add_argument("--out", type=Path, default=ROOT / "bench-out" / "bench_wan_inference.json")
    parser.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--profile", help=argparse.SUPPRESS)
    parser.add_argument("--hosts-json", help=argparse.SUPPRESS)
    parser.add_argument("--links-json", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.inside:
        return inside(args)
    if "K1s" in args.setups.split(","):
        if not args.draft_corpus:
            parser.error("the K1s setup needs --draft-corpus PATH (its trained model and drafter)")
        from spheroid_p2p.ml.data import load_corpus

        name = load_corpus(args.draft_corpus).name
        if not (args.models / name / "block-0.safetensors").exists():
            parser.error(f"no trained checkpoints in {args.models / name}: run bench_prefix.py")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"benchmark": "bench_wan_inference", "git_commit": git_commit()}
    report["profiles"] = {}
    with signals_end_cleanly():
        if args.hosts is not None:
            hosts = from_file(args.hosts)
            from probe import measured_links

            links = measured_links(hosts)
            args.profile_name = "real"
            args.variants = args.force_variants or "bbr,reno,cold"
            args.per_byte_sizes = args.sizes
            out = args.out.with_suffix(".real.json")
            subprocess.run(_inner_args(args, hosts, links, out), check=True)
            report["profiles"]["real"] = json.loads(out.read_text())
        else:
            reason = unavailable()
            if reason:
                print(f"error: the emulated hosts {reason}", file=sys.stderr)
                return 2
            for name in args.profiles.split(","):
                args.profile_name = name
                variants, long_per_byte = PLAN.get(name, ("bbr,reno", False))
                args.variants = args.force_variants or variants
                sizes = args.sizes.split(",")
                args.per_byte_sizes = args.sizes if long_per_byte else sizes[0]
                part_path = args.out.with_suffix(f".{name}.json")
                report["profiles"][name] = run_profile(args, profile_named(name), part_path)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    plot(report, args.out.with_suffix(".png"))
    print(f"{summarise(report)} -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
