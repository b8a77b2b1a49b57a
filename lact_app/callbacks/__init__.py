"""Shared Lightning callbacks and media helpers."""

from lact_app.callbacks.checkpoint import AtomicCheckpointIO, LastCheckpoint
from lact_app.callbacks.faults import RunStopped
from lact_app.callbacks.media import add_gif, gif_summary
from lact_app.callbacks.test_metrics import TestMetricsJSON

__all__ = ["AtomicCheckpointIO", "LastCheckpoint", "RunStopped", "TestMetricsJSON", "add_gif", "gif_summary"]
