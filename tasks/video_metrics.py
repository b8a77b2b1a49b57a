"""Video test metrics: per-future-frame PSNR/SSIM curves of continuation, and a pluggable FVD.

Both keep sums (not per-sample lists) so a distributed test reduces them exactly with one all-reduce.
FVD needs an I3D feature extractor as a local TorchScript file (e.g. StyleGAN-V's
``i3d_torchscript.pt``); nothing is ever downloaded — without the file FVD is skipped.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable

import torch
from torchmetrics.functional.image import structural_similarity_index_measure

from lact_app.metrics import psnr

log = logging.getLogger(__name__)

Reduce = Callable[[torch.Tensor], torch.Tensor]


class ContinuationCurve:
    """PSNR and SSIM of generated vs real frames, per future frame index, summed over clips."""

    def __init__(self):
        self.sums: torch.Tensor | None = None  # [2, T]: PSNR, SSIM
        self.clips = 0

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """pred, target: [B, T, 3, H, W] in [0, 1] (the generated and the real future frames)."""
        B, T = pred.shape[:2]
        flat_pred, flat_target = pred.float().flatten(0, 1).clamp(0, 1), target.float().flatten(0, 1)
        p = psnr(flat_pred, flat_target).view(B, T).sum(0)
        s = structural_similarity_index_measure(flat_pred, flat_target, data_range=1.0, reduction="none")
        sums = torch.stack([p, s.view(B, T).sum(0)])
        self.sums = sums if self.sums is None else self.sums + sums
        self.clips += B

    def compute(self, reduce: Reduce, frames: int) -> dict:
        """Reduced over ranks (``reduce`` sums a tensor over processes).  -> JSON-ready dict."""
        sums = self.sums if self.sums is not None else torch.zeros(2, frames)
        totals = reduce(torch.cat([sums.flatten(), torch.tensor([float(self.clips)], device=sums.device)]))
        clips = max(1.0, float(totals[-1]))
        curve = (totals[:-1].view(2, -1) / clips).cpu()
        return {"clips": int(totals[-1]), "psnr": float(curve[0].mean()), "ssim": float(curve[1].mean()),
                "psnr_per_frame": curve[0].tolist(), "ssim_per_frame": curve[1].tolist()}


class FrechetVideoDistance:
    """FVD from a local TorchScript I3D: Fréchet distance of feature Gaussians (real vs generated).

    The detector is called as ``detector(x, rescale=False, resize=True, return_features=True)`` on
    ``x: [N, 3, T, H, W]`` in [−1, 1] (StyleGAN-V's ``i3d_torchscript.pt`` convention).

    Args:
        detector_path: path of the TorchScript file; None or missing: FVD is unavailable.
    """

    def __init__(self, detector_path: str | None):
        self.detector = None
        if detector_path and os.path.isfile(os.path.expanduser(detector_path)):
            self.detector = torch.jit.load(os.path.expanduser(detector_path), map_location="cpu").eval()
        elif detector_path:
            log.warning("FVD detector %s not found: FVD is skipped (nothing is downloaded)", detector_path)
        self.stats: dict[str, torch.Tensor | None] = {"real": None, "fake": None}

    @property
    def available(self) -> bool:
        return self.detector is not None

    @torch.no_grad()
    def update(self, real: torch.Tensor, fake: torch.Tensor) -> None:
        """real, fake: [B, T, 3, H, W] in [0, 1]."""
        for key, video in (("real", real), ("fake", fake)):
            x = video.float().permute(0, 2, 1, 3, 4) * 2 - 1
            self.detector.to(x.device)
            f = self.detector(x, rescale=False, resize=True, return_features=True).double()
            stats = torch.cat([f.sum(0), (f.T @ f).flatten(), f.new_tensor([f.size(0)])])
            self.stats[key] = stats if self.stats[key] is None else self.stats[key] + stats

    def compute(self, reduce: Reduce) -> float:
        """FVD over all ranks' clips (NaN with fewer than two clips)."""
        moments = [self._gaussian(reduce(self.stats[k])) for k in ("real", "fake")]
        if any(m is None for m in moments):
            return math.nan
        (mu1, cov1), (mu2, cov2) = moments
        return float((mu1 - mu2).square().sum() + torch.trace(cov1 + cov2) - 2 * trace_sqrt_product(cov1, cov2))

    @staticmethod
    def _gaussian(stats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        n = float(stats[-1])
        if n < 2:
            return None
        dim = int((math.sqrt(1 + 4 * (stats.numel() - 1)) - 1) / 2)
        mean = stats[:dim] / n
        second = stats[dim:dim + dim * dim].view(dim, dim)
        return mean, (second - n * torch.outer(mean, mean)) / (n - 1)


def trace_sqrt_product(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """tr(√(A·B)) for symmetric PSD A, B, via the eigenvalues of √A·B·√A."""
    vals, vecs = torch.linalg.eigh(a)
    root_a = vecs @ torch.diag(vals.clamp_min(0).sqrt()) @ vecs.T
    return torch.linalg.eigvalsh(root_a @ b @ root_a).clamp_min(0).sqrt().sum()
