"""Video metrics: per-future-frame PSNR/SSIM curves of continuation, a pluggable FVD, and the
sample statistics that tell samples from noise (high-frequency energy and motion vs real clips).

Both are ``torchmetrics.Metric`` subclasses whose states are sums (not per-sample lists), so a
distributed test reduces them exactly with one all-reduce (``dist_reduce_fx="sum"``) when
``compute`` is called. FVD needs an I3D feature extractor as a local TorchScript file (e.g.
StyleGAN-V's ``i3d_torchscript.pt``); nothing is ever downloaded — without the file FVD is skipped.
"""

from __future__ import annotations

import logging
import math
import os
from typing import Any

import torch
import torch.nn.functional as F
from torchmetrics import Metric
from torchmetrics.functional.image import structural_similarity_index_measure

from lact_app.metrics import psnr

log = logging.getLogger(__name__)

#: Shape [T, H, W] of the blank clip run through the detector once to learn its feature width
#: (16 frames at 224²: the I3D input of StyleGAN-V's FVD).
PROBE_CLIP = (16, 224, 224)


class ContinuationCurve(Metric):
    """PSNR and SSIM of generated vs real frames, per future frame index, summed over clips.

    Every rank must hold curves of the same length to be reduced, even one that saw no clip:
    set it with ``frames`` or ``set_frames`` before the first update.

    Args:
        frames: T, the number of future frames of each clip.
        **kwargs: keyword arguments of ``torchmetrics.Metric``.
    """

    full_state_update = False

    def __init__(self, frames: int = 0, **kwargs: Any):
        super().__init__(**kwargs)
        self.add_state("clips", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.set_frames(frames)

    def set_frames(self, frames: int) -> None:
        """Sets the curves' length T and resets the metric."""
        self.add_state("sums", torch.zeros(2, frames, dtype=torch.float64, device=self.device),
                       dist_reduce_fx="sum")  # [2, T]: PSNR, SSIM
        self.reset()

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """pred, target: [B, T, 3, H, W] in [0, 1] (the generated and the real future frames)."""
        B, T = pred.shape[:2]
        if T != self.sums.size(1):
            raise ValueError(f"clips have {T} future frames, the curve {self.sums.size(1)} (see set_frames)")
        flat_pred, flat_target = pred.float().flatten(0, 1).clamp(0, 1), target.float().flatten(0, 1)
        p = psnr(flat_pred, flat_target).view(B, T).sum(0)
        s = structural_similarity_index_measure(flat_pred, flat_target, data_range=1.0, reduction="none")
        # out of place: states reset under inference mode must not be updated in place under no_grad
        self.sums = self.sums + torch.stack([p, s.view(B, T).sum(0)]).double()
        self.clips = self.clips + B

    def compute(self) -> dict:
        """Over all ranks' clips.  -> JSON-ready {clips, psnr, ssim, psnr_per_frame, ssim_per_frame}."""
        curve = (self.sums / self.clips.clamp(min=1)).cpu()
        return {"clips": int(self.clips), "psnr": float(curve[0].mean()), "ssim": float(curve[1].mean()),
                "psnr_per_frame": curve[0].tolist(), "ssim_per_frame": curve[1].tolist()}


#: Trivial continuations scored like the model's (``test/baseline/<name>_psnr`` / ``_ssim``).
BASELINES = ("copy_last", "mean_context")


def baseline_continuations(context: torch.Tensor, future_frames: int) -> dict[str, torch.Tensor]:
    """The trivial continuations of clips from their context frames [B, C, 3, H, W]:
    ``copy_last`` (every future frame = the last context frame) and ``mean_context`` (every future
    frame = the mean of the context frames).  -> {name: [B, future_frames, 3, H, W]}."""
    shape = (context.size(0), future_frames, *context.shape[2:])
    return {"copy_last": context[:, -1:].expand(shape),
            "mean_context": context.float().mean(1, keepdim=True).expand(shape)}


#: The 3×3 Laplacian of high-frequency energy (4-neighbour).
LAPLACIAN = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]])

#: ITU-R BT.601 luma weights of the grey frames.
LUMA = (0.299, 0.587, 0.114)


def grey(video: torch.Tensor) -> torch.Tensor:
    """Luma of RGB frames.  video: [B, T, 3, H, W] in [0, 1] -> [B, T, H, W] fp32."""
    weights = torch.tensor(LUMA, device=video.device).view(3, 1, 1)
    return (video.float().clamp(0, 1) * weights).sum(-3)


def high_frequency_energy(video: torch.Tensor) -> torch.Tensor:
    """Mean |3×3 Laplacian| of the grey frames (valid pixels only) per clip.  video: [B, T, 3, H, W] -> [B].

    Patch noise and leftover diffusion noise raise it far above real frames'; blur lowers it."""
    frames = grey(video)
    lap = F.conv2d(frames.flatten(0, 1)[:, None], LAPLACIAN.to(frames.device)[None, None])
    return lap.abs().view(video.size(0), -1).mean(1)


def motion_energy(video: torch.Tensor) -> torch.Tensor:
    """Mean |frame-to-frame change| of the grey frames per clip.  video: [B, T ≥ 2, 3, H, W] -> [B].

    0 for a frozen clip; independent noise per frame raises it far above real clips'."""
    frames = grey(video)
    return (frames[:, 1:] - frames[:, :-1]).abs().flatten(1).mean(1)


