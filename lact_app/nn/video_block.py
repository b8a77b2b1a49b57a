"""The DiT-style block of autoregressive video diffusion with LaCT memory (LACT_SPEC.md §4.1–4.4).

One block: adaLN-zero modulation from the per-chunk timestep embedding, then the *mixer* — window
attention and a LaCT fast-weight branch sharing one qkv projection — then an MLP. The sequence is a
list of :class:`~lact_app.nn.Segment` s (``N0 | C0 N1 | C1 N2 | …`` in training); the same code runs
chunk by chunk at sampling time with a :class:`BlockCache` (fast-weight state + KV cache), so the two
paths compute the same function of the same tokens.

``memory`` selects what carries information across chunks:

- ``"lact"``: fast weights updated on every clean chunk (update-then-apply) + chunk-local attention
  (a noisy chunk sees the preceding clean chunk and itself; a clean chunk sees itself);
- ``"full_attention"``: no fast weights; every chunk attends to all preceding clean chunks and
  itself (the growing-KV-cache baseline of ablations and benchmarks);
- ``"none"``: chunk-local attention only (no long-range memory at all).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from ..ops import FastWeights, Op
from .fast_inputs import FastWeightInputs
from .fast_weight import FastWeightBranch
from .layout import CLEAN, Segment, interleaved_schedule, segment_bounds
from .masks import segment_keys
from .mlp import GELUMLP
from .norms import HeadRMSNorm
from .projections import LRProjection, OutputGate
from .rotary import Rotary3DEmbedding

MEMORIES = ("lact", "full_attention", "none")

Ranges = list[list[tuple[int, int]]]


@dataclass(frozen=True)
class BlockCache:
    """What one block carries from chunk to chunk while sampling.

    ``state``: fast weights after the last clean chunk (None: the learned initial weights);
    ``k, v``: [B, heads, Lk, Dh] rotated keys/values of the clean context (None: nothing cached) —
    the last ``clean_context`` tokens of the last clean chunk (``lact`` / ``none``) or all clean
    chunks so far (``full_attention``).
    """

    state: FastWeights | None = None
    k: torch.Tensor | None = None
    v: torch.Tensor | None = None


def uniform_length(segments: Sequence[Segment]) -> int | None:
    """The common length of the segments, or None when they differ."""
    lengths = {s.length for s in segments}
    return lengths.pop() if len(lengths) == 1 else None


def group_tokens(x: torch.Tensor, segments: Sequence[Segment]) -> torch.Tensor:
    """[B, L, C] -> [B, S, l, C] (a view) when all S segments have length l, else [B, 1, L, C]."""
    length = uniform_length(segments)
    return x.unflatten(1, (-1, length)) if length is not None else x.unsqueeze(1)


def group_segment_params(per_segment: torch.Tensor, segments: Sequence[Segment]) -> torch.Tensor:
    """Per-segment vectors [B, S, C] broadcastable against :func:`group_tokens`: [B, S, 1, C] when
    the segments have one length (nothing is materialised per token), else [B, 1, L, C]."""
    if uniform_length(segments) is not None:
        return per_segment.unsqueeze(2)
    lengths = torch.tensor([s.length for s in segments], device=per_segment.device)
    return per_segment.repeat_interleave(lengths, dim=1).unsqueeze(1)


def full_causal_keys(segments: Sequence[Segment]) -> Ranges:
    """Key ranges of causal attention over chunks: each segment sees all preceding clean ones and itself."""
    keys, cleans = [], []
    for seg, own in zip(segments, segment_bounds(segments)):
        keys.append(cleans + [own])
        if seg.kind == CLEAN:
            cleans = cleans + [own]
    return keys


def segment_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bounds: list[tuple[int, int]], ranges: Ranges, first: int
) -> torch.Tensor:
    """One sdpa per query segment over its key ranges (no dense mask).

    Args:
        q: [B, heads, Lq, Dh], the queries of segments ``first, first + 1, …``.
        k, v: [B, heads, L, Dh] of all segments (a cached prefix included).
        bounds, ranges: token range and key ranges of every segment (see ``segment_keys``).
        first: index of the first segment that has queries.

    Returns:
        [B, heads, Lq, Dh].
    """
    offset = bounds[first][0]
    outs = []
    for (start, end), keys in zip(bounds[first:], ranges[first:]):
        kk = torch.cat([k[:, :, s:e] for s, e in keys], dim=2) if len(keys) > 1 else k[:, :, keys[0][0]:keys[0][1]]
        vv = torch.cat([v[:, :, s:e] for s, e in keys], dim=2) if len(keys) > 1 else v[:, :, keys[0][0]:keys[0][1]]
        outs.append(F.scaled_dot_product_attention(q[:, :, start - offset:end - offset], kk, vv))
    return torch.cat(outs, dim=2)


class FastWeightMemory(nn.Module):
    """The LaCT branch of the video mixer (LACT_SPEC.md §1.3 video row, §1.10 video row, §4.3).

    q̂, k̂ (already RMS-normed by the mixer) → per-channel affine → l2 per fast-weight head → 3-D
    RoPE (no silu anywhere); v raw; per-token lrs softplus(Linear(x) + softplus⁻¹(base_lr));
    update-then-apply SwiGLU fast weights with row weight-norm, no momentum, no Muon; per-head RMSNorm;
    per-token silu gate, zero-initialised, so the branch starts switched off.

    Args:
        dim: model width d = n_h * D.
        num_heads: n_h, fast-weight heads.
        inter_multi: fast-weight hidden width H = inter_multi * D.
        base_lr: fast-weight lr at zero logit.
        rope: the block's 3-D RoPE (head dim = attention head dim, which must divide D).
    """

    def __init__(self, dim: int, num_heads: int, inter_multi: float, base_lr: float, rope: Rotary3DEmbedding):
        super().__init__()
        head_dim = dim // num_heads
        self.inputs = FastWeightInputs(dim, num_heads, False, False, False, qk_affine=True, qk_l2_norm=True, rope=rope)
        self.lr_proj = LRProjection(dim, num_heads, base_lr, bias=True)
        self.branch = FastWeightBranch(num_heads, head_dim, inter_multi, w_init="normal", weight_norm=True)
        self.output_norm = HeadRMSNorm(num_heads, head_dim, eps=1e-6)
        self.gate = OutputGate(dim, num_heads, kind="token")

    def forward(
        self,
        x: torch.Tensor,
        qkv: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
        positions: torch.Tensor,
        schedule: Sequence[Op],
        state: FastWeights | None,
    ) -> tuple[torch.Tensor, FastWeights]:
        """x, q̂, k̂, v: [B, L, d]; positions: [L, 3] -> (gated output [B, L, d], state after the ops)."""
        q, k, v = self.inputs(*qkv, positions=positions)
        o, state = self.branch(q, k, v, self.lr_proj(x), schedule, state=state)
        return self.gate(x, self.output_norm(o)), state


class ChunkMixer(nn.Module):
    """Window attention + cross-chunk memory with one shared qkv: ``o(attn + gate·ttt)``.

    Args:
        dim: model width.
        num_heads: attention heads (3-D RoPE over the head dim, Wan's split).
        memory: ``"lact"``, ``"full_attention"`` or ``"none"`` (see the module docstring).
        fw_heads: fast-weight heads (``lact`` only).
        fw_inter_multi: fast-weight hidden multiplier.
        fw_base_lr: fast-weight lr at zero logit (the reference hard-codes 1e-3).
        clean_context: trailing tokens of the preceding clean chunk a noisy chunk attends to (the
            reference's ``kv_cache_size``); None: the whole chunk.
        rope_theta: RoPE base.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        memory: str = "lact",
        fw_heads: int = 1,
        fw_inter_multi: float = 2.0,
        fw_base_lr: float = 1e-3,
        clean_context: int | None = None,
        rope_theta: float = 1e4,
    ):
        super().__init__()
        if memory not in MEMORIES:
            raise ValueError(f"memory must be one of {MEMORIES}, got {memory!r}")
        if dim % num_heads or dim % fw_heads:
            raise ValueError(f"dim {dim} must be divisible by num_heads {num_heads} and fw_heads {fw_heads}")
        self.num_heads, self.memory, self.clean_context = num_heads, memory, clean_context
        self.rope = Rotary3DEmbedding(dim // num_heads, rope_theta)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.norm_q, self.norm_k = nn.RMSNorm(dim, eps=1e-6), nn.RMSNorm(dim, eps=1e-6)
        self.fast = FastWeightMemory(dim, fw_heads, fw_inter_multi, fw_base_lr, self.rope) if memory == "lact" else None
        self.out_proj = nn.Linear(dim, dim)

    def forward(
        self, x: torch.Tensor, segments: Sequence[Segment], positions: torch.Tensor, cache: BlockCache | None = None
    ) -> tuple[torch.Tensor, BlockCache | None]:
        """Mix one sequence piece.

        Args:
            x: [B, L, d] (already normed and modulated).
            segments: the layout of the L tokens.
            positions: [L, 3] (t, h, w) RoPE positions.
            cache: None in training (nothing cached, nothing returned); while sampling, the cache of
                the previous call (``BlockCache()`` at the start of a video).

        Returns:
            [B, L, d] and, when a cache was given, the cache after these segments.
        """
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        q, k = self.norm_q(q), self.norm_k(k)
        heads = [rearrange(t, "b l (h d) -> b h l d", h=self.num_heads) for t in (q, k, v)]
        qa, ka = (self.rope.apply(t, positions) for t in heads[:2])
        va = heads[2]
        segs, first = list(segments), 0
        if cache is not None and cache.k is not None:  # the cached clean context acts as a leading clean segment
            segs, first = [Segment(CLEAN, cache.k.size(2))] + segs, 1
            ka, va = torch.cat([cache.k, ka], dim=2), torch.cat([cache.v, va], dim=2)
        bounds = segment_bounds(segs)
        o = segment_attention(qa, ka, va, bounds, self.key_ranges(segs), first)
        o = rearrange(o, "b h l d -> b l (h d)")
        state = None if cache is None else cache.state
        if self.fast is not None:
            ttt, state = self.fast(x, (q, k, v), positions, interleaved_schedule(segments), state)
            o = o + ttt
        new_cache = None if cache is None else self.next_cache(cache, state, segs, bounds, ka, va)
        return self.out_proj(o), new_cache

    def key_ranges(self, segments: Sequence[Segment]) -> Ranges:
        """Key ranges of every segment under this mixer's attention pattern."""
        if self.memory == "full_attention":
            return full_causal_keys(segments)
        return segment_keys(segments, self.clean_context)

    def next_cache(
        self, cache: BlockCache, state: FastWeights | None, segs: list[Segment], bounds: list[tuple[int, int]],
        k: torch.Tensor, v: torch.Tensor,
    ) -> BlockCache:
        """The cache after ``segs`` (cached prefix included): keys/values of the clean context."""
        cleans = [b for s, b in zip(segs, bounds) if s.kind == CLEAN]
        if not cleans:
            return BlockCache(state, cache.k, cache.v)
        if self.memory != "full_attention":
            start, end = cleans[-1]
            if self.clean_context is not None:
                start = max(start, end - self.clean_context)
            cleans = [(start, end)]
        keep = torch.cat([torch.arange(s, e, device=k.device) for s, e in cleans])
        return BlockCache(state, k.index_select(2, keep), v.index_select(2, keep))


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN: x·(1 + scale) + shift."""
    return x * (1 + scale) + shift


class VideoBlock(nn.Module):
    """adaLN-zero DiT block: ``x + g1·mixer(mod(LN(x))) → x + g2·MLP(mod(LN(x)))``.

    The six modulation vectors (shift, scale, gate per sub-layer) come from the per-chunk timestep
    (and condition) embedding through a zero-initialised linear, so every block starts as the
    identity (DiT's adaLN-zero; Wan modulates the same way).

    Args:
        dim: model width.
        num_heads: attention heads.
        mlp_ratio: MLP hidden width / dim (GELU-tanh MLP as in Wan/DiT).
        memory: ``"lact"``, ``"full_attention"`` or ``"none"``.
        fw_heads: fast-weight heads.
        fw_inter_multi: fast-weight hidden multiplier.
        fw_base_lr: fast-weight lr at zero logit.
        clean_context: keys of the preceding clean chunk a noisy chunk sees (None: all).
        rope_theta: RoPE base.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        memory: str = "lact",
        fw_heads: int = 1,
        fw_inter_multi: float = 2.0,
        fw_base_lr: float = 1e-3,
        clean_context: int | None = None,
        rope_theta: float = 1e4,
    ):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.mixer = ChunkMixer(dim, num_heads, memory, fw_heads, fw_inter_multi, fw_base_lr, clean_context, rope_theta)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.mlp = GELUMLP(dim, int(dim * mlp_ratio), approximate="tanh")
        self.modulation = nn.Linear(dim, 6 * dim)
        nn.init.zeros_(self.modulation.weight)
        nn.init.zeros_(self.modulation.bias)

    def forward(
        self,
        x: torch.Tensor,
        emb: torch.Tensor,
        segments: Sequence[Segment],
        positions: torch.Tensor,
        cache: BlockCache | None = None,
    ) -> tuple[torch.Tensor, BlockCache | None]:
        """x: [B, L, d]; emb: [B, S, d] one embedding per segment; positions: [L, 3].  -> ([B, L, d], cache)."""
        mod = group_segment_params(self.modulation(F.silu(emb)), segments)
        shift1, scale1, gate1, shift2, scale2, gate2 = mod.chunk(6, dim=-1)
        xg = group_tokens(x, segments)  # [B, S, l, d]: per-segment vectors broadcast, never expanded
        h, cache = self.mixer(modulate(self.norm1(xg), shift1, scale1).flatten(1, 2), segments, positions, cache)
        xg = xg + gate1 * h.view_as(xg)
        xg = xg + gate2 * self.mlp(modulate(self.norm2(xg), shift2, scale2))
        return xg.flatten(1, 2), cache
