"""Feed-forward sub-layers."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SwiGLUMLP(nn.Module):
    """Llama-style gated MLP: down(silu(gate(x)) * up(x)).

    Args:
        dim: input and output width.
        hidden: hidden width.
        bias: add biases to the three projections.
    """

    def __init__(self, dim: int, hidden: int, bias: bool = False):
        super().__init__()
        self.gate_proj = nn.Linear(dim, hidden, bias=bias)
        self.up_proj = nn.Linear(dim, hidden, bias=bias)
        self.down_proj = nn.Linear(hidden, dim, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [..., dim] -> [..., dim]."""
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class GELUMLP(nn.Module):
    """Transformer MLP: fc2(gelu(fc1(x))).

    Args:
        dim: input and output width.
        hidden: hidden width.
        bias: add biases to both projections (the NVS reference has none).
        approximate: GELU approximation, ``"none"`` or ``"tanh"``.
    """

    def __init__(self, dim: int, hidden: int, bias: bool = True, approximate: str = "none"):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden, bias=bias)
        self.fc2 = nn.Linear(hidden, dim, bias=bias)
        self.approximate = approximate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [..., dim] -> [..., dim]."""
        return self.fc2(F.gelu(self.fc1(x), approximate=self.approximate))
