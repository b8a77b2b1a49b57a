"""Fault injection for the fault-tolerance tests: callbacks added to a ``python main.py fit`` run
with ``--trainer.callbacks+=tests.faults.<Name>``.

- :class:`RecordLosses` appends ``{"step", "loss"}`` per optimizer step to a JSON-lines file (the
  full-precision loss a resumed run is compared on; TensorBoard keeps float32).
- :class:`KillAt` sends the process SIGKILL or SIGTERM when a step ends: a crash or a pre-emption
  at a known point between two checkpoints.
- :class:`PoisonBatches` turns the batches from a step on into NaNs and saves the training state
  before and after them.
"""

from __future__ import annotations

import copy
import json
import os
import signal
from pathlib import Path

import lightning.pytorch as pl
import torch


class RecordLosses(pl.Callback):
    """Appends each training step's loss to ``path`` as ``{"step": global step before it, "loss"}``.

    Args:
        path: the JSON-lines file (appended to, so an interrupted and a resumed run share it).
    """

    def __init__(self, path: str):
        self.path = path

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        with open(self.path, "a") as f:
            f.write(json.dumps({"step": trainer.global_step - 1, "loss": loss.item()}) + "\n")


class KillAt(pl.Callback):
    """Sends this process ``signal_name`` at the end of global step ``step`` (after its checkpoints).

    Args:
        step: the global step (counted after the optimizer step) to stop at.
        signal_name: ``"SIGKILL"`` (a crash: nothing runs after it) or ``"SIGTERM"`` (pre-emption).
    """

    def __init__(self, step: int, signal_name: str = "SIGKILL"):
        self.step, self.signal = step, getattr(signal, signal_name)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), self.signal)


def read_losses(path) -> dict[int, float]:
    """The recorded losses by step; a step recorded twice (replayed after a resume) keeps the last."""
    losses = {}
    with open(path) as f:
        for line in f:
            record = json.loads(line)
            losses[record["step"]] = record["loss"]
    return losses


def training_state(pl_module, trainer) -> dict:
    """Copies of the weights, the first optimizer's state and the skip count."""
    return {"state_dict": {k: v.detach().clone() for k, v in pl_module.state_dict().items()},
            "optimizer": copy.deepcopy(trainer.optimizers[0].state_dict()),
            "skipped_steps": pl_module.skipped_steps}


class PoisonBatches(pl.Callback):
    """From global step ``step`` on, fills every batch with NaN (a fault in the data).

    Saves ``<log_dir>/poison_before.pt`` (the training state when the first poisoned batch
    arrives) and ``<log_dir>/poison_after.pt`` (when the run stops on an exception), both as
    :func:`training_state`.

    Args:
        step: the first poisoned global step.
    """

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step < self.step:
            return
        if trainer.global_step == self.step:
            torch.save(training_state(pl_module, trainer), Path(trainer.log_dir) / "poison_before.pt")
        for tensor in batch:
            tensor.fill_(float("nan"))

    def on_exception(self, trainer, pl_module, exception) -> None:
        torch.save(training_state(pl_module, trainer), Path(trainer.log_dir) / "poison_after.pt")
