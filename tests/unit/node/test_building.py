"""The new version built while updates stream in (node.building): whatever order the updates
come in, streamed or whole, refused or overtaken, the result is θ_base + the chosen update of
each shard (the base's values where none came), its staged blob is exactly those bytes, and
an abandoned build gives back its vector and file."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import torch

from spheroid_p2p.core.plan import shard_bounds
from spheroid_p2p.ml.averaging import FlatLayout, tensors_norm
from spheroid_p2p.node.buffers import TensorPool
from spheroid_p2p.node.building import VersionBuilder
from spheroid_p2p.node.tensor_bridge import raw_of
from spheroid_p2p.wire.manifests import tensor_entry, weights_hash
from spheroid_p2p.wire.signing import KeyPair

A, B = KeyPair.generate().peer_id, KeyPair.generate().peer_id


def _setup(tmp_path: Path, shards: int = 3) -> tuple[VersionBuilder, torch.nn.Module, list[int]]:
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(300, 400), torch.nn.Linear(400, 200))
    layout = FlatLayout(module.state_dict())
    base = layout.flatten(module.state_dict())
    bounds = shard_bounds(layout.numel, shards)
    assert len(bounds) - 1 == shards
    path = tmp_path / "build.put"
    return VersionBuilder(base, bounds, layout, TensorPool(), path), module, bounds


def _stream(builder: VersionBuilder, shard: int, who, update: torch.Tensor, blocks: int = 4):
    """Feed an update through the builder's sink in ``blocks`` pieces, like ChunkDecoder."""
    sink = builder.sink(shard, who)
    assert sink is not None
    step = -(-update.numel() // blocks)
    for lo in range(0, update.numel(), step):
        sink(lo, update[lo : lo + step])


def _expected(base: torch.Tensor, bounds: list[int], updates: dict[int, torch.Tensor]):
    out = base.clone()
    for shard, u in updates.items():
        out[bounds[shard] : bounds[shard + 1]] += u
    return out


def test_streamed_whole_and_missing_shards_give_base_plus_the_chosen_updates(
    tmp_path: Path,
) -> None:
    async def main() -> None:
        builder, module, bounds = _setup(tmp_path)
        base = builder.base.clone()
        u0 = torch.randn(bounds[1] - bounds[0])
        u1 = torch.randn(bounds[2] - bounds[1])
        _stream(builder, 0, A, u0)  # from the wire, block by block
        assert builder.delivered(0, A, kept=True, better=True) is False  # written already
        assert builder.delivered(1, B, kept=True, better=True) is True  # arrived whole
        await builder.take(1, B, u1)
        built = await builder.build({0: (A, u0), 1: (B, u1)}, module)  # shard 2: missing
        assert built is not None
        want = _expected(base, bounds, {0: u0, 1: u1})
        assert torch.equal(built.flat, want)
        tensors = builder.layout.views(want)
        entries = tuple(tensor_entry(n, raw_of(t)) for n, t in tensors.items())
        assert built.weights == weights_hash(entries)
        assert built.staged is not None
        assert built.staged[0].read_bytes() == want.numpy().tobytes()
        exact = float(torch.linalg.vector_norm(want.double()))
        assert built.norm == pytest.approx(exact, rel=1e-4)
        assert tensors_norm(want) == pytest.approx(exact, rel=1e-4)
        for name, t in module.state_dict().items():  # the module holds the new version
            assert torch.equal(t, tensors[name])

    asyncio.run(main())


def test_a_refused_stream_and_a_lower_rank_update_are_settled_by_the_finish(
    tmp_path: Path,
) -> None:
    async def main() -> None:
        builder, module, bounds = _setup(tmp_path)
        base = builder.base.clone()
        n0, n1 = bounds[1] - bounds[0], bounds[2] - bounds[1]
        bad, good = torch.full((n0,), float("nan")), torch.randn(n0)
        _stream(builder, 0, A, bad, blocks=2)
        builder.abandoned(0, A)  # the judge refused it: its slice is written again
        assert 0 not in builder.applied
        first, better = torch.randn(n1), torch.randn(n1)
        _stream(builder, 1, B, first)
        builder.delivered(1, B, kept=True, better=True)
        assert builder.applied[1] == B
        # a lower rank's update of shard 1 comes later, whole: it replaces the first
        assert builder.delivered(1, A, kept=True, better=True) is True
        await builder.take(1, A, better)
        u2 = torch.randn(bounds[3] - bounds[2])
        built = await builder.build({0: (B, good), 1: (A, better), 2: (A, u2)}, module)
        assert built is not None
        assert torch.equal(built.flat, _expected(base, bounds, {0: good, 1: better, 2: u2}))
        assert built.staged is not None
        assert built.staged[0].read_bytes() == built.flat.numpy().tobytes()

    asyncio.run(main())


def test_a_stream_still_running_at_the_build_is_cut_off(tmp_path: Path) -> None:
    async def main() -> None:
        builder, module, bounds = _setup(tmp_path, shards=2)
        base = builder.base.clone()
        n0 = bounds[1] - bounds[0]
        sink = builder.sink(0, A)
        assert sink is not None
        stale, chosen = torch.randn(n0), torch.randn(n0)
        sink(0, stale[: n0 // 2])
        u1 = torch.randn(bounds[2] - bounds[1])
        built = await builder.build({0: (B, chosen), 1: (B, u1)}, module)
        sink(n0 // 2, stale[n0 // 2 :])  # the rest lands after the cut: not written
        assert built is not None
        assert torch.equal(built.flat, _expected(base, bounds, {0: chosen, 1: u1}))

    asyncio.run(main())


def test_a_closed_build_gives_back_its_vector_and_file(tmp_path: Path) -> None:
    async def main() -> None:
        builder, _, bounds = _setup(tmp_path)
        _stream(builder, 0, A, torch.randn(bounds[1] - bounds[0]))
        assert builder.path is not None and builder.path.exists()
        builder.close()
        assert not (tmp_path / "build.put").exists()
        assert builder.pool.take(builder.layout.numel) is not None
        assert builder.pool.reused == 1  # the vector went back to the pool
        assert builder.sink(1, A) is None  # nothing more is written

    asyncio.run(main())