class SampleStatistics(Metric):
    """Ratios of generated to real clips' mean high-frequency and motion energies, summed over clips
    and ranks: ``{"hf_ratio", "motion_ratio"}``, both ≈ 1 for samples that look like the data.

    ``update(video, real=...)`` adds clips to the real (True) or the generated (False) set.
    """

    full_state_update = False
    STATS = {"hf": high_frequency_energy, "motion": motion_energy}

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        for key in ("real", "fake"):
            self.add_state(f"{key}_sums", torch.zeros(len(self.STATS), dtype=torch.float64), dist_reduce_fx="sum")
            self.add_state(f"{key}_count", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, video: torch.Tensor, real: bool) -> None:
        """video: [B, T ≥ 2, 3, H, W] in [0, 1]."""
        key = "real" if real else "fake"
        sums = torch.stack([fn(video).sum() for fn in self.STATS.values()]).double()
        # out of place: states reset under inference mode must not be updated in place under no_grad
        setattr(self, f"{key}_sums", getattr(self, f"{key}_sums") + sums)
        setattr(self, f"{key}_count", getattr(self, f"{key}_count") + video.size(0))

    def compute(self) -> dict[str, float]:
        """{"<stat>_ratio": generated mean / real mean} (NaN while either set is empty)."""
        real = self.real_sums / self.real_count
        fake = self.fake_sums / self.fake_count
        return {f"{name}_ratio": float(f / r) for name, f, r in zip(self.STATS, fake, real)}


class I3DFeatures:
    """A local TorchScript video feature extractor, called the StyleGAN-V way:
    ``detector(x, rescale=False, resize=True, return_features=True)`` on ``x: [N, 3, T, H, W]``
    in [−1, 1]. A plain object, not an ``nn.Module``: held by a metric it stays out of
    checkpoints, optimizers, DDP and FSDP.
    """

    def __init__(self, path: str):
        self.detector = torch.jit.load(path, map_location="cpu").eval()

    @torch.no_grad()
    def __call__(self, video: torch.Tensor) -> torch.Tensor:
        """video: [B, T, 3, H, W] in [0, 1] -> features [B, F] in float64."""
        x = video.float().permute(0, 2, 1, 3, 4) * 2 - 1
        self.detector.to(x.device)
        return self.detector(x, rescale=False, resize=True, return_features=True).double()


class FrechetVideoDistance(Metric):
    """FVD from a local TorchScript I3D: Fréchet distance of feature Gaussians (real vs generated).

    States per set (``real`` / ``fake``): the feature sum [F], the sum of outer products [F, F]
    and the clip count. F is learnt once from the detector on a blank clip (as torchmetrics' FID
    does with a custom feature extractor), so every rank's states have the same shape.

    Args:
        detector_path: path of the TorchScript file (see ``I3DFeatures``); None or missing: FVD is
            unavailable.
        **kwargs: keyword arguments of ``torchmetrics.Metric``.
    """

    full_state_update = False

    def __init__(self, detector_path: str | None, **kwargs: Any):
        super().__init__(**kwargs)
        self.features = None
        if detector_path and os.path.isfile(os.path.expanduser(detector_path)):
            self.features = I3DFeatures(os.path.expanduser(detector_path))
        elif detector_path:
            log.warning("FVD detector %s not found: FVD is skipped (nothing is downloaded)", detector_path)
        dim = self.features(torch.zeros(1, PROBE_CLIP[0], 3, *PROBE_CLIP[1:])).size(1) if self.available else 0
        for key in ("real", "fake"):
            self.add_state(f"{key}_sum", torch.zeros(dim, dtype=torch.float64), dist_reduce_fx="sum")
            self.add_state(f"{key}_outer", torch.zeros(dim, dim, dtype=torch.float64), dist_reduce_fx="sum")
            self.add_state(f"{key}_count", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    @property
    def available(self) -> bool:
        return self.features is not None

    def update(self, real: torch.Tensor, fake: torch.Tensor) -> None:
        """real, fake: [B, T, 3, H, W] in [0, 1]."""
        for key, video in (("real", real), ("fake", fake)):
            f = self.features(video)
            # out of place: states reset under inference mode must not be updated in place under no_grad
            setattr(self, f"{key}_sum", getattr(self, f"{key}_sum") + f.sum(0))
            setattr(self, f"{key}_outer", getattr(self, f"{key}_outer") + f.T @ f)
            setattr(self, f"{key}_count", getattr(self, f"{key}_count") + f.size(0))

    def compute(self) -> float:
        """FVD over all ranks' clips (NaN with fewer than two clips in a set)."""
        moments = [self._gaussian(key) for key in ("real", "fake")]
        if any(m is None for m in moments):
            return math.nan
        (mu1, cov1), (mu2, cov2) = moments
        return float((mu1 - mu2).square().sum() + torch.trace(cov1 + cov2) - 2 * trace_sqrt_product(cov1, cov2))

    def _gaussian(self, key: str) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(mean [F], unbiased covariance [F, F]) of a set's features, None below two clips."""
        n = float(getattr(self, f"{key}_count"))
        if n < 2:
            return None
        mean = getattr(self, f"{key}_sum") / n
        return mean, (getattr(self, f"{key}_outer") - n * torch.outer(mean, mean)) / (n - 1)


def trace_sqrt_product(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """tr(√(A·B)) for symmetric PSD A, B, via the eigenvalues of √A·B·√A."""
    vals, vecs = torch.linalg.eigh(a)
    root_a = vecs @ torch.diag(vals.clamp_min(0).sqrt()) @ vecs.T
    return torch.linalg.eigvalsh(root_a @ b @ root_a).clamp_min(0).sqrt().sum()
