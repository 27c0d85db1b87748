"""The combined rules (ml.combine, 10 §10.9): the running value stays in the range the wire
takes; the weighted rule weighs each block by its quality, whatever the hops."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from spheroid_p2p.errors import ProtocolError
from spheroid_p2p.ml.combine import (
    FLOOR,
    MAX_QUALITY,
    QUALITY_UNKNOWN,
    WEIGHT_TEMPERATURE,
    Combination,
    accumulate,
    combined_logits,
    quality_of,
)
from spheroid_p2p.params import MAX_QUALITY as WIRE_MAX_QUALITY
from spheroid_p2p.params import WEIGHT_TEMPERATURE as WIRE_TEMPERATURE
from spheroid_p2p.wire.tensors import chunk_digest
from spheroid_p2p.wire.traversal import (
    COMBINE_MEAN,
    COMBINE_WEIGHTED,
    COMBINED_FLOOR,
    Hop,
    InlineTensor,
    Traverse,
)


def _to_block_1(combine: int, **fields: object) -> Traverse:
    """A traversal to the hop of block 1 under ``combine`` (its __post_init__ checks it)."""
    return Traverse(
        traversal_id=1, client=bytes(32), reply_addr="127.0.0.1:1",
        route=(Hop(bytes(32), "127.0.0.1:2", 0, 0), Hop(bytes(32), "127.0.0.1:3", 1, 1)),
        hop=1, config_hash="", steps_per_block=1, prefix=b"a", span=0, seed=0,
        temperature=0.0, deadline_ms=1, want_logits=False,
        z=InlineTensor(1, (0,), 0, chunk_digest(b"")), combine=combine,
        **fields,  # type: ignore[arg-type]
    )  # fmt: skip


def test_the_sum_is_clamped_so_an_honest_hop_never_forwards_what_the_next_refuses() -> None:
    assert FLOOR == COMBINED_FLOOR
    hostile = torch.full((1, 1, 256), -FLOOR, dtype=torch.float16)  # the lowest lp accepted
    logits = torch.randn(1, 1, 256) * 50
    out = accumulate(hostile, logits)
    assert out.dtype == torch.float16 and bool((out >= -FLOOR).all() and (out <= 0).all())
    forwarded = _to_block_1(COMBINE_MEAN, combined=out.numpy().tobytes())
    assert len(forwarded.combined) == 512  # decodes: the check in __post_init__ passes


def test_the_mean_of_identical_blocks_is_their_log_probabilities() -> None:
    logits = torch.randn(1, 2, 256)
    acc = None
    for _ in range(4):
        acc = accumulate(acc, logits)
    assert acc is not None
    mean = combined_logits(acc, 4)
    expected = torch.log_softmax(logits, dim=-1)
    assert torch.allclose(mean, expected, atol=0.02)  # binary16 rounding after every block


def test_the_weighted_rule_weighs_each_block_by_its_quality() -> None:
    """exp(-q / tau) weights: a block 5 tau worse counts e^-5 as much; equal qualities give
    the plain mean; a block that does not know its quality (ln 256) counts for nothing."""
    assert WEIGHT_TEMPERATURE == WIRE_TEMPERATURE and MAX_QUALITY == WIRE_MAX_QUALITY
    torch.manual_seed(0)
    logits = [torch.randn(1, 3, 256) * 3 for _ in range(3)]
    logp = [torch.log_softmax(x, dim=-1) for x in logits]
    q = (2.0, 2.0 + 5 * WEIGHT_TEMPERATURE, 2.1)
    mix = Combination(COMBINE_WEIGHTED)
    for x, quality in zip(logits, q, strict=True):
        mix.add(x, quality)
    w = torch.tensor([math.exp(-v / WEIGHT_TEMPERATURE) for v in q], dtype=torch.float64)
    w /= w.sum()
    expected = sum(wi * lp for wi, lp in zip(w.tolist(), logp, strict=True))
    assert mix.qualities == q
    assert torch.allclose(mix.logits(3), expected, rtol=2e-3, atol=0.01)  # binary16 rounding
    same, mean = Combination(COMBINE_WEIGHTED), Combination(COMBINE_MEAN)
    for x in logits:
        same.add(x, 2.5)
        mean.add(x, 2.5)
    assert torch.allclose(same.logits(3), mean.logits(3), atol=0.03)
    blind = Combination(COMBINE_WEIGHTED)
    blind.add(logits[0], 2.0)
    blind.add(logits[1], None)
    assert blind.qualities == (2.0, QUALITY_UNKNOWN)
    assert torch.allclose(blind.logits(2), logp[0], atol=0.02)


def test_the_weighted_mean_does_not_depend_on_where_the_hops_cut_the_chain() -> None:
    """Hop by hop through lp's bytes and lq's numbers: the same bytes as in one process."""
    torch.manual_seed(1)
    logits = [torch.randn(1, 2, 256) * 4 for _ in range(4)]
    q = (2.31, 2.25, 5.0, 2.4)
    whole = Combination(COMBINE_WEIGHTED)
    for x, quality in zip(logits, q, strict=True):
        whole.add(x, quality)
    for cut in (1, 2, 3):
        first = Combination(COMBINE_WEIGHTED)
        for x, quality in zip(logits[:cut], q[:cut], strict=True):
            first.add(x, quality)
        acc = torch.frombuffer(bytearray(first.lp_bytes()), dtype=torch.float16).view(1, 2, 256)
        second = Combination(COMBINE_WEIGHTED, acc, first.qualities)
        for x, quality in zip(logits[cut:], q[cut:], strict=True):
            second.add(x, quality)
        assert second.lp_bytes() == whole.lp_bytes()


def test_qualities_outside_the_range_are_unknown_and_refused_on_the_wire() -> None:
    for bad in (float("nan"), float("inf"), -0.1, MAX_QUALITY + 1):
        assert quality_of(bad) == QUALITY_UNKNOWN
    assert quality_of(None) == QUALITY_UNKNOWN and quality_of(1.5) == 1.5
    base = _to_block_1(COMBINE_WEIGHTED, combined=bytes(512), qualities=(2.0,))
    for bad in ((float("nan"),), (-1.0,), (17.0,), (True,), (2.0,) * 65):
        with pytest.raises(ProtocolError):
            dataclasses.replace(base, qualities=bad)
    with pytest.raises(ProtocolError):  # lq without lp
        dataclasses.replace(base, combined=b"")
    with pytest.raises(ProtocolError):  # lq under the plain mean
        dataclasses.replace(base, combine=COMBINE_MEAN)
