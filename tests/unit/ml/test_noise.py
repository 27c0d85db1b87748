"""Noise partition: equal mass, the design note's figures, widened intervals, schedules."""

from __future__ import annotations

import pytest
import torch

from spheroid_p2p.ml.config import ModelConfig
from spheroid_p2p.ml.noise import NoisePartition, edm_scalings, loss_weight


def test_boundaries_match_the_design_note_table() -> None:
    """B=4 on [0.002, 80] with P=(-1.2, 1.2) gives 0.002, 0.134, 0.301, 0.677, 80 (§5)."""
    part = NoisePartition(ModelConfig(sigma_min=0.002, sigma_max=80.0))
    assert [round(b, 3) for b in part.boundaries()] == [0.002, 0.134, 0.301, 0.677, 80.0]
    widened = [tuple(round(v, 3) for v in part.training_interval(b)) for b in range(4)]
    assert widened[0] == (0.533, 80.0) and widened[3] == (0.002, 0.165)


def test_intervals_hold_equal_mass_and_block_zero_is_highest() -> None:
    """Each block's interval has the same lognormal mass; block 0 owns the top."""
    part = NoisePartition(ModelConfig())
    masses = [part.u(part.interval(b)[1]) - part.u(part.interval(b)[0]) for b in range(4)]
    assert max(masses) - min(masses) < 1e-9
    low = ModelConfig().sigma_min
    assert part.interval(0)[1] == pytest.approx(80.0) and part.interval(3)[0] == pytest.approx(low)


def test_samples_stay_in_the_widened_interval() -> None:
    """Inverse-CDF samples lie inside the block's widened interval."""
    part = NoisePartition(ModelConfig())
    gen = torch.Generator().manual_seed(0)
    for b in range(4):
        lo, hi = part.training_interval(b)
        s = part.sample(b, 2000, gen)
        assert float(s.min()) >= lo * (1 - 1e-5) and float(s.max()) <= hi * (1 + 1e-5)


@pytest.mark.parametrize("m", [1, 2, 3])
def test_schedule_points_fall_in_their_blocks_interval(m: int) -> None:
    """Each block gets m points, descending, inside its own interval, ends included."""
    part = NoisePartition(ModelConfig())
    schedule = part.schedule(m)
    assert [b for b, _ in schedule] == [b for b in range(4) for _ in range(m)]
    sigmas = [s for _, s in schedule]
    assert sigmas == sorted(sigmas, reverse=True)
    assert sigmas[0] == 80.0 and sigmas[-1] == ModelConfig().sigma_min
    for b, s in schedule:
        lo, hi = part.interval(b)
        assert lo - 1e-9 <= s <= hi + 1e-9


def test_edm_scalings_at_sigma_one() -> None:
    """c_skip, c_out, c_in and lambda at sigma = 1 match the table of §6."""
    c_skip, c_out, c_in, _ = edm_scalings(torch.tensor([1.0]), 0.5)
    assert float(c_skip) == pytest.approx(0.2)
    assert float(c_out) == pytest.approx(0.447, abs=1e-3)
    assert float(c_in) == pytest.approx(0.894, abs=1e-3)
    assert float(loss_weight(torch.tensor([1.0]), 0.5)) == pytest.approx(5.0)
