"""Video test metrics. FVD plumbing with a stand-in TorchScript detector (real I3D weights are
never downloaded): the Fréchet distance against scipy's matrix square root, zero for identical
sets, reduction over ranks (torchmetrics' sync, with a simulated second rank), and a missing
detector reported unavailable. The continuation curve: per-frame PSNR/SSIM, reduced over ranks."""

import logging
import math

import numpy as np
import pytest
import scipy.linalg
import torch
from torch import nn

from lact_app.metrics import psnr
from tasks.video_metrics import ContinuationCurve, FrechetVideoDistance, baseline_continuations


class PooledFeatures(nn.Module):
    """A tiny "I3D": per-channel mean and mean square over (T, H, W), mixed by a fixed matrix.
    Same call convention as StyleGAN-V's ``i3d_torchscript.pt``."""

    def __init__(self):
        super().__init__()
        self.register_buffer("mix", torch.randn(6, 6, generator=torch.Generator().manual_seed(0)))

    def forward(self, x: torch.Tensor, rescale: bool, resize: bool, return_features: bool) -> torch.Tensor:
        pooled = torch.cat([x.mean(dim=(2, 3, 4)), x.square().mean(dim=(2, 3, 4))], dim=1)
        return pooled @ self.mix


@pytest.fixture
def detector_path(tmp_path):
    path = tmp_path / "i3d_torchscript.pt"
    torch.jit.script(PooledFeatures()).save(str(path))
    return str(path)


def frechet_distance_scipy(f1: np.ndarray, f2: np.ndarray) -> float:
    """The textbook formula: |μ1 − μ2|² + tr(Σ1 + Σ2 − 2 (Σ1 Σ2)^½)."""
    mu1, mu2 = f1.mean(0), f2.mean(0)
    c1, c2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
    root = scipy.linalg.sqrtm(c1 @ c2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(c1 + c2 - 2 * root))


def features(video: torch.Tensor) -> np.ndarray:
    """What the metric feeds the detector: [B, T, 3, H, W] in [0, 1] -> [B, 6]."""
    x = video.permute(0, 2, 1, 3, 4).double() * 2 - 1
    return PooledFeatures().double()(x, False, True, True).detach().numpy()


def two_ranks(make):
    """Two metrics ``make(**kwargs)``; the first one's sync gathers each of its states together with
    the second one's copy (what torchmetrics' all-gather over two ranks returns), then sums them."""
    def gather(state: torch.Tensor, group=None) -> list[torch.Tensor]:
        name = next(n for n, value in rank0.metric_state.items() if value is state)
        return [state, getattr(rank1, name)]

    rank0, rank1 = make(dist_sync_fn=gather, distributed_available_fn=lambda: True), make()
    return rank0, rank1


def test_fvd_matches_the_textbook_formula_over_several_updates(detector_path):
    torch.manual_seed(0)
    real, fake = torch.rand(24, 4, 3, 8, 8), torch.rand(24, 4, 3, 8, 8).pow(2)
    fvd = FrechetVideoDistance(detector_path)
    assert fvd.available
    for r, f in zip(real.split(10), fake.split(10)):  # uneven batches: 10, 10, 4
        fvd.update(r, f)
    expected = frechet_distance_scipy(features(real), features(fake))
    assert fvd.compute() == pytest.approx(expected, rel=1e-4)
    assert expected > 0.1


def test_fvd_of_identical_sets_is_zero_and_reduction_sums_ranks(detector_path):
    torch.manual_seed(1)
    video = torch.rand(12, 4, 3, 8, 8)
    fvd = FrechetVideoDistance(detector_path)
    fvd.update(video, video)
    assert fvd.compute() == pytest.approx(0.0, abs=1e-6)
    # Two ranks holding half the clips each: torchmetrics' sync gathers rank 0's and rank 1's copy
    # of every state and sums them, which gives the FVD of all clips on one rank.
    fake = torch.rand(12, 4, 3, 8, 8)
    whole = FrechetVideoDistance(detector_path)
    rank0, rank1 = two_ranks(lambda **kwargs: FrechetVideoDistance(detector_path, **kwargs))
    whole.update(video, fake)
    rank0.update(video[:5], fake[:5])
    rank1.update(video[5:], fake[5:])
    assert rank0.compute() == pytest.approx(whole.compute(), rel=1e-6)
    assert float(rank0.real_count) == 5  # the sync is undone after compute: rank 0 keeps its own sums

