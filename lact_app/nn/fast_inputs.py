"""Preprocessing of the projected q̂, k̂, v̂ into fast-weight inputs (LACT_SPEC.md §1.3, §1.11)."""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import nn

from .qk import l2_normalize
from .rotary import RotaryEmbedding


class FastInputs(NamedTuple):
    """What the fast-weight op reads per token.

    q, k, v: [B, L, n_h * D]; lr: [B, L, n_h, 3]; momentum: [B, L, n_h, 1] or None. ``q`` is None
    for an update-only op (the completed chunk of a causal stream, whose queries were applied).
    """

    q: Optional[torch.Tensor]
    k: torch.Tensor
    v: torch.Tensor
    lr: torch.Tensor
    momentum: Optional[torch.Tensor]


class FastWeightInputs(nn.Module):
    """q̂, k̂, v̂ → q, k, v of the fast-weight branch.

    Order: per-channel affine of q̂, k̂ (LM / video) → silu (LM / NVS) → l2 of q, k per
    fast-weight head → RoPE. The affine comes first as in the LM code, the only one that combines it
    with silu. RoPE rotates pieces of ``rope.head_dim`` channels (the attention head size in the LM
    code), which tile each fast-weight head, so the l2 norm is unchanged by it.

    Args:
        dim: n_h * D.
        num_heads: n_h.
        silu: apply silu to q, k and v.
        v_silu: with ``silu``, apply it to v too (False: the official LM's ``no_v_silu``).
        qk_affine: learned per-channel scale (init 1) and offset (init 0) of q̂ and k̂, ``[dim, 2]``.
        rope: rotary embedding of q and k, or None (NoPE); its head_dim must divide D.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        *,
        silu: bool = True,
        v_silu: bool = True,
        qk_affine: bool = False,
        rope: Optional[RotaryEmbedding] = None,
    ):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by fast_weight.heads {num_heads}")
        if rope is not None and (dim // num_heads) % rope.head_dim:
            raise ValueError(f"rope head_dim {rope.head_dim} must divide the fast-weight head dim {dim // num_heads}")
        self.num_heads, self.silu, self.v_silu, self.rope = num_heads, silu, silu and v_silu, rope
        if qk_affine:
            self.qk_scale = nn.Parameter(torch.ones(dim, 2))
            self.qk_offset = nn.Parameter(torch.zeros(dim, 2))
        else:
            self.qk_scale = self.qk_offset = None

    def forward(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, positions: Optional[torch.Tensor] = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q, k, v: [B, L, dim] projections -> q, k, v: [B, L, dim] fast-weight inputs.

        ``positions`` are forwarded to the rope ([L] / [B, L], or [(B,) L, 3] for 3-D RoPE; or their
        :class:`~lact_app.nn.rotary.Rotation`).
        """
        # q and k go through the same elementwise steps: stacked, each step is one op for both
        # (a decoding step's cost is the number of ops, not their size)
        qk = torch.stack([q, k])  # [2, B, L, dim]
        if self.qk_scale is not None:  # [dim, 2] -> [2, 1, 1, dim]
            qk = qk * self.qk_scale.mT[:, None, None] + self.qk_offset.mT[:, None, None]
        if self.silu:
            qk = F.silu(qk)
        if self.v_silu:
            v = F.silu(v)
        qk = self._l2_per_head(qk)
        if self.rope is not None:
            qk = self._rotate(qk, positions)
        return qk[0], qk[1], v

    def extra_repr(self) -> str:
        return (
            f"num_heads={self.num_heads}, silu={self.silu}, qk_affine={self.qk_scale is not None}, rope={self.rope!r}"
        )

    def _l2_per_head(self, x: torch.Tensor) -> torch.Tensor:
        """l2-normalise each head of x: [..., L, n_h * D]."""
        return l2_normalize(x.unflatten(-1, (self.num_heads, -1))).flatten(-2)

    def _rotate(self, x: torch.Tensor, positions: Optional[torch.Tensor]) -> torch.Tensor:
        """Rotate x: [..., L, n_h * D] in pieces of the rope's head_dim."""
        pieces = x.unflatten(-1, (-1, self.rope.head_dim))  # [..., L, pieces, Dh_rope]
        return self.rope.apply(pieces, positions, layout="blhd").flatten(-2)
