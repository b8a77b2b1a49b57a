"""Preprocessing of the projected q̂, k̂, v̂ into fast-weight inputs (LACT_SPEC.md §1.3, §1.11)."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .qk import l2_normalize
from .rotary import RotaryEmbedding


class FastWeightInputs(nn.Module):
    """q̂, k̂, v̂ → q, k, v of the fast-weight branch.

    Order: per-channel affine of q̂, k̂ (LM / video) → silu (each switchable) → l2 of q, k per
    fast-weight head → RoPE. The affine comes first as in the LM code, the only one that combines it
    with silu. RoPE rotates pieces of ``rope.head_dim`` channels (the attention head size in the LM
    code), which tile each fast-weight head, so the l2 norm is unchanged by it.

    Args:
        dim: n_h * D.
        num_heads: n_h.
        silu_q, silu_k, silu_v: apply silu to q, k, v.
        qk_affine: learned per-channel scale (init 1) and offset (init 0) of q̂ and k̂, ``[dim, 2]``.
        qk_l2_norm: l2-normalise q and k over each head (x / (‖x‖ + 1e-5), fp32).
        rope: rotary embedding of q and k, or None (NoPE); its head_dim must divide D.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        silu_q: bool = True,
        silu_k: bool = True,
        silu_v: bool = True,
        qk_affine: bool = False,
        qk_l2_norm: bool = True,
        rope: Optional[RotaryEmbedding] = None,
    ):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        if rope is not None and (dim // num_heads) % rope.head_dim:
            raise ValueError(f"rope head_dim {rope.head_dim} must divide the fast-weight head dim {dim // num_heads}")
        self.num_heads = num_heads
        self.silu = (silu_q, silu_k, silu_v)
        self.qk_l2_norm, self.rope = qk_l2_norm, rope
        if qk_affine:
            self.qk_scale = nn.Parameter(torch.ones(dim, 2))
            self.qk_offset = nn.Parameter(torch.zeros(dim, 2))
        else:
            self.qk_scale = self.qk_offset = None

    def forward(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, positions: Optional[torch.Tensor] = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q, k, v: [B, L, dim] projections -> q, k, v: [B, L, dim] fast-weight inputs.

        ``positions`` are forwarded to the rope ([L] / [B, L], or [(B,) L, 3] for 3-D RoPE).
        """
        if self.qk_scale is not None:
            q = q * self.qk_scale[:, 0] + self.qk_offset[:, 0]
            k = k * self.qk_scale[:, 1] + self.qk_offset[:, 1]
        q, k, v = (F.silu(t) if on else t for t, on in zip((q, k, v), self.silu))
        if self.qk_l2_norm:
            q, k = self._l2_per_head(q), self._l2_per_head(k)
        if self.rope is not None:
            q, k = self._rotate(q, positions), self._rotate(k, positions)
        return q, k, v

    def extra_repr(self) -> str:
        return (
            f"num_heads={self.num_heads}, silu(q,k,v)={self.silu}, qk_affine={self.qk_scale is not None}, "
            f"qk_l2_norm={self.qk_l2_norm}, rope={self.rope!r}"
        )

    def _l2_per_head(self, x: torch.Tensor) -> torch.Tensor:
        """l2-normalise each head of x: [B, L, n_h * D]."""
        return l2_normalize(x.unflatten(-1, (self.num_heads, -1))).flatten(-2)

    def _rotate(self, x: torch.Tensor, positions: Optional[torch.Tensor]) -> torch.Tensor:
        pieces = x.unflatten(-1, (-1, self.rope.head_dim))  # [B, L, pieces, Dh_rope]
        return self.rope.apply(pieces, positions, layout="blhd").flatten(-2)
