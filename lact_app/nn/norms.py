"""Normalisation layers: torch's RMSNorm / LayerNorm, and a per-head RMSNorm for fast-weight outputs."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .precision import autocast_off, cast

#: Block norms selectable by name in configs.
NORM_KINDS = ("rms", "layer")


def build_norm(kind: str, dim: int, eps: float = 1e-5) -> nn.Module:
    """A norm over the last dim: ``"rms"`` (nn.RMSNorm) or ``"layer"`` (nn.LayerNorm without bias)."""
    if kind == "rms":
        return nn.RMSNorm(dim, eps=eps)
    if kind == "layer":
        return nn.LayerNorm(dim, eps=eps, bias=False)
    raise ValueError(f"norm kind must be one of {NORM_KINDS}, got {kind!r}")


class HeadRMSNorm(nn.RMSNorm):
    """RMSNorm of each head separately, one weight [D] shared by all heads (LACT_SPEC.md §1.10).

    Computed in fp32 (also under autocast) and cast back to the input dtype.

    Args:
        num_heads: n_h.
        head_dim: D.
        eps: added to the mean square.
    """

    def __init__(self, num_heads: int, head_dim: int, eps: float = 1e-5):
        super().__init__(head_dim, eps=eps)
        self.num_heads = num_heads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [..., n_h * D] -> [..., n_h * D]."""
        heads = x.float().unflatten(-1, (self.num_heads, -1))
        with autocast_off(x):
            y = F.rms_norm(heads, self.normalized_shape, self.weight.float(), self.eps)
        return cast(y.flatten(-2), x.dtype)
