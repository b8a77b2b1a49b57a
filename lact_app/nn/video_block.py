"""The DiT-style block of autoregressive video diffusion with LaCT memory (LACT_SPEC.md §4.1–4.4).

One block: adaLN-zero modulation from the per-chunk timestep embedding, then the *mixer* — window
attention and a LaCT fast-weight branch sharing one qkv projection — then an MLP. The sequence is a
list of :class:`~lact_app.nn.Segment` s (``N0 | C0 N1 | C1 N2 | …`` in training); the same code runs
chunk by chunk at sampling time with a :class:`~lact_app.nn.MixerCache` (fast weights + KV cache), so the two
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

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from ..ops import FastWeights
from .attention import attend
from .cache import MixerCache
from .config import BackboneConfig, FastWeightConfig, check_memory
from .lact_layer import LaCTLayer
from .layout import CLEAN, Segment, interleaved_schedule, segment_bounds
from .masks import segment_blocks, segment_keys
from .mlp import GELUMLP
from .rotary import Rotary3DEmbedding

Ranges = list[list[tuple[int, int]]]


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


class ChunkMixer(nn.Module):
    """Window attention + cross-chunk memory with one shared qkv: ``o(attn + gate·ttt)``.

    The LaCT branch follows the video reference (LACT_SPEC.md §1.3 video row, §1.10, §4.3): q̂, k̂
    RMS-normed by the mixer, then a per-channel affine, l2 per fast-weight head and the 3-D RoPE
    (no silu); v raw; update-then-apply on every clean chunk; per-head RMSNorm (eps 1e-6); a
    per-token silu gate, zero-initialised, so the branch starts switched off.

    Args:
        backbone: width, attention heads (3-D RoPE over the head dim, Wan's split) and RoPE base.
        memory: ``"lact"``, ``"full_attention"`` or ``"none"`` (see the module docstring).
        fast_weight: the LaCT branch's knobs (``memory="lact"`` only; ``chunk`` must be None:
            the clean frame chunks are the update chunks).
        clean_context: trailing tokens of the preceding clean chunk a noisy chunk attends to (the
            reference's ``kv_cache_size``); None: the whole chunk.
    """

    def __init__(
        self, backbone: BackboneConfig, *, memory: str, fast_weight: FastWeightConfig, clean_context: int | None = None
    ):
        super().__init__()
        check_memory(memory)
        dim, num_heads = backbone.dim, backbone.heads
        if fast_weight.chunk is not None:
            raise ValueError("fast_weight.chunk must be null for video: the clean frame chunks are the update chunks")
        self.num_heads, self.memory, self.clean_context = num_heads, memory, clean_context
        self.rope = Rotary3DEmbedding(backbone.head_dim, backbone.needs_rope("video"))
        self.qkv = nn.Linear(dim, 3 * dim)
        self.norm_q, self.norm_k = nn.RMSNorm(dim, eps=1e-6), nn.RMSNorm(dim, eps=1e-6)
        self.lact = None
        if memory == "lact":
            self.lact = LaCTLayer(dim, fast_weight, projections=False, silu=False, qk_affine=True, gate="token",
                                  norm_eps=1e-6, rope=self.rope)  # fmt: skip
        self.out_proj = nn.Linear(dim, dim)

    def forward(
        self, x: torch.Tensor, segments: Sequence[Segment], positions: torch.Tensor, cache: MixerCache | None = None
    ) -> tuple[torch.Tensor, MixerCache | None]:
        """Mix one sequence piece.

        Args:
            x: [B, L, d] (already normed and modulated).
            segments: the layout of the L tokens.
            positions: [L, 3] (t, h, w) RoPE positions.
            cache: None in training (nothing cached, nothing returned); while sampling, the cache of
                the previous call (``MixerCache()`` at the start of a video).

        Returns:
            [B, L, d] and, when a cache was given, the cache after these segments.
        """
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        q, k = self.norm_q(q), self.norm_k(k)
        heads = [rearrange(t, "b l (h d) -> b h l d", h=self.num_heads) for t in (q, k, v)]
        rotation = self.rope.rotation(positions, like=q)  # the angles once for the attention's and the fast q, k
        qa, ka = (self.rope.apply(t, rotation) for t in heads[:2])
        va = heads[2]
        segs, first = list(segments), 0
        if cache is not None and cache.keys is not None:  # the cached clean context acts as a leading clean segment
            segs, first = [Segment(CLEAN, cache.keys.size(2))] + segs, 1
            ka, va = torch.cat([cache.keys, ka], dim=2), torch.cat([cache.values, va], dim=2)
        o = attend(qa, ka, va, blocks=segment_blocks(segs, self.key_ranges(segs), first))
        o = rearrange(o, "b h l d -> b l (h d)")
        state = None if cache is None else cache.fast
        if self.lact is not None:
            schedule = interleaved_schedule(segments)
            ttt, state = self.lact(x, schedule, qkv=(q, k, v), positions=rotation, state=state)
            o = o + ttt
        new_cache = None if cache is None else self.next_cache(cache, state, segs, ka, va)
        return self.out_proj(o), new_cache

    def key_ranges(self, segments: Sequence[Segment]) -> Ranges:
        """Key ranges of every segment under this mixer's attention pattern."""
        if self.memory == "full_attention":
            return full_causal_keys(segments)
        return segment_keys(segments, self.clean_context)

    def next_cache(
        self, cache: MixerCache, state: FastWeights | None, segs: list[Segment], k: torch.Tensor, v: torch.Tensor
    ) -> MixerCache:
        """The cache after ``segs`` (cached prefix included): fast weights and the clean context's
        keys/values ([B, heads, L, Dh] of all of ``segs``)."""
        cleans = [b for s, b in zip(segs, segment_bounds(segs)) if s.kind == CLEAN]
        if not cleans:
            return MixerCache(fast=state, keys=cache.keys, values=cache.values)
        if self.memory != "full_attention":
            start, end = cleans[-1]
            if self.clean_context is not None:
                start = max(start, end - self.clean_context)
            cleans = [(start, end)]
        keep = torch.cat([torch.arange(s, e, device=k.device) for s, e in cleans])
        return MixerCache(fast=state, keys=k.index_select(2, keep), values=v.index_select(2, keep))


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN: x·(1 + scale) + shift."""
    return x * (1 + scale) + shift


class VideoBlock(nn.Module):
    """adaLN-zero DiT block: ``x + g1·mixer(mod(LN(x))) → x + g2·MLP(mod(LN(x)))``.

    The six modulation vectors (shift, scale, gate per sub-layer) come from the per-chunk timestep
    (and condition) embedding through a zero-initialised linear, so every block starts as the
    identity (DiT's adaLN-zero; Wan modulates the same way).

    Args:
        backbone: width, attention heads, MLP ratio (GELU-tanh MLP as in Wan/DiT), RoPE base.
        memory: ``"lact"``, ``"full_attention"`` or ``"none"``.
        fast_weight: the LaCT branch's knobs.
        clean_context: keys of the preceding clean chunk a noisy chunk sees (None: all).
    """

    def __init__(
        self, backbone: BackboneConfig, *, memory: str, fast_weight: FastWeightConfig, clean_context: int | None = None
    ):
        super().__init__()
        dim = backbone.dim
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.mixer = ChunkMixer(backbone, memory=memory, fast_weight=fast_weight, clean_context=clean_context)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.mlp = GELUMLP(dim, backbone.mlp_hidden(), approximate="tanh")
        self.modulation = nn.Linear(dim, 6 * dim)
        nn.init.zeros_(self.modulation.weight)
        nn.init.zeros_(self.modulation.bias)

    def forward(
        self,
        x: torch.Tensor,
        emb: torch.Tensor,
        segments: Sequence[Segment],
        positions: torch.Tensor,
        cache: MixerCache | None = None,
    ) -> tuple[torch.Tensor, MixerCache | None]:
        """x: [B, L, d]; emb: [B, S, d] one embedding per segment; positions: [L, 3].  -> ([B, L, d], cache)."""
        mod = group_segment_params(self.modulation(F.silu(emb)), segments)
        shift1, scale1, gate1, shift2, scale2, gate2 = mod.chunk(6, dim=-1)
        xg = group_tokens(x, segments)  # [B, S, l, d]: per-segment vectors broadcast, never expanded
        h, cache = self.mixer(modulate(self.norm1(xg), shift1, scale1).flatten(1, 2), segments, positions, cache)
        xg = xg + gate1 * h.view_as(xg)
        xg = xg + gate2 * self.mlp(modulate(self.norm2(xg), shift2, scale2))
        return xg.flatten(1, 2), cache
