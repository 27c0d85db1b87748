"""Flat vectors, slice encodings with error feedback, checks, the weighted sum, and a shard's
bytes on the wire (09 §9.3)."""

from __future__ import annotations

import math

import pytest
import torch

from spheroid_p2p.ml.averaging import (
    FlatLayout,
    SliceEncoder,
    check_values,
    decode_slice,
    tensors_norm,
    weighted_sum,
)
from spheroid_p2p.node.shards import from_payload, payload_len, to_payload


def _base() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {"a": torch.randn(300, 7, generator=g), "b": torch.randn(5, generator=g)}


def test_flat_layout_round_trips_in_manifest_order() -> None:
    base = _base()
    layout = FlatLayout(base)
    flat = layout.flatten(base)
    assert flat.numel() == 2105 and layout.offsets == [0, 2100]
    assert torch.equal(flat[2100:], base["b"])
    back = layout.unflatten(flat)
    assert list(back) == ["a", "b"] and all(torch.equal(back[k], base[k]) for k in base)
    with pytest.raises(ValueError, match="shape"):
        layout.flatten({"a": base["a"][:3], "b": base["b"]})


@pytest.mark.parametrize("encoding", ["float32", "float16", "bfloat16", "int8"])
def test_slices_round_trip_and_error_feedback_catches_up(encoding: str) -> None:
    """Encoding two slices of one vector round after round: with error feedback, the sum of
    what was sent tracks the sum of the true deltas (each slice keeps its own residual)."""
    g = torch.Generator().manual_seed(1)
    delta = 1e-3 * torch.randn(1000, generator=g)
    enc = SliceEncoder(encoding)
    sent = torch.zeros(1000)
    rounds = 8
    for _ in range(rounds):
        for lo, hi in ((0, 512), (512, 1000)):
            encoded = enc.encode(delta[lo:hi].clone(), lo, 1000)
            payload = to_payload(encoded)
            assert len(payload) == payload_len(hi - lo, encoding)
            received, problem = from_payload(bytearray(payload), hi - lo, encoding)
            assert problem is None and received is not None
            sent[lo:hi] += decode_slice(received)
    err = (sent - rounds * delta).abs().max().item()
    assert err <= 0.02 * delta.abs().max().item() + 1e-9, (encoding, err)
    ratio = {"float32": 1.0, "float16": 0.5, "bfloat16": 0.5, "int8": 0.27}[encoding]
    assert payload_len(1000, encoding) <= ratio * 4000 + 16


def test_a_payload_of_the_wrong_size_or_with_bad_scales_is_refused() -> None:
    encoded = SliceEncoder("int8").encode(torch.ones(300), 0, 300)
    payload = bytearray(to_payload(encoded))
    assert from_payload(payload[:-1], 300, "int8")[1] is not None
    payload[-4:] = bytes.fromhex("0000c07f")  # a NaN scale
    assert "scales" in from_payload(payload, 300, "int8")[1]


def test_check_flags_nan_and_huge_norms() -> None:
    base = _base()
    norm = tensors_norm(base)
    ok = {k: 1e-3 * torch.ones_like(v) for k, v in base.items()}
    assert check_values(ok, norm, 1.0).problem is None
    nan = dict(ok, b=torch.full((5,), math.nan))
    assert "NaN" in check_values(nan, norm, 1.0).problem
    huge = {k: 1e3 * torch.ones_like(v) for k, v in base.items()}
    assert "exceeds" in check_values(huge, norm, 1.0).problem
    assert "NaN" in check_values(torch.tensor([1.0, math.inf]), 1.0, 1.0).problem


def test_weighted_sum_and_empty_is_zero() -> None:
    out = weighted_sum([(torch.ones(4), 0.75), (3 * torch.ones(4), 0.25)], 4)
    assert torch.allclose(out, torch.full((4,), 1.5))
    assert torch.equal(weighted_sum([], 3), torch.zeros(3))
