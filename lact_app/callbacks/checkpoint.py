"""Checkpoint files of a run: ``last.ckpt`` on a clock, atomic writes, finding a run's newest one.

- :class:`LastCheckpoint` rewrites ``last.ckpt`` every ``train_time_interval`` of training, at
  the end of every fit and when a SIGTERM (a scheduler's pre-emption) stops it; the numbered
  checkpoints stay with Lightning's ``ModelCheckpoint`` (the CLI's ``checkpoint`` group).
- :class:`AtomicCheckpointIO` writes a checkpoint to ``<name>.ckpt.part`` next to it, then renames
  it: a kill during a write leaves the previous file intact and no partial ``.ckpt``. Lightning's
  own writer (``_atomic_save``) stages the bytes in the system temp folder and ``shutil.move``\\ s
  them, which copies in place (not atomic) when that folder is on another filesystem, and leaves
  the temporary file behind when killed.
- :func:`newest_checkpoint` and :func:`run_log_dir` let ``--ckpt_path last`` find a run's newest
  checkpoint and let the resumed run log into the same folder.
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path
from typing import Any, Optional

import lightning.pytorch as pl
import torch
from lightning.fabric.utilities.cloud_io import _is_local_file_protocol
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities.exceptions import SIGTERMException

#: Suffix of a checkpoint being written (not ``.ckpt``: never mistaken for a checkpoint).
PARTIAL_SUFFIX = ".part"


class LastCheckpoint(ModelCheckpoint):
    """Rewrites ``last.ckpt`` on a clock, at the end of every fit, and on SIGTERM.

    Args:
        dirpath: folder of ``last.ckpt`` (None: the logger's ``<log_dir>/checkpoints``; the CLI
            links it to ``checkpoint.dirpath``).
        train_time_interval: training time between two writes (``"0:05:00"``: every 5 minutes).
            None: only at the end of the fit and on SIGTERM.
    """

    def __init__(self, dirpath: Optional[str] = None,
                 train_time_interval: Optional[timedelta] = timedelta(minutes=5)):
        # No version counter: last.ckpt is shared with the ``checkpoint`` callback and rewritten.
        super().__init__(dirpath=dirpath, save_top_k=0, save_last=True,
                         train_time_interval=train_time_interval, enable_version_counter=False)

    @property
    def state_key(self) -> str:
        return self._generate_state_key(role="last", train_time_interval=self._train_time_interval)

    def saved_now(self, trainer: pl.Trainer) -> bool:
        """Whether a checkpoint callback already wrote ``last.ckpt`` at the current step (the
        epoch-end one usually has: no second write of the same state)."""
        return any(cb.save_last and cb._last_global_step_saved == trainer.global_step  # noqa: SLF001
                   for cb in trainer.checkpoint_callbacks if isinstance(cb, ModelCheckpoint))

    def save_last_now(self, trainer: pl.Trainer) -> None:
        if not self.saved_now(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.save_last_now(trainer)

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                     exception: BaseException) -> None:
        """On SIGTERM only: Lightning stops between two steps, so the state is consistent (other
        exceptions may stop in the middle of a step)."""
        if isinstance(exception, SIGTERMException) and trainer.state.fn == "fit":
            self.save_last_now(trainer)


class AtomicCheckpointIO(TorchCheckpointIO):
    """``torch.save`` to ``<path>.part`` in the target folder, fsync, then rename over ``path``."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any,
                        storage_options: Optional[Any] = None) -> None:
        if not _is_local_file_protocol(path):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + PARTIAL_SUFFIX)
        with open(partial, "wb") as f:
            torch.save(checkpoint, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(partial, path)
        fsync_dir(path.parent)


def fsync_dir(path: Path) -> None:
    """Makes a rename in ``path`` durable (POSIX); a no-op where folders cannot be opened."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def newest_checkpoint(folders: list[Path]) -> Optional[Path]:
    """The most recently written checkpoint (``*.ckpt`` file or DCP folder) in ``folders``."""
    found = [p for folder in folders if folder.is_dir() for p in folder.glob("*.ckpt")]
    return max(found, key=lambda p: p.stat().st_mtime, default=None)


def run_log_dir(checkpoint: Path) -> Optional[Path]:
    """The log folder (``…/version_N``) a checkpoint under ``…/version_N/checkpoints/`` belongs to."""
    checkpoint = Path(checkpoint).resolve()
    return checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else None
