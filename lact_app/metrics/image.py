"""PSNR per image (then averaged), SSIM and LPIPS over an evaluation, DDP-correct (torchmetrics), and the
PSNR of trivial NVS baselines scored the same way."""

from __future__ import annotations

from typing import Any

import torch
from torchmetrics import Metric, MetricCollection
from torchmetrics.image import PeakSignalNoiseRatio, StructuralSimilarityIndexMeasure

from .lpips import LPIPS


def psnr(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """PSNR of each image in [0, 1].  pred, target: [N, C, H, W] -> [N]."""
    mse = (pred.float() - target.float()).square().flatten(1).mean(1)
    return -10 * torch.log10(mse.clamp_min(1e-10))


class MeanLPIPS(Metric):
    """Mean LPIPS distance over images; NaN when LPIPS is unavailable (or not given).

    Args:
        lpips: the LPIPS network (a plain object: it stays out of checkpoints), or None.
        **kwargs: keyword arguments of ``torchmetrics.Metric``.
    """

    full_state_update = False

    def __init__(self, lpips: LPIPS | None = None, **kwargs: Any):
        super().__init__(**kwargs)
        self.lpips = lpips
        self.add_state("total", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    @property
    def available(self) -> bool:
        return self.lpips is not None and self.lpips.available

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """pred, target: [N, 3, H, W] in [0, 1]."""
        if not self.available:
            return
        with torch.no_grad():
            distance = self.lpips(pred, target).double()
        distance = distance[~distance.isnan()]
        # out of place: states reset under inference mode must not be updated in place under no_grad
        self.total = self.total + distance.sum()
        self.count = self.count + distance.numel()

    def compute(self) -> torch.Tensor:
        if not self.available:
            return torch.tensor(float("nan"))
        return (self.total / self.count).float()


class ImageMetrics(MetricCollection):
    """PSNR (per image, then the mean), SSIM and LPIPS over batches of images:
    ``compute()`` -> {"psnr", "ssim", "lpips"} (lpips NaN when unavailable or skipped).

    Args:
        lpips: the LPIPS network to use (reported as NaN when unavailable), or None to skip it.
    """

    def __init__(self, lpips: LPIPS | None = None):
        super().__init__({
            "psnr": per_image_psnr(),
            "ssim": StructuralSimilarityIndexMeasure(data_range=1.0),
            "lpips": MeanLPIPS(lpips),
        }, compute_groups=False)

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """pred, target: [N, 3, H, W] in [0, 1] (predictions are clamped to it)."""
        super().update(pred.float().clamp(0, 1), target.float())


def per_image_psnr() -> PeakSignalNoiseRatio:
    """PSNR of each image, then the mean over all images (all ranks'): ``ImageMetrics``' PSNR."""
    return PeakSignalNoiseRatio(data_range=1.0, reduction="elementwise_mean", dim=(1, 2, 3))


class NVSBaselines(MetricCollection):
    """PSNR of trivial renders of the target views, per image then averaged like ``ImageMetrics``:
    ``compute()`` -> {"white_psnr": an all-white render of each target, "mean_input_psnr": each
    target = the mean of its scene's input views}."""

    def __init__(self):
        super().__init__({"white_psnr": per_image_psnr(), "mean_input_psnr": per_image_psnr()},
                         compute_groups=False)

    def update(self, inputs: torch.Tensor, targets: torch.Tensor) -> None:
        """inputs: [B, V_in, 3, H, W], targets: [B, V, 3, H, W], in [0, 1]."""
        target = targets.float().flatten(0, 1)
        mean_input = inputs.float().mean(1, keepdim=True).expand_as(targets).flatten(0, 1)
        self["white_psnr"].update(torch.ones_like(target), target)
        self["mean_input_psnr"].update(mean_input, target)
