"""What one sharded round must cost on this machine: its floor, measured piece by piece.

A replica's round does this arithmetic whatever the implementation (09 §9.7): its delta
(flatten, subtract), its own check (a norm), encoding every shard with error feedback,
decoding and judging the R-1 other deltas of the shard it aggregates, the weighted sum and the
update's encoding, decoding the R-1 other updates, building the new weights (a copy and the
adds), hashing them (the weights hash), writing them to the store, and installing them (a
norm, the copy into the module). :func:`arithmetic_s` times exactly that, single-threaded on
warm buffers, so no page fault, wait or Python overhead is in it.

Moving a MiB of shard stream costs the sender its chunk hash, frame signature and sealing, and
the receiver opening, the frame check and the chunk hash: :func:`stream_ms_per_mib` adds the
measured pieces to a raw socket's CPU per MiB at both ends (``bench_transfer.ceiling``).

The floor of a round of R replicas is then their arithmetic plus every stream MiB, spread
perfectly over the machine's cores: (R x arithmetic + 2 (R - 1) x payload MiB x stream cost)
/ cores.
"""

from __future__ import annotations

import itertools
import os
import tempfile
import time
from pathlib import Path

import torch

from spheroid_p2p.core.plan import shard_bounds
from spheroid_p2p.ml.averaging import (
    ENCODING_DTYPES,
    FlatLayout,
    SliceEncoder,
    tensors_norm,
)
from spheroid_p2p.node.shards import payload_len
from spheroid_p2p.node.tensor_bridge import raw_of
from spheroid_p2p.wire.manifests import tensor_entry, weights_hash

__all__ = ["arithmetic_s", "floor_s", "stream_ms_per_mib"]


def arithmetic_s(size_mb: float, replicas: int, encoding: str, repeats: int = 3) -> float:
    """Best time of one replica's round arithmetic (see the module docstring)."""
    torch.set_num_threads(1)
    n = int(size_mb * 1e6 / 4 / 8) * 8
    g = torch.Generator().manual_seed(0)
    module = torch.nn.Module()
    for i in range(8):
        module.register_parameter(f"w{i}", torch.nn.Parameter(torch.randn(n // 8, generator=g)))
    layout = FlatLayout(module.state_dict())
    base = layout.flatten(module.state_dict())
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g), alpha=1e-4)
    bounds = shard_bounds(n, replicas)
    a, b = bounds[0], bounds[1]
    m = b - a
    dtype = ENCODING_DTYPES[encoding]
    delta = torch.empty(n)
    encoded = [torch.empty(hi - lo, dtype=dtype) for lo, hi in itertools.pairwise(bounds)]
    others = [torch.empty(m, dtype=dtype).copy_(torch.randn(m) * 1e-4) for _ in range(replicas - 1)]
    decoded = [torch.empty(m) for _ in range(replicas)]
    acc = torch.empty(m)
    update = torch.empty(m, dtype=dtype)
    updates = [torch.empty(hi - lo) for lo, hi in itertools.pairwise(bounds)]
    new = torch.empty(n)
    sender = SliceEncoder(encoding)
    aggregator = SliceEncoder(encoding)
    best = float("inf")
    with tempfile.TemporaryDirectory() as d:
        for attempt in range(repeats + 1):
            start = time.perf_counter()
            layout.flatten(module.state_dict(), out=delta).sub_(base)  # the delta
            tensors_norm(delta)  # its check
            for i, (lo, hi) in enumerate(itertools.pairwise(bounds)):  # every shard encoded
                sender.encode(delta[lo:hi], lo, n, out=encoded[i])
            for i, other in enumerate(others):  # the shard's other deltas judged
                decoded[i].copy_(other)
                tensors_norm(decoded[i])
            decoded[-1].copy_(delta[a:b])
            acc.zero_()
            for x in decoded:  # the weighted sum, the update encoded and decoded
                acc.add_(x, alpha=1 / replicas)
            enc = aggregator.encode(acc, a, n, out=update)
            updates[0].copy_(enc.values)
            for i in range(1, replicas):  # the other shards' updates decoded and judged
                updates[i].copy_(encoded[i])
                tensors_norm(updates[i])
            new.copy_(base)  # the new weights
            for i, (lo, hi) in enumerate(itertools.pairwise(bounds)):
                new[lo:hi].add_(updates[i])
            tensors = layout.views(new)
            weights_hash(tuple(tensor_entry(k, raw_of(t)) for k, t in tensors.items()))
            with open(Path(d) / f"v{attempt}", "wb") as f:  # stored
                f.write(raw_of(new).data)
            tensors_norm(new)  # installed
            module.load_state_dict(tensors)
            if attempt:  # the first pass warms every buffer
                best = min(best, time.perf_counter() - start)
            os.unlink(Path(d) / f"v{attempt}")
    return best


def stream_ms_per_mib(ceiling: dict[str, float], seal_open_ms: float) -> float:
    """CPU-ms to move one MiB of shard stream between two processes, both ends."""
    return (
        ceiling["cpu_per_MiB_raw_socket_both_ends_ms"]
        + ceiling["cpu_per_MiB_frame_check_ms"]
        + ceiling["cpu_per_MiB_frame_sign_ms"]
        + 2 * ceiling["cpu_per_MiB_blake3_ms"]  # the sender's chunk hash, the receiver's check
        + seal_open_ms
    )


def floor_s(
    arithmetic: float, stream_ms: float, size_mb: float, replicas: int, encoding: str, cores: int
) -> float:
    """The least a round of ``replicas`` replicas can take here (see the module docstring)."""
    n = int(size_mb * 1e6 / 4)
    payload_mib = payload_len(n, encoding) / 2**20
    stream_mib = 2 * (replicas - 1) * payload_mib
    return (replicas * arithmetic + stream_mib * stream_ms / 1e3) / cores
