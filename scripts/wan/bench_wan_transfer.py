"""WAN transfers: a 64 MiB block version fetched across the emulated link, against the raw link.

A holder node on host 1 has the version; host 2 fetches it (a real node: signed chunk frames,
an encrypted session, BLAKE3 checks, written to its store), with compression off and on
``auto`` (08 §8.7), alternating, for weights that barely compress (random fp32) and for
bf16-rounded fp32 weights (half of every value's bytes are zero). The ceiling, in the same run
over the same link: a plain TCP connection moving the same number of bytes (``probe.py``),
timed from the request to the last byte as a fetch is, slow start included.

    python3 scripts/wan/bench_wan_transfer.py [--profile default] [--mib 64] [--repeats 3]

Writes JSON under ``bench-out/`` and prints one summary line. Needs root.
"""

from __future__ import annotations

import argparse
import asyncio
import json
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

from topology import Topology, profile_named, signals_end_cleanly, unavailable  # noqa: E402

from benchlib import git_commit  # noqa: E402


def _tensors(mib: int, bf16_rounded: bool) -> dict[str, Any]:
    import torch

    n = mib * 1024 * 1024 // 4 // 8
    g = torch.Generator().manual_seed(mib)
    out = {f"w{i}": torch.randn(n, generator=g) for i in range(8)}
    if bf16_rounded:
        out = {k: v.to(torch.bfloat16).to(torch.float32) for k, v in out.items()}
    return out


async def _fetch(tmp: Path, holder: Any, content: bytes, compression: str, i: int) -> float:
    from spheroid_p2p.node.app import running_node
    from spheroid_p2p.node.config import NodeConfig
    from spheroid_p2p.wire.signing import PeerId

    cfg = NodeConfig(
        listen=f"{holder.fetch_host}:0",
        data_dir=tmp / f"fetch-{compression}-{i}",
        key=tmp / "fetch.key",
        compression=compression,
    )
    async with running_node(cfg) as node:
        pid = PeerId.from_text(holder.peer_id)
        await node.peers.dial(holder.addr)
        signed = await node.transfers.get_manifest(pid, 0, content)
        start = time.perf_counter()
        result = await node.transfers.fetch(signed, [pid])
        seconds = time.perf_counter() - start
        assert result.stored.manifest.content == content
    return seconds


def inside(args: argparse.Namespace) -> int:
    """Runs on host 2: the holder on host 1 (through its prefix), fetches and probes here."""
    from probe import measure

    from spheroid_p2p.node.launcher import NodeProcess
    from spheroid_p2p.node.store import VersionStore
    from spheroid_p2p.wire.signing import KeyPair

    prefix = tuple(json.loads(args.holder_prefix))
    tmp = Path(tempfile.mkdtemp(prefix="wan-transfer-"))
    probe = subprocess.Popen(
        [
            *prefix,
            sys.executable,
            str(HERE / "probe.py"),
            "serve",
            "--listen",
            f"{args.holder_host}:9100",
            "--seconds",
            "3000",
        ]
    )
    results: dict[str, Any] = {}
    try:
        time.sleep(1.0)
        for kind in ("fp32", "bf16-rounded"):
            tensors = _tensors(args.mib, kind == "bf16-rounded")
            nbytes = sum(t.numel() * 4 for t in tensors.values())
            store = VersionStore(tmp / f"holder-{kind}" / "versions")
            stored = store.put(
                KeyPair.generate(),
                tensors,
                block=0,
                parent=b"\x01" * 32,
                config_hash="bench",
                version=1,
            )
            store.close()
            holder = NodeProcess(
                tmp,
                f"holder-{kind}",
                "--compression",
                "auto",
                verbose=0,
                listen=f"{args.holder_host}:0",
                prefix=prefix,
            ).start(timeout_s=120)
            holder.fetch_host = args.fetch_host  # type: ignore[attr-defined]
            rows: dict[str, list[float]] = {"none": [], "auto": [], "raw_tcp": []}
            try:
                for i in range(args.repeats):
                    for mode in ("none", "auto"):
                        rows[mode].append(
                            asyncio.run(_fetch(tmp, holder, stored.manifest.content, mode, i))
                        )
                    raw = measure(f"{args.holder_host}:9100", nbytes)
                    rows["raw_tcp"].append(raw["bulk_seconds"])
            finally:
                holder.stop()
            best = {k: min(v) for k, v in rows.items()}
            results[kind] = {
                "bytes": nbytes,
                "seconds": rows,
                "best_s": best,
                "mbit_s": {k: nbytes * 8 / v / 1e6 for k, v in best.items()},
                "none_vs_raw": best["raw_tcp"] / best["none"],
                "auto_vs_none": best["none"] / best["auto"],
            }
            print(f"  {kind}: {json.dumps(results[kind]['mbit_s'])}", file=sys.stderr, flush=True)
    finally:
        probe.terminate()
        probe.wait(10)
    Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="default")
    ap.add_argument("--mib", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=ROOT / "bench-out" / "bench_wan_transfer.json")
    ap.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--holder-prefix", help=argparse.SUPPRESS)
    ap.add_argument("--holder-host", help=argparse.SUPPRESS)
    ap.add_argument("--fetch-host", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.inside:
        return inside(args)
    reason = unavailable()
    if reason:
        print(f"error: the emulated hosts {reason}", file=sys.stderr)
        return 2
    args.out.parent.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"benchmark": "bench_wan_transfer", "git_commit": git_commit()}
    report["profiles"] = {}
    with signals_end_cleanly():
        for name in args.profile.split(","):
            profile = profile_named(name)
            part = args.out.with_suffix(f".{name}.json")
            with Topology(profile) as topo:
                cmd = [
                    *topo.exec_prefix(1),
                    sys.executable,
                    str(Path(__file__).resolve()),
                    "--inside",
                    "--holder-prefix",
                    json.dumps(topo.exec_prefix(0)),
                    "--holder-host",
                    topo.addr(0),
                    "--fetch-host",
                    topo.addr(1),
                    "--mib",
                    str(args.mib),
                    "--repeats",
                    str(args.repeats),
                    "--out",
                    str(part),
                ]
                subprocess.run(cmd, check=True, timeout=3000)
            report["profiles"][name] = {
                "profile": profile.describe(),
                "link_mbit": profile.path_mbit(0, 1),
                "results": json.loads(part.read_text()),
            }
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    cells = []
    for name, p in report["profiles"].items():
        r = p["results"]
        cells.append(
            f"{name}: fp32 none {r['fp32']['mbit_s']['none']:.1f} Mbit/s = "
            f"x{r['fp32']['none_vs_raw']:.2f} raw TCP ({r['fp32']['mbit_s']['raw_tcp']:.1f}), "
            f"auto x{r['fp32']['auto_vs_none']:.2f} none; bf16-rounded auto "
            f"x{r['bf16-rounded']['auto_vs_none']:.2f} none"
        )
    print(f"bench_wan_transfer: {'; '.join(cells)} -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
