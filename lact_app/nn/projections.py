"""Per-token scalars of the LaCT layer computed from its input: learning rates, momentum, output gate."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .precision import autocast_off
from .qk import lr_from_logits

#: Output gates: none, one silu gate per fast-weight head (LM / minimal), one per token (video).
GATES = ("none", "head", "token")


def linear_fp32(linear: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """``linear(x)`` in fp32 with autocast off (the lr / momentum maths must not round to bf16)."""
    bias = None if linear.bias is None else linear.bias.float()
    with autocast_off(x):
        return F.linear(x.float(), linear.weight.float(), bias)


class LRProjection(nn.Linear):
    """Per-token, per-head learning rates of (w0, w1, w2): softplus(W x + b + softplus⁻¹(base_lr)).

    Output channels are ordered (head, j) (minimal / LM / video code). Runs in fp32.

    Args:
        dim: input width.
        num_heads: n_h.
        base_lr: the lr at zero logit.
        bias: learn a bias (NVS / LM / video) or not (minimal).
    """

    def __init__(self, dim: int, num_heads: int, base_lr: float = 0.01, bias: bool = True):
        super().__init__(dim, num_heads * 3, bias=bias)
        self.num_heads, self.base_lr = num_heads, base_lr

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, L, dim] -> lr: [B, L, n_h, 3] fp32, positive."""
        return lr_from_logits(linear_fp32(self, x), self.base_lr).unflatten(-1, (self.num_heads, 3))


class MomentumProjection(nn.Linear):
    """Per-token, per-head momentum coefficient β = σ(W x + b) in (0, 1), fp32 (LACT_SPEC.md §1.6).

    Args:
        dim: input width.
        num_heads: n_h.
    """

    def __init__(self, dim: int, num_heads: int):
        super().__init__(dim, num_heads, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, L, dim] -> β: [B, L, n_h, 1] fp32."""
        return torch.sigmoid(linear_fp32(self, x)).unsqueeze(-1)


class OutputGate(nn.Module):
    """Multiplies the fast-weight output by silu(Linear(x)) (LACT_SPEC.md §1.10).

    Args:
        dim: input width (and width of the gated output, n_h * D).
        num_heads: n_h.
        kind: ``"head"`` (one gate per head, PyTorch default init) or ``"token"`` (one gate per
            token, zero-initialised weight and bias, so the branch starts exactly switched off).
    """

    def __init__(self, dim: int, num_heads: int, kind: str = "head"):
        super().__init__()
        if kind not in GATES[1:]:
            raise ValueError(f"gate kind must be one of {GATES[1:]}, got {kind!r}")
        self.num_heads, self.kind = num_heads, kind
        self.proj = nn.Linear(dim, num_heads if kind == "head" else 1)
        if kind == "token":
            nn.init.zeros_(self.proj.weight)
            nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor, o: torch.Tensor) -> torch.Tensor:
        """x: [B, L, dim], o: [B, L, n_h * D] -> gated o: [B, L, n_h * D]."""
        gate = F.silu(self.proj(x)).unsqueeze(-1)  # [B, L, n_h or 1, 1]
        return (o.unflatten(-1, (gate.size(-2), -1)) * gate).flatten(-2)
