"""`VideoTask`: autoregressive video diffusion with LaCT memory (LACT_SPEC.md §4).

The model (:class:`lact_app.models.video.VideoDiffusionModel`) holds the network, the flow-matching
loss and the sampler; this task maps batches ``{"video": [B, F, 3, H, W], ("cond")}`` to them.

Metrics: ``train/loss`` (the training objective); ``val/loss`` and ``test/loss``, the unweighted
flow-matching loss at the fixed timesteps ``eval_timesteps`` with deterministic noise (plus
``…/loss_t0.50`` per timestep); in ``test`` also continuation — given the first ``context_frames``
frames (a datamodule argument) the model generates the rest of the clip, scored by PSNR/SSIM per
future frame (``test_continuation.json`` in the log folder) and by FVD when a local I3D is given,
next to trivial baselines scored the same way on the same frames: ``test/baseline/copy_last_psnr``
/ ``_ssim`` (every future frame = the last context frame) and ``test/baseline/mean_context_psnr`` /
``_ssim`` (every future frame = the mean context frame).
``predict`` writes an mp4 and a GIF per clip into ``<log_dir>/predictions/``; TensorBoard gets
generated clips as GIFs every ``sample_every_n_steps`` steps and a continuation GIF per validation.
Each validation also samples one batch of clips and logs their high-frequency and motion energies
relative to the validation clips' (``val/sample_hf_ratio``, ``val/sample_motion_ratio``, see
:class:`~tasks.video_metrics.SampleStatistics`): both ≈ 1 for samples that look like the data,
far above 1 when the samples are noise.
Sampling uses the EMA weights when an :class:`~lact_app.callbacks.ema.EMA` callback is configured.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lact_app.media import encode_gif, encode_mp4, to_uint8_frames
from lact_app.models.codec import FrameCodec
from lact_app.models.video import VIDEO_BACKBONE, VIDEO_FAST_WEIGHT, VideoDiffusionModel
from lact_app.nn import BackboneConfig, FastWeightConfig
from tasks.base import LaCTTask
from tasks.video_metrics import (
    BASELINES,
    ContinuationCurve,
    FrechetVideoDistance,
    SampleStatistics,
    baseline_continuations,
)

#: Seed of the deterministic evaluation noise (offset by batch index and rank).
EVAL_SEED = 1234
GIF_FPS = 8.0


class VideoTask(LaCTTask):
    """Chunk-wise flow-matching video diffusion (model arguments: see ``VideoDiffusionModel``).

    Args:
        backbone: width, blocks, attention heads, MLP ratio and 3-D RoPE base.
        patch_size: p, tokens are p×p patches of each (latent) frame.
        chunk_frames: (latent) frames per autoregressive chunk.
        memory: ``"lact"``, ``"full_attention"`` (growing KV cache over all previous chunks) or
            ``"none"`` (chunk-local attention only).
        fast_weight: the LaCT layers' knobs (``heads``, ``inter_multi``, ``base_lr`` …; ``chunk``
            stays null: the clean frame chunks are the update chunks); default: the reference's.
        clean_context: keys of the preceding clean chunk a noisy chunk attends to; None: all.
        codec: frame codec (``class_path`` of a ``lact_app.models.codec.FrameCodec``); None: pixels.
        cond: ``"none"``, ``"class"`` (labels, ``cond_key: cls`` in the data) or ``"embedding"``.
        num_classes: classes for class conditioning.
        cond_dim: width of precomputed condition embeddings.
        cond_dropout: probability of training with the null condition (classifier-free guidance).
        shift: training timestep shift.
        sample_shift: sampling timestep shift; None: ``shift``.
        logit_normal_weighting: logit-normal loss weights of the unshifted timestep draw.
        eval_timesteps: fixed timesteps of ``val/loss`` and ``test/loss``.
        sampling_steps: Euler steps per chunk when sampling.
        cfg_scale: classifier-free guidance scale when sampling (1: off).
        sample_every_n_steps: log generated clips to TensorBoard every this many steps (0: never).
        sample_frames: frames of those clips; None: the datamodule's ``num_frames``.
        frame_size: (H, W) of generated frames without context; None: the datamodule's.
        fvd_detector: local TorchScript I3D file for FVD in ``test``; None: no FVD.
        **kwargs: optimisation, sharding and compile options of ``LaCTTask``.
    """

    def __init__(
        self,
        backbone: BackboneConfig = VIDEO_BACKBONE,
        patch_size: int = 4,
        chunk_frames: int = 4,
        memory: str = "lact",
        fast_weight: FastWeightConfig = VIDEO_FAST_WEIGHT,
        clean_context: int | None = None,
        codec: FrameCodec | None = None,
        cond: str = "none",
        num_classes: int = 0,
        cond_dim: int = 0,
        cond_dropout: float = 0.1,
        shift: float = 2.0,
        sample_shift: float | None = None,
        logit_normal_weighting: bool = True,
        eval_timesteps: tuple[float, ...] = (0.25, 0.5, 0.75),
        sampling_steps: int = 20,
        cfg_scale: float = 1.0,
        sample_every_n_steps: int = 200,
        sample_frames: int | None = None,
        frame_size: tuple[int, int] | None = None,
        fvd_detector: str | None = None,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        self.model = VideoDiffusionModel(
            backbone=BackboneConfig.coerce(backbone), patch_size=patch_size, chunk_frames=chunk_frames,
            memory=memory, fast_weight=FastWeightConfig.coerce(fast_weight), clean_context=clean_context,
            codec=codec, cond=cond, num_classes=num_classes,
            cond_dim=cond_dim, cond_dropout=cond_dropout, shift=shift, sample_shift=sample_shift,
            logit_normal_weighting=logit_normal_weighting,
        )  # fmt: skip
        self.continuation = ContinuationCurve()
        self.baselines = nn.ModuleDict({name: ContinuationCurve() for name in BASELINES})  # no persistent state
        self.fvd = FrechetVideoDistance(fvd_detector)
        self.sample_stats = SampleStatistics()

    # -- LaCTTask hooks ---------------------------------------------------------------------------

    def blocks(self) -> list[nn.Module]:
        return list(self.model.blocks)

    # -- training and evaluation ------------------------------------------------------------------

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        video = batch["video"]
        loss = self.model.training_loss(video, batch.get("cond"))
        self.log("train/loss", loss, prog_bar=True, batch_size=video.size(0))
        self.log_throughput("train", video.size(0) * video.size(1), "frames")
        return loss

    def fixed_timestep_losses(self, batch: dict, batch_idx: int, stage: str) -> None:
        """Logs the flow-matching loss at each of ``eval_timesteps`` (same t for every chunk), and its mean."""
        x0 = self.model.codec.encode(batch["video"])
        B, n = x0.size(0), x0.size(1) // self.model.chunk_frames
        generator = torch.Generator(x0.device).manual_seed(EVAL_SEED + 1000 * batch_idx + self.global_rank)
        noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        losses = []
        for t in self.hparams.eval_timesteps:
            loss = self.model.flow_matching_loss(x0, x0.new_full((B, n), t), noise, batch.get("cond"))
            self.log(f"{stage}/loss_t{t:.2f}", loss, sync_dist=True, batch_size=B)
            losses.append(loss)
        self.log(f"{stage}/loss", torch.stack(losses).mean(), prog_bar=True, sync_dist=True, batch_size=B)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self.fixed_timestep_losses(batch, batch_idx, "val")
        if self.trainer.sanity_checking:
            return
        video, cond = batch["video"], batch.get("cond")
        self.sample_stats.update(video, real=True)
        if batch_idx == 0:
            generated = self.continue_clips(video[:2], cond, batch_idx)
            self.log_video("val/continuation", torch.cat([video[:2], generated], dim=-1), GIF_FPS)
            samples = self.generate(video.size(1), video.size(0), cond=cond, seed=EVAL_SEED)
            self.sample_stats.update(samples, real=False)

    def on_validation_epoch_end(self) -> None:
        """Logs ``val/sample_hf_ratio`` and ``val/sample_motion_ratio``: samples vs the validation clips."""
        if not self.trainer.sanity_checking:
            for name, value in self.sample_stats.compute().items():  # computed from states summed over ranks
                self.log(f"val/sample_{name}", value, sync_dist=False)
        self.sample_stats.reset()

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self.fixed_timestep_losses(batch, batch_idx, "test")
        video, c = batch["video"], self.context_frames()
        generated = self.continue_clips(video, batch.get("cond"), batch_idx)
        self.continuation.update(generated[:, c:], video[:, c:])
        for name, frames in baseline_continuations(video[:, :c], video.size(1) - c).items():
            self.baselines[name].update(frames, video[:, c:])
        if self.fvd.available:
            self.fvd.update(video, generated)

    def on_test_epoch_start(self) -> None:
        # Sized here, so that a rank without a test batch still holds a curve to reduce.
        future = self.trainer.datamodule.num_frames - self.context_frames()
        for curve in (self.continuation, *self.baselines.values()):
            curve.set_frames(future)
        self.fvd.reset()

    def on_test_epoch_end(self) -> None:
        result = self.continuation.compute()  # computed from the states summed over ranks
        self.log("test/continuation_psnr", result["psnr"], sync_dist=False)
        self.log("test/continuation_ssim", result["ssim"], sync_dist=False)
        result["baselines"] = {name: curve.compute() for name, curve in self.baselines.items()}
        for name, baseline in result["baselines"].items():
            self.log(f"test/baseline/{name}_psnr", baseline["psnr"], sync_dist=False)
            self.log(f"test/baseline/{name}_ssim", baseline["ssim"], sync_dist=False)
        if self.fvd.available:
            result["fvd"] = self.fvd.compute()
            self.log("test/fvd", result["fvd"])
        folder = self.trainer.log_dir or self.trainer.default_root_dir  # collective: every rank calls it
        if self.trainer.is_global_zero:
            result["context_frames"] = self.context_frames()
            Path(folder).mkdir(parents=True, exist_ok=True)
            (Path(folder) / "test_continuation.json").write_text(json.dumps(result, indent=2) + "\n")

    def predict_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        """Continues each clip from its first ``context_frames`` frames (or generates unconditionally
        when they are 0) to ``predict_frames`` frames; writes ``<idx>.mp4`` and ``<idx>.gif``."""
        data, video = self.trainer.datamodule, batch["video"]
        context = video[:, : data.context_frames] if data.context_frames else None
        frames = self.generate(data.predict_frames, video.size(0), context, cond=batch.get("cond"),
                               seed=EVAL_SEED + batch_idx)
        folder = self.predictions_dir()
        for i, clip in enumerate(frames):
            name = f"{batch_idx:04d}_{i:02d}_rank{self.global_rank}"
            (folder / f"{name}.mp4").write_bytes(encode_mp4(to_uint8_frames(clip), GIF_FPS))
            (folder / f"{name}.gif").write_bytes(encode_gif(clip, GIF_FPS)[0])
        return frames

    # -- sampling ---------------------------------------------------------------------------------

    def generate(
        self, num_frames: int, batch_size: int = 1, context: torch.Tensor | None = None, *, use_ema: bool = True,
        **sampling: Any,
    ) -> torch.Tensor:
        """:meth:`VideoDiffusionModel.generate <lact_app.models.video.VideoDiffusionModel.generate>` with
        this task's defaults and the EMA weights when the run kept an EMA (the trainer's callback, or
        the checkpoint's), unless ``use_ema`` is False.  -> [B, num_frames, 3, H, W] in [0, 1].

        ``sampling``: the model's other keyword arguments (``cond``, ``num_steps``, ``cfg_scale``,
        ``seed``, ``frame_size``, ``sample_shift``); unset ones default to this task's
        ``sampling_steps``, ``cfg_scale`` and training ``frame_size``.
        """
        hp = self.hparams
        defaults = {"num_steps": hp.sampling_steps, "cfg_scale": hp.cfg_scale, "frame_size": self.frame_size()}
        with self.inference_weights(use_ema):
            return self.model.generate(num_frames, batch_size, context, **(defaults | sampling))

    def continue_clips(self, video: torch.Tensor, cond: torch.Tensor | None, batch_idx: int) -> torch.Tensor:
        """The clips regenerated from their first ``context_frames`` frames.  -> like ``video``."""
        cond = None if cond is None else cond[: video.size(0)]
        return self.generate(video.size(1), context=video[:, : self.context_frames()], cond=cond,
                             seed=EVAL_SEED + batch_idx)

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        super().on_train_batch_end(outputs, batch, batch_idx)
        every = self.hparams.sample_every_n_steps
        if every and self.global_step % every == 0:  # every rank samples (FSDP gathers), rank 0 logs
            frames = self.hparams.sample_frames or self.trainer.datamodule.num_frames
            self.log_video("samples/generated", self.generate(frames, batch_size=2, seed=EVAL_SEED), GIF_FPS)

    def context_frames(self) -> int:
        """Context of continuation (the datamodule's ``context_frames``, at least one chunk)."""
        c = getattr(self.trainer.datamodule, "context_frames", 0)
        k = self.model.chunk_frames * self.model.codec.temporal_stride
        if c < k or c % k:
            raise ValueError(f"context_frames={c} must be a positive multiple of the chunk ({k} frames)")
        return c

    def setup(self, stage: str) -> None:
        """Records the data's frame size as a hyperparameter, so the checkpoint alone can generate."""
        size = getattr(self.trainer.datamodule, "frame_size", None)
        if self.hparams.frame_size is None and size is not None:
            self.hparams.frame_size = tuple(size)

    def frame_size(self) -> tuple[int, int] | None:
        """(H, W) of frames generated without context (the ``frame_size`` hyperparameter)."""
        return None if self.hparams.frame_size is None else tuple(self.hparams.frame_size)
