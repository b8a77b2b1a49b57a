"""Softmax attention on ``torch.nn.functional.scaled_dot_product_attention``.

Masks are boolean ``[Lq, Lk]`` (True = may attend, see :mod:`lact_app.nn.masks`); tensors are
``[B, heads, L, Dh]`` as sdpa expects.
"""

from __future__ import annotations

from typing import NamedTuple, Optional, Sequence

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn
from torch.utils.weak import WeakIdKeyDictionary

from .rotary import RotaryEmbedding

#: bool mask -> {dtype: its additive form}, kept while the bool mask lives (see :func:`additive_mask`).
_ADDITIVE_MASKS = WeakIdKeyDictionary()


class QueryBlock(NamedTuple):
    """Queries ``[start, end)`` attend to the keys in ``keys`` (ranges, concatenated in order),
    optionally under a bool ``mask`` [end − start, Σ key range lengths] (True = may attend)."""

    start: int
    end: int
    keys: tuple[tuple[int, int], ...]
    mask: Optional[torch.Tensor] = None


def key_ranges(t: torch.Tensor, ranges: Sequence[tuple[int, int]]) -> torch.Tensor:
    """[B, heads, L, Dh] -> the ranges' tokens [B, heads, Σ lengths, Dh] (a view for one range)."""
    if len(ranges) == 1:
        return t[:, :, ranges[0][0]:ranges[0][1]]
    return torch.cat([t[:, :, s:e] for s, e in ranges], dim=2)


def additive_mask(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """bool [Lq, Lk] (True = may attend) -> 0 / −inf in ``dtype``, made once per mask and dtype.

    sdpa turns a bool mask into a fresh float copy on every call and saves that copy for the
    backward: one per query block and layer (at 32K tokens and window 512, 256 copies of 2 MiB).
    Query blocks that share a mask (the interior blocks of a window, the packed blocks every layer
    reuses) share its additive form, so the backward saves it once.
    """
    per_dtype = _ADDITIVE_MASKS.setdefault(mask, {})
    if dtype not in per_dtype:
        with torch.inference_mode(False):  # made during validation, it may serve a training step later
            per_dtype[dtype] = torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(~mask, float("-inf"))
    return per_dtype[dtype]


def attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: Optional[torch.Tensor] = None,
    is_causal: bool = False,
    blocks: Optional[Sequence[QueryBlock]] = None,
) -> torch.Tensor:
    """softmax(q kᵀ / √Dh, masked) v — the one attention entry point of every model.

    Full, causal, windowed, per-view-target and chunk-local attention all come here: a dense
    ``mask`` for short sequences, or ``blocks`` (one sdpa per query block over its key ranges)
    where a dense [Lq, Lk] mask would be large (LM windows, the interleaved video layout).

    Args:
        q: [B, heads, Lq, Dh]; k, v: [B, heads, Lk, Dh].
        mask: bool, broadcastable to [B, heads, Lq, Lk] (usually [Lq, Lk]); True = may attend.
            Every query must see at least one key (an empty row gives NaN).
        is_causal: top-left aligned causal mask instead of ``mask``.
        blocks: query blocks covering [0, Lq) in order (instead of ``mask`` / ``is_causal``).

    Returns:
        [B, heads, Lq, Dh].
    """
    if (mask is not None) + is_causal + (blocks is not None) > 1:
        raise ValueError("pass at most one of mask, is_causal and blocks")
    if blocks is None:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal)
    outs = []
    for block in blocks:
        kk, vv = (key_ranges(t, block.keys) for t in (k, v))
        mask = None if block.mask is None else additive_mask(block.mask, q.dtype)
        outs.append(F.scaled_dot_product_attention(q[:, :, block.start:block.end], kk, vv, attn_mask=mask))
    return torch.cat(outs, dim=2)


class Attention(nn.Module):
    """Multi-head self-attention sub-layer: qkv projection, optional q/k RMSNorm and RoPE, sdpa, out proj.

    Use it as full, causal/windowed (``mask`` / ``is_causal``) or per-view attention (reshape with
    :func:`lact_app.nn.per_view` first). :meth:`project` and :meth:`output` are public so a caller
    can keep a KV cache between them.

    Args:
        dim: model width.
        num_heads: attention heads; ``dim`` must be divisible by it.
        qk_norm: RMSNorm of q and k over each head dim (weights shared by heads).
        rope: rotary embedding applied to q and k (its head_dim must equal dim / num_heads).
        bias: biases on the qkv and out projections.
        norm_eps: eps of the q/k norms (None: torch's default, the dtype's machine epsilon, as
            the official NVS code has it).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        qk_norm: bool = False,
        rope: Optional[RotaryEmbedding] = None,
        bias: bool = False,
        norm_eps: Optional[float] = 1e-6,
    ):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        if rope is not None and rope.head_dim != self.head_dim:
            raise ValueError(f"rope head_dim {rope.head_dim} != attention head dim {self.head_dim}")
        self.qkv = nn.Linear(dim, 3 * dim, bias=bias)
        self.q_norm = nn.RMSNorm(self.head_dim, eps=norm_eps) if qk_norm else nn.Identity()
        self.k_norm = nn.RMSNorm(self.head_dim, eps=norm_eps) if qk_norm else nn.Identity()
        self.rope = rope
        self.out_proj = nn.Linear(dim, dim, bias=bias)

    def project(
        self, x: torch.Tensor, positions: Optional[torch.Tensor] = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x: [B, L, dim] -> q, k, v: [B, heads, L, Dh] (normed and rotated)."""
        q, k, v = rearrange(self.qkv(x), "b l (n h d) -> n b h l d", n=3, h=self.num_heads)
        q, k = self.q_norm(q), self.k_norm(k)
        if self.rope is not None:
            q, k = self.rope.apply(q, positions), self.rope.apply(k, positions)
        return q, k, v

    def output(self, o: torch.Tensor) -> torch.Tensor:
        """o: [B, heads, L, Dh] -> [B, L, dim] through the out projection."""
        return self.out_proj(rearrange(o, "b h l d -> b l (h d)"))

    def forward(
        self,
        x: torch.Tensor,
        mask: Optional[torch.Tensor] = None,
        is_causal: bool = False,
        positions: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """x: [B, L, dim]; mask: bool [L, L] (True = may attend) or None -> [B, L, dim]."""
        q, k, v = self.project(x, positions)
        return self.output(attend(q, k, v, mask, is_causal))
