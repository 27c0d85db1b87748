"""The known-prefix rule (ml.prefixed): rows with cached keys and values give the same bytes
as recomputing the window, its masks are what a per-byte traversal sees, windows restart."""

from __future__ import annotations

import pytest
import torch

from spheroid_p2p.ml.block import BlockDenoiser
from spheroid_p2p.ml.combine import COMBINE_LAST
from spheroid_p2p.ml.config import ModelConfig
from spheroid_p2p.ml.evaluate import evaluate_prefixed
from spheroid_p2p.ml.noise import NoisePartition
from spheroid_p2p.ml.prefixed import (
    BlockCache,
    PrefixCache,
    generate_prefixed,
    prefix_noise,
    prefixed_hop,
    row_mask,
)
from spheroid_p2p.ml.sampler import block_points
from spheroid_p2p.ml.windows import prefix_window, window_len

CFG = ModelConfig(d_model=32, n_heads=2, d_cond=8, context=16, layers_per_block=2)


@pytest.fixture(scope="module")
def blocks() -> dict[int, BlockDenoiser]:
    torch.manual_seed(0)
    out = {}
    for b in range(CFG.n_blocks):
        block = BlockDenoiser(CFG, b)
        with torch.no_grad():
            for p in block.parameters():
                p.add_(torch.randn_like(p) * 0.2)  # no zero-initialised path left idle
        out[b] = block.eval()
    return out


def test_rows_without_a_cache_are_the_plain_forward(blocks: dict[int, BlockDenoiser]) -> None:
    x = torch.randint(0, 256, (2, 12))
    z = torch.randn(2, 12, CFG.d_z)
    sigma = torch.full((2,), 9.0)
    causal = torch.ones(12, 12, dtype=torch.bool).tril()
    rows = blocks[1].forward_rows(x, torch.arange(12), z, 9.0, causal, None)
    assert torch.allclose(rows.logits, blocks[1](x, z, sigma).logits, atol=1e-5)


def test_cached_generation_is_byte_identical_to_recomputing(
    blocks: dict[int, BlockDenoiser],
) -> None:
    """Past the context (windows restart twice), greedy and sampled."""
    for temperature in (0.0, 0.8):
        cached = generate_prefixed(blocks, b"Day 1.", 40, seed=3, temperature=temperature)
        fresh = generate_prefixed(
            blocks, b"Day 1.", 40, seed=3, temperature=temperature, cached=False
        )
        assert cached == fresh and len(cached) == 40


def test_a_trajectory_row_sees_known_rows_before_it_and_itself() -> None:
    # 3 known rows (positions 0..2), row 0 cached; 2 trajectory rows at positions 2 and 3
    mask = row_mask(3, 1, 2, 4).int().tolist()
    assert mask == [
        [1, 1, 0, 0, 0],  # known row 1: known rows 0, 1
        [1, 1, 1, 0, 0],  # known row 2: known rows 0..2
        [1, 1, 0, 1, 0],  # trajectory row at 2: known rows 0, 1 and itself
        [1, 1, 1, 0, 1],  # trajectory row at 3: known rows 0..2 and itself
    ]


def test_candidates_in_one_pass_equal_one_traversal_each(blocks: dict[int, BlockDenoiser]) -> None:
    """Several trajectory rows in one pass (a draft's candidates) give each the logits of its
    own per-byte traversal: the rule that exact speculative traversals rest on."""
    points = block_points(NoisePartition(CFG))
    text = torch.tensor([list(b"To be, or not")])
    noise = prefix_noise(7, CFG.context, CFG.d_z)[None]
    z0 = torch.randn(1, 4, CFG.d_z)
    z, many = z0, None
    for b in range(CFG.n_blocks):
        z, many = prefixed_hop(blocks[b], text, z, *points[b], noise)
    for i in range(4):
        size = text.shape[1] - 3 + i
        z1, one = z0[:, i : i + 1], None
        for b in range(CFG.n_blocks):
            z1, one = prefixed_hop(blocks[b], text[:, :size], z1, *points[b], noise)
        assert torch.allclose(one[:, 0], many[:, i], atol=1e-4)


def test_the_cache_keeps_only_rows_whose_bytes_are_unchanged() -> None:
    session = PrefixCache(1, prefix_noise(1, 16, 4))
    k = torch.zeros(1, 2, 5, 2)
    session.blocks[0] = BlockCache(5, [[(k, k)]])
    session.text = b"abcdef"  # rows 0..4 stand on bytes 0..5
    assert session.reuse(b"abcdef+") == 5
    assert session.reuse(b"abcXef") == 2  # rows 0, 1 need bytes 0..2 only
    assert session.blocks[0].rows == 2
    assert session.reuse(b"Zbc") == 0


def test_windows_grow_then_restart_from_the_last_half() -> None:
    lengths = [window_len(n, 8) for n in range(1, 20)]
    assert lengths == [1, 2, 3, 4, 5, 6, 7, 8, 4, 5, 6, 7, 8, 4, 5, 6, 7, 8, 4]
    assert prefix_window(b"0123456789", 8) == b"56789"
    with pytest.raises(ValueError):
        prefix_window(b"", 8)


def test_ce_under_the_known_prefix_rule_is_finite(blocks: dict[int, BlockDenoiser]) -> None:
    windows = torch.randint(0, 256, (3, CFG.context + 1))
    report = evaluate_prefixed(list(blocks.values()), windows, seeds=(0,))
    assert 0 < report.ce_sampler < 20 and 0 < report.ce_first < 20
    # the output rule is scored (the weighted one by default), each rule reported apart
    assert report.ce_sampler == report.ce_weighted
    assert all(0 < ce < 20 for ce in (report.ce_combined, report.ce_last))
    last = evaluate_prefixed(list(blocks.values()), windows, seeds=(0,), combine=COMBINE_LAST)
    assert last.ce_sampler == report.ce_last


def test_cached_rows_are_dropped_when_the_weights_change(blocks: dict[int, BlockDenoiser]) -> None:
    points = block_points(NoisePartition(CFG))
    text = torch.tensor([list(b"To be, or not")])
    noise = prefix_noise(7, CFG.context, CFG.d_z)[None]
    cache = BlockCache()
    z = torch.randn(1, 1, CFG.d_z)
    prefixed_hop(blocks[3], text, z, *points[3], noise, cache)
    assert cache.rows == text.shape[1] - 1
    with torch.no_grad():
        blocks[3].layers[0].qkv.bias.add_(0.5)  # a new version installed in place
    _, cached = prefixed_hop(blocks[3], text, z, *points[3], noise, cache)
    _, fresh = prefixed_hop(blocks[3], text, z, *points[3], noise)
    assert torch.allclose(cached, fresh, atol=1e-5)
    with torch.no_grad():
        blocks[3].layers[0].qkv.bias.sub_(0.5)
