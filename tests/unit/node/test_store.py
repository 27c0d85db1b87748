"""The version store: sets installed before they are durable are usable at once, durable
after close, and a blob torn by a crash before its fsync is discarded on load, never used."""

from __future__ import annotations

from pathlib import Path

import torch

from spheroid_p2p.node.store import VersionStore
from spheroid_p2p.wire.signing import KeyPair


def _tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    return {"a": torch.randn(300, 700, generator=g), "b": torch.randn(5, generator=g)}


def _put(store: VersionStore, durable: bool) -> bytes:
    stored = store.put(
        KeyPair.generate(),
        _tensors(),
        block=1,
        version=2,
        parent=b"\x00" * 32,
        config_hash="cfg",
        durable=durable,
    )
    return stored.manifest.content


def test_non_durable_put_is_installed_at_once_and_durable_after_close(tmp_path: Path) -> None:
    store = VersionStore(tmp_path)
    content = _put(store, durable=False)
    got = store.get(content)
    assert got is not None
    assert all(torch.equal(got.tensors()[k], v) for k, v in _tensors().items())
    store.close()  # waits for the background fsyncs
    again = VersionStore(tmp_path)
    assert content in again.sets
    assert again.full(1) is not None and again.full(1).manifest.content == content
    again.close()


def test_a_blob_torn_before_its_fsync_is_discarded_on_load(tmp_path: Path) -> None:
    store = VersionStore(tmp_path)
    content = _put(store, durable=False)
    store.close()
    blob = tmp_path / f"{content.hex()}.blob"
    data = bytearray(blob.read_bytes())
    data[len(data) // 2 :] = bytes(len(data) - len(data) // 2)  # lost pages read back as zeros
    blob.write_bytes(bytes(data))
    again = VersionStore(tmp_path)
    assert content not in again.sets
    assert not blob.exists() and not (tmp_path / f"{content.hex()}.manifest").exists()
    again.close()
