"""Delta encodings, error feedback, checks and the weighted average."""

from __future__ import annotations

import math

import pytest
import torch

from spheroid_p2p.ml.averaging import (
    DeltaEncoder,
    apply_average,
    check_delta,
    decode_delta,
    delta_of,
    tensors_norm,
)


def _base() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {"a": torch.randn(300, 7, generator=g), "b": torch.randn(5, generator=g)}


@pytest.mark.parametrize("encoding", ["float32", "float16", "bfloat16", "int8"])
def test_round_trip_error_is_bounded_and_feedback_catches_up(encoding: str) -> None:
    base = _base()
    g = torch.Generator().manual_seed(1)
    delta = {k: 1e-3 * torch.randn(v.shape, generator=g) for k, v in base.items()}
    enc = DeltaEncoder(encoding)
    sent_total = {k: torch.zeros_like(v) for k, v in delta.items()}
    rounds = 8
    for _ in range(rounds):
        wire, problem = enc.encode(delta), None
        decoded, problem = decode_delta(wire, encoding, base)
        assert problem is None
        for k in delta:
            sent_total[k] += decoded[k]
    # with error feedback, the sum of what was sent tracks the sum of the true deltas
    for k in delta:
        err = (sent_total[k] - rounds * delta[k]).abs().max().item()
        assert err <= 0.02 * delta[k].abs().max().item() + 1e-9, (encoding, k, err)
    wire = DeltaEncoder(encoding).encode(delta)
    size = sum(t.numel() * t.element_size() for t in wire.values())
    fp32 = sum(t.numel() * 4 for t in delta.values())
    expected = {"float32": 1.0, "float16": 0.5, "bfloat16": 0.5, "int8": 0.27}[encoding]
    assert size <= expected * fp32 + 64


def test_decode_refuses_wrong_names_dtypes_and_shapes() -> None:
    base = _base()
    good = DeltaEncoder("bfloat16").encode(delta_of(base, base))
    assert decode_delta(good, "bfloat16", base)[1] is None
    assert "names" in decode_delta({"a": good["a"]}, "bfloat16", base)[1]
    bad_dtype = dict(good, a=good["a"].float())
    assert "dtype" in decode_delta(bad_dtype, "bfloat16", base)[1]
    bad_shape = dict(good, b=good["b"][:3])
    assert "shape" in decode_delta(bad_shape, "bfloat16", base)[1]
    int8 = DeltaEncoder("int8").encode(delta_of(base, base))
    int8["a:scale"] = int8["a:scale"][:-1]
    assert "scale" in decode_delta(int8, "int8", base)[1]


def test_check_flags_nan_and_huge_norms() -> None:
    base = _base()
    norm = tensors_norm(base)
    ok = {k: 1e-3 * torch.ones_like(v) for k, v in base.items()}
    assert check_delta(ok, norm, 1.0).problem is None
    nan = dict(ok, b=torch.full((5,), math.nan))
    assert "NaN" in check_delta(nan, norm, 1.0).problem
    huge = {k: 1e3 * torch.ones_like(v) for k, v in base.items()}
    assert "exceeds" in check_delta(huge, norm, 1.0).problem


def test_average_is_weighted_and_empty_keeps_the_base() -> None:
    base = _base()
    d1 = {k: torch.ones_like(v) for k, v in base.items()}
    d2 = {k: 3 * torch.ones_like(v) for k, v in base.items()}
    out = apply_average(base, [(d1, 0.75), (d2, 0.25)])
    assert torch.allclose(out["a"], base["a"] + 1.5)
    same = apply_average(base, [])
    assert all(torch.equal(same[k], base[k]) for k in base)
