"""Block versions between real node processes: several holders, a killed holder, resume,
and a holder whose copy was corrupted on disk."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import pytest
import torch

from spheroid_p2p.node.app import Node, running_node
from spheroid_p2p.node.config import NodeConfig
from spheroid_p2p.node.store import VersionStore
from spheroid_p2p.node.transfer import FetchError
from spheroid_p2p.wire.signing import KeyPair, PeerId
from tests.support.shaper import SlowLink
from tests.support.swarm import NodeProcess

pytestmark = pytest.mark.integration


def _tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    return {f"layer{i}.w": torch.randn(1024, 1280, generator=g) for i in range(6)}  # 30 MiB


def _seed_store(root: Path, names: list[str], tensors: dict[str, torch.Tensor]) -> bytes:
    key = KeyPair.generate()
    content = b""
    for name in names:
        store = VersionStore(root / name / "versions")
        stored = store.put(key, tensors, block=0, version=3, parent=b"\x01" * 32, config_hash="t")
        content = stored.manifest.content
        store.close()
    return content


def _fetcher(tmp: Path) -> contextlib.AbstractAsyncContextManager[Node]:
    return running_node(NodeConfig(data_dir=tmp / "fetcher", key=tmp / "fetcher.key"))


def _pid(p: NodeProcess) -> PeerId:
    return PeerId.from_text(p.peer_id)


def test_fetch_from_three_holders_survives_a_killed_holder(tmp_path: Path) -> None:
    tensors = _tensors()
    content = _seed_store(tmp_path, ["h0", "h1", "h2"], tensors)
    holders = [NodeProcess(tmp_path, f"h{i}", verbose=1).start() for i in range(3)]

    async def main() -> None:
        async with _fetcher(tmp_path) as node:
            ids = [_pid(h) for h in holders]
            for h in holders:
                await node.peers.dial(h.addr)
            signed = await node.transfers.get_manifest(ids[0], 0, content)
            got = 0

            def on_chunk(n: int) -> None:
                nonlocal got
                got += 1
                if got == 4:
                    holders[1].kill9()  # mid-fetch

            result = await node.transfers.fetch(signed, ids, on_chunk=on_chunk)
            assert result.stored.manifest.content == content
            fetched = result.stored.tensors()
            assert all(torch.equal(fetched[k], tensors[k]) for k in tensors)
            assert len(result.per_holder) >= 2
            # the copy on disk is the installed one, verified again on load
            again = VersionStore(tmp_path / "fetcher" / "versions")
            assert content in again.sets

    try:
        asyncio.run(main())
    finally:
        for h in holders:
            h.stop()


def test_interrupted_fetch_resumes_without_refetching(tmp_path: Path) -> None:
    tensors = _tensors()
    content = _seed_store(tmp_path, ["h0", "h1"], tensors)
    first = NodeProcess(tmp_path, "h0", verbose=1).start()
    second = NodeProcess(tmp_path, "h1", verbose=1).start()

    async def main() -> None:
        async with _fetcher(tmp_path) as node:
            await node.peers.dial(first.addr)
            signed = await node.transfers.get_manifest(_pid(first), 0, content)
            got = 0

            def on_chunk(n: int) -> None:
                nonlocal got
                got += 1
                if got == 10:
                    first.kill9()

            with pytest.raises(FetchError, match="kept for resume"):
                await node.transfers.fetch(signed, [_pid(first)], on_chunk=on_chunk)
            await node.peers.dial(second.addr)
            result = await node.transfers.fetch(signed, [_pid(second)])
            assert result.resumed_chunks >= 10
            assert result.bytes_fetched < signed.manifest.total_bytes
            fetched = result.stored.tensors()
            assert all(torch.equal(fetched[k], tensors[k]) for k in tensors)

    try:
        asyncio.run(main())
    finally:
        first.stop()
        second.stop()


def test_corrupted_chunk_is_detected_and_its_holder_reported(tmp_path: Path) -> None:
    tensors = _tensors()
    content = _seed_store(tmp_path, ["h0", "h1"], tensors)
    bad = NodeProcess(tmp_path, "h0", verbose=1).start()
    good = NodeProcess(tmp_path, "h1", verbose=1).start()
    # Corrupt every chunk of h0's copy on disk after it started (it checked it at start).
    blob = tmp_path / "h0" / "versions" / f"{content.hex()}.blob"
    with open(blob, "r+b") as f:
        size = blob.stat().st_size
        for offset in range(0, size, 1 << 20):
            f.seek(offset + 100)
            f.write(b"\xff\xfe\xfd")

    async def main() -> None:
        async with _fetcher(tmp_path) as node:
            await node.peers.dial(bad.addr)
            await node.peers.dial(good.addr)
            signed = await node.transfers.get_manifest(_pid(good), 0, content)
            result = await node.transfers.fetch(signed, [_pid(bad), _pid(good)])
            fetched = result.stored.tensors()
            assert all(torch.equal(fetched[k], tensors[k]) for k in tensors)
            assert [who for who, _ in result.bad_holders] == [_pid(bad).short()]
            assert "HASH_MISMATCH" in result.bad_holders[0][1]

    try:
        asyncio.run(main())
    finally:
        bad.stop()
        good.stop()


def test_auto_compression_switches_on_once_a_slow_link_is_measured(tmp_path: Path) -> None:
    """A first fetch from a holder has no measured rate, so ``auto`` starts uncompressed; after
    4 MiB over a link held to 8 MB/s it measures the rate, finds that shuffle+zstd pays on
    these (bf16-rounded, so compressible) weights, and asks for it for the rest (08 §8.7)."""
    g = torch.Generator().manual_seed(3)
    tensors = {
        f"w{i}": torch.randn(1024, 2048, generator=g).bfloat16().float() for i in range(4)
    }  # 32 MiB
    content = _seed_store(tmp_path, ["h0"], tensors)
    holder = NodeProcess(tmp_path, "h0", verbose=1).start()

    async def main() -> None:
        cfg = NodeConfig(data_dir=tmp_path / "fetcher", key=tmp_path / "k", compression="auto")
        async with running_node(cfg) as node, SlowLink(holder.addr, 8e6) as link:
            pid = await node.peers.dial(link.addr)
            assert pid == _pid(holder)
            signed = await node.transfers.get_manifest(pid, 0, content)
            result = await node.transfers.fetch(signed, [pid], timeout_s=60)
            fetched = result.stored.tensors()
            assert all(torch.equal(fetched[k], tensors[k]) for k in tensors)
            rate = node.transfers.codecs.rates.get(pid)
            assert rate is not None and rate < 12e6  # it measured the slow link
            # the chunks asked for after the switch came compressed: fewer bytes than raw
            assert result.bytes_fetched < 0.85 * signed.manifest.total_bytes
            assert link.bytes_down < 0.85 * signed.manifest.total_bytes

    try:
        asyncio.run(main())
    finally:
        holder.stop()
