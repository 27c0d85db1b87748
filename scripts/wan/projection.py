"""Project a measured WAN traversal to a larger model on GPU hosts, every assumption named.

The WAN benchmark splits each traversal into compute, the hops' own waiting and encoding,
propagation, serialisation and the network's excess (``bench_wan_inference.py``). Only two of
those change with the model: compute (FLOPs at a GPU's rate) and serialisation (the codes'
bytes grow with the width). Propagation and the excess do not depend on the model; they are
taken as measured. The pipeline baseline's per-byte step is bound by reading every weight once
per byte (HBM bandwidth), plus the same hops.

    python3 scripts/wan/projection.py bench-out/bench_wan_scale.json   # prints JSON
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

__all__ = ["GpuShape", "project"]


@dataclass(frozen=True)
class GpuShape:
    """The target: a logical model served by GPU hosts (assumptions, not measurements)."""

    params: float = 75.80e9  # the paper's logical fp16 shape
    d_model: int = 8192  # width of a 70B-class Transformer (assumed; the paper's is not used)
    context: int = 128
    n_blocks: int = 4
    gpu_flops: float = 989e12 * 0.4  # H100 bf16 dense at 40 % utilisation
    hbm_bytes_s: float = 3.35e12  # H100 SXM memory bandwidth
    bytes_per_param: int = 2  # fp16 weights
    z_bytes_per_value: int = 2  # codes travel as fp16 (the client's --transport)
    link_mbit: float = 100.0


def project(run: dict[str, Any], ar_run: dict[str, Any] | None, shape: GpuShape) -> dict[str, Any]:
    """Per-traversal time of a whole-context traversal and of one pipeline step at ``shape``,
    from one measured run's steady median (propagation and excess kept as measured)."""
    med = run["split"]["steady_median"] if run["traversals"] > 1 else run["split"]["first"]
    flops = 2 * shape.params * shape.context  # every parameter, every position, one pass
    compute_ms = flops / shape.gpu_flops * 1e3
    z = shape.context * shape.d_model * shape.z_bytes_per_value
    hops_with_z = shape.n_blocks - 1
    serial_ms = hops_with_z * z * 8 / (shape.link_mbit * 1e6) * 1e3
    fixed_ms = med["propagation_ms"] + max(0.0, med["excess_ms"]) + med["queued_ms"]
    traversal_ms = fixed_ms + serial_ms + compute_ms
    out: dict[str, Any] = {
        "assumptions": asdict(shape),
        "traversal": {
            "compute_ms": compute_ms,
            "serialisation_ms": serial_ms,
            "measured_fixed_ms": fixed_ms,
            "total_ms": traversal_ms,
            "bytes_per_second": shape.context / (traversal_ms / 1e3),
        },
    }
    if ar_run is not None:
        ar_med = ar_run["split"]["steady_median"]
        step_compute = shape.params * shape.bytes_per_param / shape.hbm_bytes_s * 1e3
        hidden = shape.d_model * shape.z_bytes_per_value
        step_serial = hops_with_z * hidden * 8 / (shape.link_mbit * 1e6) * 1e3
        step_ms = ar_med["propagation_ms"] + max(0.0, ar_med["excess_ms"]) + step_compute
        step_ms += step_serial
        out["pipeline_step"] = {
            "compute_ms": step_compute,
            "serialisation_ms": step_serial,
            "total_ms": step_ms,
        }
        for n in (128, 512):
            traversals = -(-n // shape.context)
            out[f"speedup_{n}_bytes"] = n * step_ms / (traversals * traversal_ms)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("report", type=Path, help="a bench_wan_inference JSON")
    ap.add_argument("--profile", default="default")
    ap.add_argument("--link-mbit", type=float, default=100.0)
    args = ap.parse_args(argv)
    report = json.loads(args.report.read_text())
    res = report["profiles"][args.profile]["results"]
    full = res["bbr/Kfull"]
    run = full[max(full, key=int)]
    ar = res.get("bbr/ar")
    shape = GpuShape(link_mbit=args.link_mbit)
    print(json.dumps(project(run, ar[min(ar, key=int)] if ar else None, shape), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
