"""The causal hybrid layer of the LaCT language model: sliding-window attention + a LaCT branch.

One qkv projection feeds causal sliding-window attention (RoPE) and a causal
:class:`~lact_app.nn.LaCTLayer` (apply-then-update chunks, LACT_SPEC.md §1.9(a)); their outputs
are summed before one output projection (LACT_SPEC.md §1.12). The layer runs one-shot (training,
teacher forcing) or streams: given a :class:`~lact_app.nn.MixerCache` it continues the sequence
where the cache left off, which is what generation does one token at a time. The cache holds what
a causal layer needs from the past and nothing more, so its size and the per-token cost do not
grow with the context: the fast weights after the last complete chunk, the fast-weight inputs of
the current incomplete chunk (a preallocated chunk buffer) and the rotated keys and values of the
last ``window`` tokens (a preallocated ring, :mod:`~lact_app.nn.kv_buffer`), all written in place.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from . import kv_buffer
from .attention import attend
from .cache import MixerCache
from .config import BackboneConfig, FastWeightConfig, check_memory
from .lact_layer import LaCTLayer
from .masks import causal_window_blocks
from .mlp import SwiGLUMLP
from .packing import Packing
from .rotary import RotaryEmbedding, Rotation



def window_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: Optional[int], q_offset: int = 0, k_offset: int = 0
) -> torch.Tensor:
    """Causal (sliding-window) attention of queries at absolute positions ``q_offset ..`` over keys at
    ``k_offset ..`` (see :func:`~lact_app.nn.masks.causal_window_blocks`).

    Args:
        q: [B, heads, Lq, Dh]; k, v: [B, heads, Lk, Dh].
        window: keys per query including itself; None for full causal attention.

    Returns:
        [B, heads, Lq, Dh].
    """
    Lq = q.size(2)
    if q_offset == k_offset and k.size(2) == Lq and (window is None or window >= Lq):
        return attend(q, k, v, is_causal=True)
    return attend(q, k, v, blocks=causal_window_blocks(Lq, window, q_offset, k_offset, device=q.device))


class HybridLaCTAttention(nn.Module):
    """Shared qkv → causal window attention (RoPE) + causal LaCT branch → sum → output projection.

    The LaCT branch follows the LM reference (LACT_SPEC.md §1.3, §1.10–1.12): per-channel affine
    of q̂, k̂, silu on q, k, v, l2 of q, k per fast-weight head, the attention's RoPE on q, k;
    per-token lrs and momentum from the layer input; apply-then-update chunks aligned at 0;
    per-head RMSNorm of the output and a per-head silu gate.

    Args:
        backbone: width d, attention heads (head dim d / heads, also the RoPE width), RoPE base.
        window: attention window w in tokens (including the token itself; window >= chunk gives
            every token its whole chunk through attention).
        memory: ``"lact"`` (window attention + LaCT, the paper's layer), ``"full_attention"``
            (plain causal attention over all earlier tokens: the Transformer baseline) or
            ``"none"`` (window attention only).
        fast_weight: the LaCT branch's knobs (``chunk``, ``heads`` with D = d / heads a multiple
            of the attention head dim, …).
        fast_rope: RoPE on the fast q, k (the reference's default; False = its ``ttt_nope``).
        fast_v_silu: silu on the fast v (the reference's default; False = its ``no_v_silu``).
    """

    def __init__(
        self,
        backbone: BackboneConfig,
        *,
        window: int,
        memory: str,
        fast_weight: FastWeightConfig,
        fast_rope: bool,
        fast_v_silu: bool = True,
    ):
        super().__init__()
        check_memory(memory)
        dim, num_attn_heads = backbone.dim, backbone.heads
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        if memory == "lact" and fast_weight.chunk is None:
            raise ValueError("fast_weight.chunk must be >= 1 for a causal LaCT layer, got None")
        self.num_attn_heads, self.memory = num_attn_heads, memory
        self.window = None if memory == "full_attention" else window
        self.rope = RotaryEmbedding(backbone.head_dim, backbone.needs_rope("the LM"))
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.o_proj = nn.Linear(dim, dim, bias=False)
        self.lact = None
        if memory == "lact":
            self.lact = LaCTLayer(dim, fast_weight, projections=False, qk_affine=True, gate="head",
                                  rope=self.rope if fast_rope else None, v_silu=fast_v_silu)  # fmt: skip

    def rotation(self, h: torch.Tensor, cache: Optional[MixerCache], packing: Optional[Packing]) -> Rotation:
        """The RoPE cos and sin at the positions of h: [B, L, ·] (continuing ``cache``, or the packed
        documents' own positions), for the attention's and the fast q, k alike."""
        if packing is not None:
            positions = packing.positions
        else:
            pos = 0 if cache is None else cache.pos
            positions = torch.arange(pos, pos + h.size(1), device=h.device)
        return self.rope.rotation(positions, like=h)

    def forward(
        self,
        h: torch.Tensor,
        cache: Optional[MixerCache] = None,
        packing: Optional[Packing] = None,
        rotation: Optional[Rotation] = None,
    ) -> tuple[torch.Tensor, Optional[MixerCache]]:
        """h: [B, L, dim] (normed layer input) -> y: [B, L, dim], and the advanced cache.

        Without a cache the tokens are a whole sequence from position 0 and no cache is returned;
        with one they continue the sequence the cache describes (``MixerCache()`` starts one).
        With ``packing`` (B = 1, no cache) the row holds packed documents, each computed as if alone.
        ``rotation``: :meth:`rotation` of these inputs when the caller shares it between layers.
        """
        pos = 0 if cache is None else cache.pos
        if rotation is None:
            rotation = self.rotation(h, cache, packing)
        q, k, v = self.qkv(h).chunk(3, dim=-1)
        if packing is None:
            out, kv = self._attention(q, k, v, rotation, cache)
        else:
            out, kv = self._packed_attention(q, k, v, rotation, packing), (None, None)
        fast = pending = None
        if self.lact is not None:
            cu_seqlens = None if packing is None else packing.cu_seqlens
            lact, fast, pending = self.lact.causal(h, qkv=(q, k, v), positions=rotation, cache=cache,
                                                   cu_seqlens=cu_seqlens)  # fmt: skip
            out = out + lact
        y = self.o_proj(out)
        if cache is None:
            return y, None
        return y, MixerCache(pos + h.size(1), fast, pending, *kv)

    def _packed_attention(self, q, k, v, rotation: Rotation, packing: Packing) -> torch.Tensor:
        """Window (or full) causal attention inside each packed document: q, k, v: [1, T, dim] -> [1, T, dim]."""
        q, k, v = self._rotated_heads(q, k, v, rotation)
        o = attend(q, k, v, blocks=packing.attention_blocks(self.window))
        return self._merge_heads(o)

    def _attention(self, q, k, v, rotation: Rotation, cache: Optional[MixerCache]):
        """Window attention of the new tokens over the cached and new keys.

        q, k, v: [B, L, dim] -> ([B, L, dim], the cache's key and value buffers (:mod:`.kv_buffer`), or
        (None, None) without a cache). A single token (a decoding step) writes its key into the
        buffer and attends over the buffer's valid slots: no mask, no concatenation.
        """
        q, k, v = self._rotated_heads(q, k, v, rotation)
        if cache is None:
            return self._merge_heads(window_attention(q, k, v, self.window)), (None, None)
        pos, cached = cache.pos, None if cache.keys is None else (cache.keys, cache.values)
        kv = kv_buffer.reserve(cached, pos, (k, v), self.window)
        if q.size(2) == 1:
            kv_buffer.write(kv, pos, (k, v), self.window)
            o = attend(q, *kv_buffer.valid(kv, pos + 1, self.window))
        else:
            context, k_offset = (k, v), pos
            if cached is not None:  # read the context before the new tokens overwrite ring slots
                (ck, cv), k_offset = kv_buffer.in_order(kv, pos, self.window)
                context = (torch.cat([ck, k], dim=2), torch.cat([cv, v], dim=2))
            o = window_attention(q, *context, self.window, q_offset=pos, k_offset=k_offset)
            kv_buffer.write(kv, pos, (k, v), self.window)
        return self._merge_heads(o), kv

    def _rotated_heads(self, q, k, v, rotation: Rotation) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q, k, v: [B, L, dim] -> [B, heads, L, Dh] each, q and k rotated (stacked: one rotation for both)."""
        qk = torch.stack([q, k]).unflatten(-1, (self.num_attn_heads, -1))  # [2, B, L, heads, Dh]
        q, k = self.rope.apply(qk, rotation, layout="blhd").transpose(2, 3).unbind(0)
        return q, k, v.unflatten(-1, (self.num_attn_heads, -1)).transpose(1, 2)

    @staticmethod
    def _merge_heads(o: torch.Tensor) -> torch.Tensor:
        """[B, heads, L, Dh] -> [B, L, dim]."""
        return o.transpose(1, 2).flatten(-2)


class HybridBlock(nn.Module):
    """Llama-style decoder block: x + mixer(RMSNorm(x)), then x + SwiGLU(RMSNorm(x)).

    Args:
        mixer: the token mixer (a :class:`HybridLaCTAttention`).
        dim: model width.
        mlp_hidden: hidden width of the SwiGLU MLP.
        norm_eps: eps of the two RMSNorms.
    """

    def __init__(self, mixer: HybridLaCTAttention, dim: int, mlp_hidden: int, *, norm_eps: float = 1e-6):
        super().__init__()
        self.mixer_norm = nn.RMSNorm(dim, eps=norm_eps)
        self.mixer = mixer
        self.mlp_norm = nn.RMSNorm(dim, eps=norm_eps)
        self.mlp = SwiGLUMLP(dim, mlp_hidden)

    def forward(
        self,
        x: torch.Tensor,
        cache: Optional[MixerCache] = None,
        packing: Optional[Packing] = None,
        rotation: Optional[Rotation] = None,
    ) -> tuple[torch.Tensor, Optional[MixerCache]]:
        """x: [B, L, dim] -> [B, L, dim] and the mixer's advanced cache (None without one); ``rotation``
        (optional) as the mixer takes it."""
        y, cache = self.mixer(self.mixer_norm(x), cache, packing, rotation)
        x = x + y
        return x + self.mlp(self.mlp_norm(x)), cache
