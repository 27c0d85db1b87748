"""Sampler and evaluation: hops compose into the traversal; scores are deterministic."""

from __future__ import annotations

import math

import torch

from spheroid_p2p.ml.baselines import ARTransformer
from spheroid_p2p.ml.block import BlockDenoiser
from spheroid_p2p.ml.config import ModelConfig
from spheroid_p2p.ml.evaluate import ce_autoregressive, ce_teacher_forced, evaluate_sampler
from spheroid_p2p.ml.noise import NoisePartition
from spheroid_p2p.ml.sampler import block_hop, block_points, initial_noise, traverse


def _blocks(cfg: ModelConfig) -> list[BlockDenoiser]:
    blocks = [BlockDenoiser(cfg, b) for b in range(cfg.n_blocks)]
    for block in blocks:
        with torch.no_grad():
            for p in block.parameters():
                p.add_(torch.randn_like(p) * 0.05)
    return blocks


def test_hops_in_sequence_equal_the_traversal(tiny: ModelConfig) -> None:
    """Running each block's hop by hand gives the traversal's logits (what peers do)."""
    cfg = tiny.replace(euler_steps_per_block=2)
    blocks = _blocks(cfg)
    points = block_points(NoisePartition(cfg))
    x = torch.randint(0, 256, (2, 16))
    z0 = initial_noise((2, 16, 32), points[0][0][0], torch.Generator().manual_seed(3))
    z = z0
    for b, (pts, nxt) in enumerate(points):
        result = block_hop(blocks[b], x, z, pts, nxt)
        z = result.z
    logits, _ = traverse(lambda b, z: block_hop(blocks[b], x, z, *points[b]), 4, z0)
    assert torch.equal(result.logits, logits)


def test_sampler_evaluation_is_deterministic_and_reports_every_figure(tiny: ModelConfig) -> None:
    """Same seeds give the same CE; fresh blocks score ln 256; span slots are reported."""
    fresh = [BlockDenoiser(tiny.replace(zero_init_head=True), b) for b in range(4)]
    windows = torch.randint(0, 256, (6, 17))
    report = evaluate_sampler(fresh, windows, seeds=(0, 1))
    assert math.isclose(report.ce_sampler, math.log(256), rel_tol=1e-5)
    cfg = tiny.replace(layout="P", span=4)
    blocks = _blocks(cfg)
    a = evaluate_sampler(blocks, windows, seeds=(0, 1))
    b = evaluate_sampler(blocks, windows, seeds=(0, 1))
    assert a.ce_sampler == b.ce_sampler and len(a.ce_by_slot) == 4
    assert len(ce_teacher_forced(blocks, windows)) == 4


def test_autoregressive_baseline_scores_fresh_near_uniform(tiny: ModelConfig) -> None:
    """A fresh AR baseline's CE is close to ln 256 on random bytes."""
    model = ARTransformer(tiny, n_layers=2)
    ce = ce_autoregressive(model, torch.randint(0, 256, (4, 17)))
    assert abs(ce - math.log(256)) < 0.1
