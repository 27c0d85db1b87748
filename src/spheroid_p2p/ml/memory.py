"""Measured (not estimated) memory of a training step.

:func:`peak_tensor_memory` runs one optimizer step under PyTorch's ``MemTracker`` (a
``TorchDispatchMode`` that follows every tensor storage as it is allocated and freed) and
returns the peak of live tensor bytes, split into parameters, gradients, optimizer state and
activations. :func:`max_rss_bytes` is the process's resident-set high-water mark.
"""

from __future__ import annotations

import resource
import sys
from collections.abc import Callable

import torch

__all__ = ["max_rss_bytes", "peak_tensor_memory"]


def peak_tensor_memory(
    module: torch.nn.Module, optimizer: torch.optim.Optimizer, step: Callable[[], object]
) -> dict[str, int]:
    """Peak live tensor bytes during ``step()`` by category (params, grads, optimizer, ...)."""
    from torch.distributed._tools.mem_tracker import MemTracker  # private API; CPU is supported

    tracker = MemTracker()
    tracker.track_external(module, optimizer)
    with tracker:
        step()
    snapshot = tracker.get_tracker_snapshot("peak")
    per_device = next(iter(snapshot.values()))
    names = {
        "PARAM": "params",
        "BUFFER": "buffers",
        "GRAD": "grads",
        "ACT": "activations",
        "TEMP": "temporaries",
        "OPT": "optimizer_state",
        "OTH": "other",
    }
    out = {"total": int(per_device.get("Total", 0))}
    for key, value in per_device.items():
        name = getattr(key, "name", str(key))
        if name in names:
            out[names[name]] = int(value)
    return out


def max_rss_bytes() -> int:
    """This process's peak resident set size in bytes.

    On Linux this is ``VmHWM`` from ``/proc/self/status``: ``ru_maxrss`` survives ``exec``, so
    a child started by a large parent would report the parent's peak instead of its own.
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024
