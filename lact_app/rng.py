"""The global RNG states (Python, NumPy, torch CPU and CUDA): read, set and seed them together.

A checkpoint keeps them so that a resumed run draws the same dropout masks and diffusion noise
as an uninterrupted one; the training data stream keeps its own (``datamodules.shards``).
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch


def rng_states(include_cuda: bool = False) -> dict[str, Any]:
    """The global RNG states, as a dict of tensors and plain Python values (loadable by
    ``torch.load(weights_only=True)``, which Lightning uses)."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    states = {"python": random.getstate(), "numpy": (name, keys.tolist(), pos, has_gauss, gauss),
              "torch": torch.get_rng_state()}
    if include_cuda and torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    """Restores states from :func:`rng_states` (CUDA's only when they were saved and CUDA is here)."""
    random.setstate(states["python"])
    name, keys, pos, has_gauss, gauss = states["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def seed_rngs(seed: int) -> None:
    """Seeds the global Python, NumPy and torch (CPU) RNGs."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
