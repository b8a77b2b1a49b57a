"""Shard-local exponential moving average of the weights (works under FSDP2, DESIGN.md §8).

Each rank keeps an EMA copy of exactly the parameter shards it owns: under FSDP2 the copies are
DTensors with the parameters' placements, updated through their local tensors (no communication,
1/world_size of the memory). Lightning's weight averaging does not support sharded models.

Checkpoints: in a single-file checkpoint the EMA weights sit beside the model's under the top-level
key ``ema_state_dict`` (so a task loaded from the file alone can sample with them); in a distributed
(DCP) checkpoint they are written next to the model's sharded state dict under keys
``_ema.<name>`` (so every rank saves and loads its own shards, and resharding works) and read back
from ``trainer.ckpt_path``.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn

log = logging.getLogger(__name__)

#: Prefix of the EMA entries inside a distributed checkpoint's ``state_dict``.
EMA_PREFIX = "_ema."

#: Top-level key of the EMA weights in a single-file checkpoint.
EMA_CHECKPOINT_KEY = "ema_state_dict"


def local(t: torch.Tensor) -> torch.Tensor:
    """The local shard of a DTensor (the tensor itself otherwise)."""
    return t.to_local() if hasattr(t, "to_local") else t


def reshard_all(module: nn.Module) -> None:
    """Frees FSDP2's unsharded parameters, so the next forward gathers the (swapped) shards again."""
    for m in module.modules():
        if hasattr(m, "reshard") and callable(m.reshard) and type(m).__name__.startswith("FSDP"):
            m.reshard()


class EMA(pl.Callback):
    """EMA of the trainable weights, swapped in for validation, test and predict.

    ``ema ← decay·ema + (1 − decay)·w`` after every optimizer step, with the decay warmed up as
    ``min(decay, (1 + step) / (10 + step))`` when ``warmup`` is set (early averages do not drag
    the random init along).

    Args:
        decay: EMA decay per optimizer step (the video reference uses 0.995).
        warmup: warm the decay up over the first steps.
        evaluate_with_ema: use the EMA weights in validation, test and predict (sampling included).
    """

    def __init__(self, decay: float = 0.995, warmup: bool = True, evaluate_with_ema: bool = True):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay, self.warmup, self.evaluate_with_ema = decay, warmup, evaluate_with_ema
        self.ema: dict[str, torch.Tensor] = {}
        self.swapped = False
        self._last_step = -1
        self._pending: dict[str, torch.Tensor] | None = None

    # -- state ------------------------------------------------------------------------------------

    @staticmethod
    def tracked(pl_module: nn.Module) -> Iterator[tuple[str, nn.Parameter]]:
        return ((n, p) for n, p in pl_module.named_parameters() if p.requires_grad)

    @torch.no_grad()
    def ensure_initialized(self, pl_module: nn.Module) -> None:
        """Creates the EMA copies from the current weights (or a loaded single-file state)."""
        if self.ema:
            return
        for name, p in self.tracked(pl_module):
            self.ema[name] = p.detach().clone()
            if self._pending is not None and name in self._pending:
                local(self.ema[name]).copy_(self._pending[name])
        self._pending = None

    def current_decay(self, step: int) -> float:
        return min(self.decay, (1 + step) / (10 + step)) if self.warmup else self.decay

    @torch.no_grad()
    def update(self, pl_module: nn.Module, step: int) -> None:
        """One EMA step on every rank's local shards."""
        self.ensure_initialized(pl_module)
        weight = 1.0 - self.current_decay(step)
        for name, p in self.tracked(pl_module):
            e = local(self.ema[name])
            e.lerp_(local(p).detach().to(e.dtype), weight)

    @torch.no_grad()
    def swap(self, pl_module: nn.Module) -> None:
        """Exchanges the live weights and the EMA weights (call again to undo)."""
        self.ensure_initialized(pl_module)
        reshard_all(pl_module)
        for name, p in self.tracked(pl_module):
            w, e = local(p), local(self.ema[name])
            tmp = w.detach().clone()
            w.copy_(e)
            e.copy_(tmp)
        self.swapped = not self.swapped

    @contextlib.contextmanager
    def weights(self, pl_module: nn.Module) -> Iterator[None]:
        """Context with the EMA weights in place (a no-op if they already are)."""
        if self.swapped:
            yield
            return
        self.swap(pl_module)
        try:
            yield
        finally:
            self.swap(pl_module)

    # -- training and evaluation hooks --------------------------------------------------------------

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        if trainer.global_step != self._last_step:  # an optimizer step happened (gradient accumulation)
            self._last_step = trainer.global_step
            self.update(pl_module, trainer.global_step)

    def _swap_in(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.evaluate_with_ema and not self.swapped:
            self.swap(pl_module)

    def _swap_out(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.evaluate_with_ema and self.swapped:
            self.swap(pl_module)

    on_validation_epoch_start = on_test_epoch_start = on_predict_epoch_start = _swap_in
    on_validation_epoch_end = on_test_epoch_end = on_predict_epoch_end = _swap_out

    # -- checkpoints ------------------------------------------------------------------------------

    def sharded(self) -> bool:
        return any(hasattr(t, "to_local") for t in self.ema.values())

    def state_dict(self) -> dict[str, Any]:
        return {"decay": self.decay, "last_step": self._last_step}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._last_step = state_dict.get("last_step", -1)

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        if self.swapped:  # a checkpoint taken during evaluation must hold the live weights
            raise RuntimeError("EMA weights are swapped in while saving a checkpoint")
        if self.sharded():
            checkpoint["state_dict"].update({EMA_PREFIX + n: t for n, t in self.ema.items()})
        elif self.ema:
            checkpoint[EMA_CHECKPOINT_KEY] = {n: t.detach().cpu() for n, t in self.ema.items()}

    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        if EMA_CHECKPOINT_KEY in checkpoint:
            self.ema, self._pending = {}, checkpoint[EMA_CHECKPOINT_KEY]
        path = Path(trainer.ckpt_path) if trainer.ckpt_path else None
        if path is None or not path.is_dir():
            return
        self.ema = {}
        self.ensure_initialized(pl_module)
        if not self.sharded():
            return
        from torch.distributed.checkpoint import load
        state = {"state_dict": {EMA_PREFIX + n: t for n, t in self.ema.items()}}
        try:
            load(state, checkpoint_id=str(path))
        except Exception as exn:  # noqa: BLE001 - a checkpoint trained without EMA
            log.warning("No EMA weights in %s (%r): the EMA starts from the loaded weights", path, exn)
            self.ema = {}
            self.ensure_initialized(pl_module)


def find_ema(trainer: pl.Trainer | None) -> EMA | None:
    """The trainer's :class:`EMA` callback (None without a trainer or without one)."""
    callbacks = [] if trainer is None else [c for c in trainer.callbacks if isinstance(c, EMA)]
    return callbacks[0] if callbacks else None


@contextlib.contextmanager
def swapped_weights(module: nn.Module, weights: dict[str, torch.Tensor]) -> Iterator[None]:
    """Context with ``weights`` (name → tensor, e.g. a checkpoint's EMA) copied into ``module``'s
    parameters, the original values restored on exit. Unsharded modules (inference) only."""
    params = dict(module.named_parameters())
    missing = sorted(set(weights) - set(params))
    if missing:
        raise KeyError(f"EMA weights for unknown parameters: {missing[:3]}")
    saved = {n: params[n].detach().clone() for n in weights}
    with torch.no_grad():
        for n, w in weights.items():
            params[n].copy_(w)
    try:
        yield
    finally:
        with torch.no_grad():
            for n, w in saved.items():
                params[n].copy_(w)
