"""Sample statistics of generated video (high-frequency energy, motion, their ratios to real clips)
on hand-made clips with known answers."""

import math

import pytest
import torch

from tasks.video_metrics import SampleStatistics, grey, high_frequency_energy, motion_energy


def checkerboard(low: float, high: float, frames: int = 3, size: int = 8) -> torch.Tensor:
    """A grey checkerboard clip of alternating ``low`` / ``high`` pixels.  -> [1, frames, 3, size, size]."""
    ys, xs = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    board = torch.where((ys + xs) % 2 == 0, high, low)
    return board.expand(1, frames, 3, size, size).clone()


def test_grey_is_bt601_luma():
    red = torch.zeros(1, 1, 3, 2, 2)
    red[:, :, 0] = 1.0
    torch.testing.assert_close(grey(red), torch.full((1, 1, 2, 2), 0.299))
    torch.testing.assert_close(grey(torch.full((1, 1, 3, 2, 2), 0.5)), torch.full((1, 1, 2, 2), 0.5))


def test_high_frequency_energy_known_answers():
    """A 0/1 checkerboard has |Laplacian| = 4 at every pixel (4 opposite neighbours); a 0.25/0.75
    one 2; a constant frame and a linear ramp 0."""
    assert high_frequency_energy(checkerboard(0.0, 1.0)).item() == pytest.approx(4.0)
    assert high_frequency_energy(checkerboard(0.25, 0.75)).item() == pytest.approx(2.0)
    ramp = torch.linspace(0, 1, 8).expand(2, 3, 3, 8, 8)
    torch.testing.assert_close(high_frequency_energy(ramp), torch.zeros(2), atol=1e-6, rtol=0)
    assert high_frequency_energy(torch.full((1, 2, 3, 8, 8), 0.3)).item() == 0.0


def test_motion_energy_known_answers():
    """Frames 0, 0.1, 0.3 change by 0.1 then 0.2 (mean 0.15); a frozen clip does not move."""
    clip = torch.tensor([0.0, 0.1, 0.3]).view(1, 3, 1, 1, 1).expand(1, 3, 3, 4, 4)
    assert motion_energy(clip).item() == pytest.approx(0.15)
    assert motion_energy(checkerboard(0.0, 1.0)).item() == 0.0


def test_sample_statistics_ratios_over_several_updates():
    """Real: a 0/1 checkerboard clip (hf 4) and one flickering 0 ↔ 1 (hf 0, motion 1): mean hf 2,
    motion 0.5. Generated: a 0.25/0.75 checkerboard (hf 2, motion 0) and a 0 ↔ 0.5 flicker
    (hf 0, motion 0.5): hf ratio (2 + 0)/2 / 2 = 0.5, motion ratio 0.25 / 0.5 = 0.5."""
    flicker = torch.tensor([0.0, 1.0, 0.0]).view(1, 3, 1, 1, 1).expand(1, 3, 3, 8, 8)
    stats = SampleStatistics()
    assert all(math.isnan(v) for v in stats.compute().values())
    stats.update(checkerboard(0.0, 1.0), real=True)
    stats.update(flicker, real=True)
    stats.update(torch.cat([checkerboard(0.25, 0.75), flicker * 0.5]), real=False)
    assert stats.compute() == {"hf_ratio": pytest.approx(0.5), "motion_ratio": pytest.approx(0.5)}
