"""`LaCTTask`: what the NVS, LM and video tasks share.

Optimizer and schedule (AdamW, linear warmup, cosine decay), parameter groups, skipping steps on
a bad gradient, FSDP2 sharding per block, activation checkpointing, ``torch.compile``,
throughput / memory logging and media logging.

A subclass builds its plain-PyTorch model as ``self.model`` (from ``lact_app.models``) and
implements ``training_step`` etc.; it may override:

- ``blocks() -> list[nn.Module]``: the repeated blocks to shard / checkpoint / compile one by one
  (default: none; then only ``self.model`` is sharded as a whole).

Parameters that get ``lr × fast_weight_lr_multiplier`` are the same in every task: those of each
:class:`~lact_app.nn.LaCTLayer` except its qkv / output projections (initial fast weights, q/k
affine, lr and momentum heads, output norm and gate).

Checkpoints are self-contained: every init argument is a hyperparameter (configs as plain dicts),
and an EMA kept by :class:`~lact_app.callbacks.ema.EMA` is saved beside the weights
(``ema_state_dict``); ``Task.load_from_checkpoint(path)`` alone restores both, and
:meth:`LaCTTask.inference_weights` (used by ``generate`` / ``render``) puts the EMA in place.

Log keys are ``"{stage}/{metric}"`` (``train/loss``, ``val/psnr``, ``test/bpb``).
"""

from __future__ import annotations

import contextlib
import math
import resource
import time
from pathlib import Path
from typing import Any, Optional

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.trainer.states import TrainerFn
from torch import nn

from lact_app.callbacks.ema import EMA_CHECKPOINT_KEY, EMA_PREFIX, find_ema, swapped_weights
from lact_app.callbacks.faults import RunStopped
from lact_app.callbacks.media import add_gif
from lact_app.checkpointing import checkpoint_activations
from lact_app.nn import BackboneConfig, FastWeightConfig, LaCTLayer
from lact_app.rng import rng_states, set_rng_states

#: Config dataclasses of task arguments, stored in the hyperparameters as dicts of all their fields.
CONFIG_HPARAMS = {"backbone": BackboneConfig, "fast_weight": FastWeightConfig}

#: Top-level checkpoint key of the global RNG states (``lact_app.rng.rng_states``).
RNG_CHECKPOINT_KEY = "rng_states"

class WarmupCosine:
    """LR factor: linear warmup over ``warmup_steps``, then cosine from 1 to ``min_ratio`` at ``total_steps``."""

    def __init__(self, warmup_steps: int, total_steps: int, min_ratio: float = 0.0):
        self.warmup_steps, self.total_steps, self.min_ratio = warmup_steps, total_steps, min_ratio

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        progress = (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps)
        cosine = 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
        return self.min_ratio + (1.0 - self.min_ratio) * cosine


