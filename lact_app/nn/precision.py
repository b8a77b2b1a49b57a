"""Precision helpers: the lr, momentum and normalisation maths run in fp32 (DESIGN.md §8)."""

from __future__ import annotations

import torch


def autocast_off(x: torch.Tensor) -> torch.autocast:
    """A context that disables autocast on ``x``'s device, so ops inside keep their input dtype."""
    return torch.autocast(device_type=x.device.type, enabled=False)