def test_fvd_needs_two_clips_and_a_local_detector(detector_path, tmp_path, caplog):
    fvd = FrechetVideoDistance(detector_path)
    fvd.update(torch.rand(1, 4, 3, 8, 8), torch.rand(1, 4, 3, 8, 8))
    assert np.isnan(fvd.compute())
    with caplog.at_level(logging.WARNING):
        missing = FrechetVideoDistance(str(tmp_path / "absent.pt"))
    assert not missing.available
    assert f"FVD detector {tmp_path / 'absent.pt'} not found: FVD is skipped (nothing is downloaded)" in caplog.text
    assert not FrechetVideoDistance(None).available


def test_continuation_curve_per_frame_and_over_ranks():
    torch.manual_seed(2)
    real = torch.rand(3, 4, 3, 16, 16)
    fake = (real + 0.1 * torch.randn_like(real)).clamp(0, 1)
    whole = ContinuationCurve(frames=4)
    whole.update(fake, real)
    expected = psnr(fake.flatten(0, 1), real.flatten(0, 1)).view(3, 4).double().mean(0)
    result = whole.compute()
    assert result["clips"] == 3 and len(result["ssim_per_frame"]) == 4
    torch.testing.assert_close(torch.tensor(result["psnr_per_frame"], dtype=torch.float64), expected)
    assert result["psnr"] == pytest.approx(float(expected.mean())) and 0 < result["ssim"] < 1
    # A rank without clips still holds a curve of the same length; the sums over ranks are exact.
    rank0, rank1 = two_ranks(lambda **kwargs: ContinuationCurve(**kwargs))
    for rank in (rank0, rank1):
        rank.set_frames(4)
    rank1.update(fake, real)
    assert rank0.compute() == result
    with pytest.raises(ValueError, match="clips have 4 future frames, the curve 2"):
        ContinuationCurve(frames=2).update(fake, real)


def test_baseline_continuations_have_known_scores():
    """Copy-last on clips whose future is their last context frame is perfect (PSNR at its 1e-10
    MSE floor, 100 dB; SSIM ≈ 1); the mean context frame of context frames 0.2 and 0.6 is 0.4 away
    from 0.6 by 0.2 everywhere: 20·log10(1/0.2) ≈ 13.98 dB."""
    context = torch.stack([torch.full((2, 3, 16, 16), 0.2), torch.full((2, 3, 16, 16), 0.6)], dim=1)
    future = torch.full((2, 5, 3, 16, 16), 0.6)
    baselines = baseline_continuations(context, 5)
    assert set(baselines) == {"copy_last", "mean_context"}
    assert all(b.shape == future.shape for b in baselines.values())
    torch.testing.assert_close(baselines["mean_context"], torch.full_like(future, 0.4))
    scores = {}
    for name, frames in baselines.items():
        curve = ContinuationCurve(frames=5)
        curve.update(frames, future)
        scores[name] = curve.compute()
    assert scores["copy_last"]["psnr"] == pytest.approx(100.0) and scores["copy_last"]["ssim"] == pytest.approx(1.0, abs=1e-3)
    assert scores["mean_context"]["psnr"] == pytest.approx(20 * math.log10(1 / 0.2), rel=1e-5)
    assert scores["mean_context"]["ssim"] < 1.0 and scores["mean_context"]["clips"] == 2
    # a moving clip: copy-last is the exact last context frame, mean-context the frames' average
    torch.manual_seed(0)
    context = torch.rand(3, 4, 3, 8, 8)
    baselines = baseline_continuations(context, 2)
    torch.testing.assert_close(baselines["copy_last"], context[:, 3:].expand(3, 2, 3, 8, 8))
    torch.testing.assert_close(baselines["mean_context"][:, 1], context.mean(1))
