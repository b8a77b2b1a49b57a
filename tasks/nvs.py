"""`NVSTask`: novel view synthesis with LaCT (LACT_SPEC.md §2) on top of ``lact_app.models.NVSModel``.

Batches come from ``datamodules.nvs.NVSDataModule``: ``input_images [B, V_in, 3, H, W]`` in [0, 1],
``input_intrinsics [B, V_in, 4]``, ``input_c2w [B, V_in, 4, 4]``, the same for ``target_*``, and
``key`` (scene names); predict batches add ``path_intrinsics`` / ``path_c2w`` (a camera path).

``test`` logs ``test/psnr``, ``test/ssim``, ``test/lpips`` and, on the same target views, the PSNR of
trivial baselines: ``test/baseline/white_psnr`` (an all-white render) and
``test/baseline/mean_input_psnr`` (each target = the mean of its scene's input views).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from lact_app.media import encode_gif, encode_mp4, to_uint8_frames
from lact_app.metrics import LPIPS, ImageMetrics, NVSBaselines, psnr
from lact_app.models.nvs import NVS_BACKBONE, NVS_FAST_WEIGHT, NVSModel
from lact_app.nn import BackboneConfig, FastWeightConfig
from tasks.base import LaCTTask

INPUT_KEYS = ("input_images", "input_intrinsics", "input_c2w")


class NVSTask(LaCTTask):
    """Trains and evaluates an LVSM-style NVS model with a LaCT layer across views.

    Defaults of the model arguments are the reference ``l24_d768_ttt2x`` model.

    Args:
        patch_size: patch size p (image sides must be multiples of it).
        backbone: width, blocks (``depth``), attention ``heads`` (64-dim in the reference) and
            ``mlp_ratio``; ``rope_theta`` null (no positional encoding); default: the reference's.
        memory: cross-view mixer: ``"lact"``, ``"full_attention"`` (attention over all input
            views, LVSM-style) or ``"none"`` (no mixing across views: a camera-only baseline).
        fast_weight: the LaCT layers' knobs (``inter_multi`` 2: ttt2x, 4: ttt4x; ``base_lr``;
            ``use_muon`` with ``ns_steps`` classic Newton–Schulz steps …); default: the reference's.
        qk_norm_eps: eps of the attention's q/k RMSNorms; null: the dtype's machine epsilon (the
            official code's, set by ``python -m tasks.convert nvs``).
        lpips_weight: λ of the LPIPS term of the loss (MSE + λ·LPIPS).
        lpips_start_step: global step from which the LPIPS term is added (reference: 5000).
        lpips_backbone: torchvision VGG16 weights for LPIPS; None: the torch hub cache
            (``vgg16-397923af.pth``); ``"random"``: a random backbone (tests only). Without local
            weights LPIPS is off (one warning, metrics NaN); nothing is ever downloaded.
        render_chunk_views: target views rendered per pass in val/test/predict (bounds memory).
        image_log_every_n_steps: log training input / prediction / target images every N steps.
        video_fps: frame rate of the predicted camera-path GIF and mp4.
        **kwargs: see ``LaCTTask`` (lr, warmup_steps, grad_skip_threshold, …).
    """

    def __init__(
        self,
        patch_size: int = 8,
        backbone: BackboneConfig = NVS_BACKBONE,
        memory: str = "lact",
        fast_weight: FastWeightConfig = NVS_FAST_WEIGHT,
        qk_norm_eps: Optional[float] = 1e-6,
        lpips_weight: float = 1.0,
        lpips_start_step: int = 5000,
        lpips_backbone: str | None = None,
        render_chunk_views: int = 8,
        image_log_every_n_steps: int = 200,
        video_fps: float = 12.0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.model = NVSModel(patch_size=patch_size, backbone=BackboneConfig.coerce(backbone), memory=memory,
                              fast_weight=FastWeightConfig.coerce(fast_weight), qk_norm_eps=qk_norm_eps)
        self.lpips = LPIPS(lpips_backbone)  # a plain object: never in checkpoints or optimizers
        self.val_metrics = ImageMetrics(self.lpips)
        self.test_metrics = ImageMetrics(self.lpips)
        self.test_baselines = NVSBaselines()

    def blocks(self) -> list[nn.Module]:
        return list(self.model.blocks)

    def fsdp_forward_methods(self) -> tuple[str, ...]:
        return ("reconstruct", "render")

    def forward(self, *inputs: torch.Tensor, **named: torch.Tensor) -> torch.Tensor:
        """The model's joint render, :meth:`NVSModel.forward <lact_app.models.nvs.NVSModel.forward>`
        (input images, intrinsics and c2w, target intrinsics and c2w -> target images)."""
        return self.model(*inputs, **named)

    def render(self, batch: dict, intrinsics: torch.Tensor, c2w: torch.Tensor) -> torch.Tensor:
        """Reconstructs the batch's input views once, then renders cameras [B, V, ·] in chunks."""
        with self.inference_weights():
            states = self.model.reconstruct(*(batch[k] for k in INPUT_KEYS))
            size = tuple(batch["input_images"].shape[-2:])
            return self.model.render(states, intrinsics, c2w, size, chunk_views=self.hparams.render_chunk_views)

    # -- training ---------------------------------------------------------------------------------

    def lpips_active(self) -> bool:
        hp = self.hparams
        return hp.lpips_weight > 0 and self.global_step >= hp.lpips_start_step and self.lpips.available

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        pred = self(*(batch[k] for k in INPUT_KEYS), batch["target_intrinsics"], batch["target_c2w"])
        target = batch["target_images"]
        mse = F.mse_loss(pred, target)
        loss = mse
        if self.lpips_active():
            lp = self.lpips(pred.flatten(0, 1), target.flatten(0, 1)).mean()
            loss = loss + self.hparams.lpips_weight * lp
            self.log("train/lpips", lp, on_step=True, on_epoch=False)
        n = target.size(0)
        self.log("train/loss", loss, prog_bar=True, batch_size=n)
        self.log("train/mse", mse, batch_size=n)
        self.log("train/psnr", psnr(pred.detach().flatten(0, 1), target.flatten(0, 1)).mean(), prog_bar=True,
                 batch_size=n)  # fmt: skip
        self.log_throughput("train", target.size(0) * target.size(1), "views")
        if self.global_step % self.hparams.image_log_every_n_steps == 0:
            self.log_views("train", batch, pred)
        return loss

    def log_views(self, stage: str, batch: dict, pred: torch.Tensor) -> None:
        """TensorBoard grids of the first scene: inputs, predictions, ground truth."""
        self.log_images(f"{stage}/inputs", batch["input_images"][0])
        self.log_images(f"{stage}/predictions", pred[0])
        self.log_images(f"{stage}/targets", batch["target_images"][0])

    # -- evaluation -------------------------------------------------------------------------------

    def _eval_step(self, batch: dict, metrics: ImageMetrics) -> torch.Tensor:
        pred = self.render(batch, batch["target_intrinsics"], batch["target_c2w"])
        metrics.update(pred.flatten(0, 1), batch["target_images"].flatten(0, 1))
        return pred

    def _log_metrics(self, stage: str, metrics: ImageMetrics | NVSBaselines) -> None:
        values = metrics.compute()  # torchmetrics syncs across ranks
        self.log_dict({f"{stage}/{k}": v for k, v in values.items()}, prog_bar=stage == "val")
        metrics.reset()

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        pred = self._eval_step(batch, self.val_metrics)
        if batch_idx == 0:
            self.log_views("val", batch, pred)

    def on_validation_epoch_end(self) -> None:
        self._log_metrics("val", self.val_metrics)

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, self.test_metrics)
        self.test_baselines.update(batch["input_images"], batch["target_images"])

    def on_test_epoch_end(self) -> None:
        self._log_metrics("test", self.test_metrics)
        self._log_metrics("test/baseline", self.test_baselines)

    # -- prediction -------------------------------------------------------------------------------

    def predict_step(self, batch: dict, batch_idx: int) -> list[str]:
        """Renders each scene's camera path from its input views; writes ``<key>.gif`` and ``<key>.mp4``."""
        videos = self.render(batch, batch["path_intrinsics"], batch["path_c2w"])
        out, fps, written = self.predictions_dir(), self.hparams.video_fps, []
        for key, video in zip(batch["key"], videos):
            (out / f"{key}.gif").write_bytes(encode_gif(video, fps)[0])
            (out / f"{key}.mp4").write_bytes(encode_mp4(to_uint8_frames(video), fps))
            written.append(str(out / f"{key}.mp4"))
        return written
