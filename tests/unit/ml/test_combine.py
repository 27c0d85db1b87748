"""The combined rule's running sum (ml.combine, 10 §10.9) stays in the range the wire takes."""

from __future__ import annotations

import dataclasses

import torch

from spheroid_p2p.ml.combine import FLOOR, accumulate, combined_logits
from spheroid_p2p.wire.tensors import chunk_digest
from spheroid_p2p.wire.traversal import COMBINE_MEAN, COMBINED_FLOOR, Hop, InlineTensor, Traverse


def test_the_sum_is_clamped_so_an_honest_hop_never_forwards_what_the_next_refuses() -> None:
    assert FLOOR == COMBINED_FLOOR
    hostile = torch.full((1, 1, 256), -FLOOR, dtype=torch.float16)  # the lowest lp accepted
    logits = torch.randn(1, 1, 256) * 50
    out = accumulate(hostile, logits)
    assert out.dtype == torch.float16 and bool((out >= -FLOOR).all() and (out <= 0).all())
    base = Traverse(
        traversal_id=1, client=bytes(32), reply_addr="127.0.0.1:1",
        route=(Hop(bytes(32), "127.0.0.1:2", 0, 0), Hop(bytes(32), "127.0.0.1:3", 1, 1)),
        hop=1, config_hash="", steps_per_block=1, prefix=b"a", span=0, seed=0,
        temperature=0.0, deadline_ms=1, want_logits=False,
        z=InlineTensor(1, (0,), 0, chunk_digest(b"")), combine=COMBINE_MEAN,
    )  # fmt: skip
    forwarded = dataclasses.replace(base, combined=out.numpy().tobytes())
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
