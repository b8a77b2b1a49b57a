"""Writes the logged test metrics as JSON next to the logs, so scripts can compare runs."""

from __future__ import annotations

import json
import math
import os

import lightning.pytorch as pl
import torch


def _to_number(value) -> float | None:
    value = float(value.item() if isinstance(value, torch.Tensor) else value)
    return None if math.isnan(value) else value


class TestMetricsJSON(pl.Callback):
    """After ``test``, writes ``<trainer.log_dir>/test_metrics.json`` (keys as logged, e.g. ``test/psnr``).

    NaN metrics (e.g. an unavailable LPIPS) are written as ``null``. Only rank 0 writes.

    Args:
        filename: name of the JSON file inside the log folder.
    """

    __test__ = False  # not a pytest test class

    def __init__(self, filename: str = "test_metrics.json"):
        self.filename = filename

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        folder = trainer.log_dir or trainer.default_root_dir  # a collective: every rank calls it
        if not trainer.is_global_zero:
            return
        metrics = {k: _to_number(v) for k, v in sorted(trainer.callback_metrics.items())
                   if k.startswith("test/")}
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, self.filename), "w") as f:
            json.dump(metrics, f, indent=2)
