"""Precision helpers: the lr, momentum and normalisation maths run in fp32 (DESIGN.md §8)."""

from __future__ import annotations

import contextlib
from typing import ContextManager

import torch


def autocast_off(x: torch.Tensor) -> ContextManager:
    """A context that disables autocast on ``x``'s device, so ops inside keep their input dtype.

    A no-op context when autocast is off already: entering ``torch.autocast`` costs about 10 µs of
    Python, and a decoding step enters this context a dozen times for a few µs of maths.
    """
    if not torch.is_autocast_enabled(x.device.type):
        return contextlib.nullcontext()
    return torch.autocast(device_type=x.device.type, enabled=False)


def cast(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``t.to(dtype)`` without the dispatch when it is a no-op (a decoding step's casts of one token
    cost as much as its maths)."""
    return t if t.dtype == dtype else t.to(dtype)
