"""PSNR per image (then averaged), SSIM and LPIPS over an evaluation, DDP-correct (torchmetrics)."""

from __future__ import annotations

import torch
from torch import nn
from torchmetrics import MeanMetric
from torchmetrics.image import PeakSignalNoiseRatio, StructuralSimilarityIndexMeasure

from .lpips import LPIPS


def psnr(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """PSNR of each image in [0, 1].  pred, target: [N, C, H, W] -> [N]."""
    mse = (pred.float() - target.float()).square().flatten(1).mean(1)
    return -10 * torch.log10(mse.clamp_min(1e-10))


class ImageMetrics(nn.Module):
    """Accumulates PSNR (per image, then the mean), SSIM and LPIPS over batches of images.

    Args:
        lpips: the LPIPS metric to use (reported as NaN when unavailable), or None to skip it.
    """

    def __init__(self, lpips: LPIPS | None = None):
        super().__init__()
        self.psnr = PeakSignalNoiseRatio(data_range=1.0, reduction="elementwise_mean", dim=(1, 2, 3))
        self.ssim = StructuralSimilarityIndexMeasure(data_range=1.0)
        self.lpips_mean = MeanMetric(nan_strategy="ignore")
        self.lpips_fn = lpips

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """pred, target: [N, 3, H, W] in [0, 1]."""
        pred, target = pred.float().clamp(0, 1), target.float()
        self.psnr.update(pred, target)
        self.ssim.update(pred, target)
        if self.lpips_fn is not None and self.lpips_fn.available:
            with torch.no_grad():
                self.lpips_mean.update(self.lpips_fn(pred, target))

    def compute(self) -> dict[str, torch.Tensor]:
        """{"psnr", "ssim", "lpips"} (lpips NaN when unavailable or skipped)."""
        out = {"psnr": self.psnr.compute(), "ssim": self.ssim.compute()}
        has_lpips = self.lpips_fn is not None and self.lpips_fn.available
        out["lpips"] = self.lpips_mean.compute() if has_lpips else torch.tensor(float("nan"))
        return out

    def reset(self) -> None:
        for metric in (self.psnr, self.ssim, self.lpips_mean):
            metric.reset()