class LaCTTask(pl.LightningModule):
    """Base task: optimization, sharding and logging shared by every LaCT task.

    Args:
        lr: peak learning rate of AdamW.
        weight_decay: AdamW weight decay, applied to parameters with 2 or more dimensions only
            (matrices, embeddings, fast-weight initial values); biases, norm gains and other
            vectors/scalars get none, as in the reference code.
        betas: AdamW betas.
        warmup_steps: steps of linear warmup from ~0 to ``lr``.
        max_steps_for_schedule: step at which the cosine decay reaches ``min_lr_ratio × lr``.
            None: ``trainer.estimated_stepping_batches``.
        min_lr_ratio: final learning rate as a fraction of ``lr``.
        fast_weight_lr_multiplier: learning-rate multiplier for the fast weights' initial values
            (see ``fast_weight_parameter_names``).
        grad_skip_threshold: skip the optimizer step when the global gradient norm exceeds this
            (after ``grad_skip_after`` steps). Steps with a non-finite norm are always skipped.
            None: no threshold.
        grad_skip_after: global step from which ``grad_skip_threshold`` applies.
        max_consecutive_skips: stop the run (:class:`~lact_app.callbacks.faults.RunStopped`)
            when this many steps in a row were skipped. Skipped steps move neither the weights nor
            the optimizer, so the last checkpoint holds those from before the fault. None: never stop.
        compile: ``torch.compile`` each block (see ``blocks``) in place.
        activation_checkpointing: recompute each block's activations in backward.
    """

    def __init__(
        self,
        lr: float = 1e-3,
        weight_decay: float = 0.05,
        betas: tuple[float, float] = (0.9, 0.95),
        warmup_steps: int = 100,
        max_steps_for_schedule: Optional[int] = None,
        min_lr_ratio: float = 0.0,
        fast_weight_lr_multiplier: float = 1.0,
        grad_skip_threshold: Optional[float] = None,
        grad_skip_after: int = 0,
        max_consecutive_skips: Optional[int] = 20,
        compile: bool = False,
        activation_checkpointing: bool = False,
    ):
        super().__init__()
        self.save_hyperparameters()
        for key, config in CONFIG_HPARAMS.items():  # every field, as a plain dict: checkpoints load without the class
            if key in self.hparams:
                self.hparams[key] = config.coerce(self.hparams[key]).to_dict()
        self.skipped_steps, self.consecutive_skips = 0, 0
        self.resumed_rng_states: dict[str, Any] | None = None
        self.loaded_ema: dict[str, torch.Tensor] | None = None
        self._model_configured = False
        self._clocks: dict[str, float] = {}

    # -- hooks for subclasses -----------------------------------------------------------------

    def blocks(self) -> list[nn.Module]:
        """The repeated blocks of ``self.model`` (sharded, checkpointed and compiled one by one)."""
        return []

    def fast_weight_parameter_names(self) -> set[str]:
        """Names (as in ``named_parameters()``) of the fast-weight machinery: every parameter of a
        :class:`~lact_app.nn.LaCTLayer` but its qkv / output projections."""
        return {
            f"{prefix}.{name}" if prefix else name
            for prefix, module in self.named_modules()
            if isinstance(module, LaCTLayer)
            for name, _ in module.fast_parameters()
        }

    def fsdp_forward_methods(self) -> tuple[str, ...]:
        """Methods of ``self.model`` that evaluation calls instead of ``forward`` (rendering,
        generation): under FSDP2 they get the same parameter all-gather hooks as ``forward``."""
        return ()

    # -- optimizer and schedule ---------------------------------------------------------------

    def parameter_groups(self) -> list[dict[str, Any]]:
        """AdamW groups ``decay`` / ``no_decay`` / ``fast_decay`` / ``fast_no_decay`` (empty ones dropped)."""
        fast = self.fast_weight_parameter_names()
        groups: dict[str, list[nn.Parameter]] = {}
        for name, p in self.named_parameters():
            if p.requires_grad:
                key = ("fast_" if name in fast else "") + ("decay" if p.ndim >= 2 else "no_decay")
                groups.setdefault(key, []).append(p)
        hp = self.hparams
        return [
            {"name": key, "params": params,
             "weight_decay": 0.0 if key.endswith("no_decay") else hp.weight_decay,
             "lr": hp.lr * (hp.fast_weight_lr_multiplier if key.startswith("fast_") else 1.0)}
            for key, params in sorted(groups.items())
        ]

    def schedule_total_steps(self) -> int:
        if self.hparams.max_steps_for_schedule is not None:
            return self.hparams.max_steps_for_schedule
        return int(self.trainer.estimated_stepping_batches)

    def configure_optimizers(self):
        hp = self.hparams
        optimizer = torch.optim.AdamW(self.parameter_groups(), lr=hp.lr, betas=tuple(hp.betas))
        factor = WarmupCosine(hp.warmup_steps, self.schedule_total_steps(), hp.min_lr_ratio)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # -- skipping bad steps -------------------------------------------------------------------

    def grad_norm(self) -> torch.Tensor:
        """Global L2 norm of all gradients (full, across FSDP2 shards)."""
        grads = [p.grad for p in self.parameters() if p.grad is not None]
        if not grads:
            return torch.zeros((), device=self.device)
        norm = torch.nn.utils.get_total_norm(grads, norm_type=2.0)
        return norm.full_tensor() if hasattr(norm, "full_tensor") else norm

    def should_skip_step(self, norm: torch.Tensor) -> bool:
        if not torch.isfinite(norm):
            return True
        hp = self.hparams
        return hp.grad_skip_threshold is not None and self.global_step >= hp.grad_skip_after \
            and norm.item() > hp.grad_skip_threshold

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Skips the coming step on a bad gradient by dropping every gradient.

        Lightning calls this after backward and after AMP unscaling, inside the optimizer step.
        AdamW leaves parameters whose ``grad`` is None untouched, state and step count included
        (zeroed gradients would still move its moments); the LR schedule advances as usual. A
        non-finite loss gives non-finite gradients, so it is skipped here too.
        """
        norm = self.grad_norm()
        if self.should_skip_step(norm):
            self.skipped_steps += 1
            self.consecutive_skips += 1
            optimizer.zero_grad(set_to_none=True)
            self.stop_if_diverged(norm)
        else:
            self.consecutive_skips = 0
        self.log("train/grad_norm", norm.float(), on_step=True, on_epoch=False)
        self.log("train/skipped_steps", float(self.skipped_steps), on_step=True, on_epoch=False)

    def stop_if_diverged(self, norm: torch.Tensor) -> None:
        """Raises :class:`RunStopped` after ``max_consecutive_skips`` skipped steps in a row."""
        limit = self.hparams.max_consecutive_skips
        if limit is None or self.consecutive_skips < limit:
            return
        first = self.global_step - self.consecutive_skips + 1
        raise RunStopped(
            f"{self.consecutive_skips} consecutive optimizer steps skipped (steps {first}-{self.global_step}, "
            f"last gradient norm {norm.item():.3g}): the loss or gradient is non-finite or above "
            f"grad_skip_threshold. Skipped steps change neither the weights nor the optimizer, so the "
            f"last checkpoint holds those from before the fault: resume from it (--ckpt_path last), "
            "e.g. with a lower lr or other data, or raise max_consecutive_skips."
        )

    def on_train_start(self) -> None:
        """A resumed fit draws from the checkpoint's RNG states: set here, right before the first
        step, because the set-up between loading and training may draw from the global RNGs."""
        self.follow_this_runs_schedule()
        if self.resumed_rng_states is not None:
            set_rng_states(self.resumed_rng_states)
            self.resumed_rng_states = None

    def follow_this_runs_schedule(self) -> None:
        """Makes a resumed fit follow this run's schedule (e.g. a larger ``max_steps``).

        ``LambdaLR`` saves the fields of its :class:`WarmupCosine` and loading restores them, so
        the first run's ``total_steps`` would win; they are set again from this run's settings,
        and the current learning rates recomputed at the restored step (unchanged when the
        settings are the same).
        """
        hp = self.hparams
        for config in self.trainer.lr_scheduler_configs:
            scheduler = config.scheduler
            factors = getattr(scheduler, "lr_lambdas", [])
            if not all(isinstance(f, WarmupCosine) for f in factors):
                continue
            for factor, group, base_lr in zip(factors, scheduler.optimizer.param_groups, scheduler.base_lrs):
                factor.warmup_steps, factor.total_steps = hp.warmup_steps, self.schedule_total_steps()
                factor.min_ratio = hp.min_lr_ratio
                group["lr"] = base_lr * factor(scheduler.last_epoch)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Saves the skip counts and the global RNG states (dropout masks, diffusion noise): with
        the data stream's position in the loop state, a resumed run repeats the uninterrupted one."""
        checkpoint["skipped_steps"] = self.skipped_steps
        checkpoint["consecutive_skips"] = self.consecutive_skips
        checkpoint[RNG_CHECKPOINT_KEY] = rng_states(include_cuda=True)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Restores the skip counts and the RNG states (set at the start of a resumed fit); keeps the
        checkpoint's EMA weights (``loaded_ema``) for :meth:`inference_weights`; EMA entries
        inside the state dict (a converted distributed checkpoint) are taken out of it so the
        model loads strictly."""
        self.skipped_steps = checkpoint.get("skipped_steps", 0)
        self.consecutive_skips = checkpoint.get("consecutive_skips", 0)
        self.resumed_rng_states = checkpoint.get(RNG_CHECKPOINT_KEY)
        state = checkpoint.get("state_dict", {})
        ema = {k[len(EMA_PREFIX):]: state.pop(k) for k in [k for k in state if k.startswith(EMA_PREFIX)]}
        self.loaded_ema = checkpoint.get(EMA_CHECKPOINT_KEY) or ema or None

    # -- inference ----------------------------------------------------------------------------

    def inference_weights(self, use_ema: bool = True) -> contextlib.AbstractContextManager:
        """The weights to generate / render with, as a context: the EMA of the trainer's
        :class:`~lact_app.callbacks.ema.EMA` callback, else the EMA saved in the loaded checkpoint
        (not while fitting: a run without the callback does not keep that EMA up to date), else
        (or with ``use_ema=False``) the raw weights."""
        if not use_ema:
            return contextlib.nullcontext()
        callback = find_ema(self._trainer)
        if callback is not None:
            return callback.weights(self)
        fitting = self._trainer is not None and self.trainer.state.fn == TrainerFn.FITTING
        return swapped_weights(self, self.loaded_ema) if self.loaded_ema and not fitting else contextlib.nullcontext()

    # -- scale: sharding, checkpointing, compile ----------------------------------------------

    def configure_model(self) -> None:
        """Activation checkpointing, then compile, then FSDP2 per block and on ``self.model``.

        Sharding applies only when a device mesh is set (``ModelParallelStrategy``); metrics and
        other modules outside ``self.model`` stay replicated.
        """
        if self._model_configured:
            return
        self._model_configured = True
        for block in self.blocks():
            if self.hparams.activation_checkpointing:
                checkpoint_activations(block)
            if self.hparams.compile:
                block.compile()
        if self.device_mesh is not None:
            self.shard_model(self.device_mesh)

    def shard_model(self, mesh) -> None:
        """``fully_shard`` each block, then ``self.model``, over the mesh's data-parallel dimension."""
        from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method
        names = mesh.mesh_dim_names or ()
        dp_mesh = mesh["data_parallel"] if "data_parallel" in names else mesh
        for block in self.blocks():
            fully_shard(block, mesh=dp_mesh)
        fully_shard(self.model, mesh=dp_mesh)
        for method in self.fsdp_forward_methods():
            register_fsdp_forward_method(self.model, method)

    # -- logging helpers ------------------------------------------------------------------------

    def log_throughput(self, stage: str, n_items: float, unit: str) -> None:
        """Logs ``{stage}/{unit}_per_s``: ``n_items`` over the time since this stage's previous call."""
        now = time.perf_counter()
        last = self._clocks.get(stage)
        self._clocks[stage] = now
        if last is not None and now > last:
            self.log(f"{stage}/{unit}_per_s", n_items / (now - last), on_step=stage == "train",
                     on_epoch=stage != "train")

    def log_peak_memory(self, stage: str) -> None:
        """Logs ``{stage}/peak_mem_gib``: CUDA max allocated memory, or the process's peak RSS on CPU."""
        if self.device.type == "cuda":
            peak = torch.cuda.max_memory_allocated(self.device)
        else:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
        self.log(f"{stage}/peak_mem_gib", peak / 2**30, on_step=stage == "train",
                 on_epoch=stage != "train")

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.log_peak_memory("train")
        skipped = getattr(self.trainer.datamodule, "skipped_samples", None)
        if skipped is not None:
            self.log("data/skipped_samples", float(skipped), on_step=True, on_epoch=False)

    def tensorboard(self):
        """The TensorBoard ``SummaryWriter`` of the first TensorBoard logger (None without one, or off rank 0)."""
        if self.trainer is None or not self.trainer.is_global_zero:
            return None
        loggers = [lg for lg in self.trainer.loggers if isinstance(lg, TensorBoardLogger)]
        return loggers[0].experiment if loggers else None

    def log_images(self, tag: str, images: torch.Tensor) -> None:
        """Logs ``images``: [N, C, H, W] in [0, 1] at the current global step (rank 0, TensorBoard)."""
        writer = self.tensorboard()
        if writer is not None:
            writer.add_images(tag, images.detach().float().clamp(0, 1).cpu(), self.global_step)

    def log_video(self, tag: str, video: torch.Tensor, fps: float = 8.0) -> None:
        """Logs ``video``: [T, C, H, W] or [N, T, C, H, W] in [0, 1] as an animated GIF (clips side by side)."""
        writer = self.tensorboard()
        if writer is not None:
            add_gif(writer, tag, video, self.global_step, fps)

    def predictions_dir(self) -> Path:
        """``<log_dir>/predictions/`` (created), where ``predict`` writes its outputs."""
        root = self.trainer.log_dir or self.trainer.default_root_dir
        path = Path(root) / "predictions"
        path.mkdir(parents=True, exist_ok=True)
        return path
