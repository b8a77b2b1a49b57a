"""Elementwise helpers of the LaCT inputs: l2 normalisation and the per-token learning rate."""

from __future__ import annotations

import math
from typing import Union

import torch
import torch.nn.functional as F

from .precision import cast

#: Added to the norm before dividing (LACT_SPEC.md §1.3: ``x / (‖x‖ + 1e-5)``).
L2_EPS = 1e-5


def l2_normalize(x: torch.Tensor, eps: float = L2_EPS) -> torch.Tensor:
    """x / (‖x‖ + eps) over the last dim, computed in fp32 and cast back.

    Args:
        x: [..., D].
        eps: added to the norm (not inside the root, as the reference code does).

    Returns:
        [..., D] in ``x.dtype``.
    """
    xf = x.float()
    # linalg.vector_norm, not Tensor.norm: the same kernel without Tensor.norm's Python dispatch (~2 µs a call)
    return cast(xf / (torch.linalg.vector_norm(xf, dim=-1, keepdim=True) + eps), x.dtype)


def inverse_softplus(y: Union[float, torch.Tensor]) -> Union[float, torch.Tensor]:
    """softplus⁻¹(y) = y + log(−expm1(−y)) for y > 0 (float in, float out; tensor in, tensor out)."""
    if isinstance(y, torch.Tensor):
        return y + torch.log(-torch.expm1(-y))
    return y + math.log(-math.expm1(-y))


def lr_from_logits(z: torch.Tensor, base_lr: float) -> torch.Tensor:
    """Per-token learning rates softplus(z + softplus⁻¹(base_lr)) in fp32 (LACT_SPEC.md §1.5).

    The shift makes a zero logit give exactly ``base_lr``.

    Args:
        z: [...] logits of the lr projection (any dtype).
        base_lr: the learning rate at z = 0, > 0.

    Returns:
        [...] fp32, positive.
    """
    if base_lr <= 0:
        raise ValueError(f"base_lr must be > 0, got {base_lr}")
    return F.softplus(z.float() + inverse_softplus(float(base_lr)))
