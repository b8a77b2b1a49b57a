"""The causal hybrid layer of the LaCT language model: sliding-window attention + a LaCT branch.

One qkv projection feeds causal sliding-window attention (RoPE) and a causal LaCT branch
(apply-then-update chunks, LACT_SPEC.md §1.9(a)); their outputs are summed before one output
projection (LACT_SPEC.md §1.12). The layer runs one-shot (training, teacher forcing) or streams:
given a :class:`LayerCache` it continues the sequence where the cache left off, which is what
generation does one token at a time. The cache holds what a causal layer needs from the past and
nothing more, so its size and the per-token cost do not grow with the context:

* the fast weights (and momentum buffers) after the last complete chunk,
* the fast-weight inputs (k, v, lr, momentum) of the current incomplete chunk, which update the
  fast weights once the chunk completes (their queries were already applied),
* the rotated keys and values of the last ``window − 1`` tokens (a rolling KV cache).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Optional

import torch
from einops import rearrange
from torch import nn

from ..ops import FastWeights, Op, causal_schedule
from .attention import attend
from .fast_inputs import FastWeightInputs
from .fast_weight import FastWeightBranch
from .masks import causal_window_mask
from .mlp import SwiGLUMLP
from .norms import HeadRMSNorm
from .projections import LRProjection, MomentumProjection, OutputGate
from .rotary import RotaryEmbedding

#: What runs beside the shared-qkv attention: "lact" (window attention + LaCT, the paper's layer),
#: "full_attention" (the layer is plain causal attention over all earlier tokens: the Transformer
#: baseline), "none" (window attention only).
BRANCHES = ("lact", "full_attention", "none")


def window_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    window: Optional[int],
    q_offset: int = 0,
    k_offset: int = 0,
) -> torch.Tensor:
    """Causal (sliding-window) attention of queries at absolute positions ``q_offset ..`` over keys at
    ``k_offset ..``, in query blocks of ``window`` so no [L, L] mask is ever built.

    Args:
        q: [B, heads, Lq, Dh]; k, v: [B, heads, Lk, Dh], the keys must cover every position a
            query may see (``k_offset <= q_offset − window + 1`` or 0, up to the last query).
        window: keys per query including itself; None for full causal attention.

    Returns:
        [B, heads, Lq, Dh].
    """
    Lq = q.size(2)
    if q_offset == k_offset and k.size(2) == Lq and (window is None or window >= Lq):
        return attend(q, k, v, is_causal=True)
    block = Lq if window is None else window
    outs = []
    for s in range(0, Lq, block):
        e = min(s + block, Lq)
        first = q_offset + s
        lo = 0 if window is None else max(0, first - window + 1 - k_offset)
        hi = q_offset + e - k_offset
        mask = causal_window_mask(e - s, window, first, hi - lo, k_offset + lo, device=q.device)
        outs.append(attend(q[:, :, s:e], k[:, :, lo:hi], v[:, :, lo:hi], mask))
    return torch.cat(outs, dim=2)


class PendingChunk(NamedTuple):
    """Fast-weight inputs of the tokens of the current incomplete chunk (their queries are applied).

    k, v: [B, m, n_h * D]; lr: [B, m, n_h, 3]; momentum: [B, m, n_h, 1] or None.
    """

    k: torch.Tensor
    v: torch.Tensor
    lr: torch.Tensor
    momentum: Optional[torch.Tensor]

    def extend(self, other: "PendingChunk") -> "PendingChunk":
        """These tokens followed by ``other``'s."""
        return PendingChunk(*(None if a is None else torch.cat([a, b], dim=1) for a, b in zip(self, other)))

    def tail(self, n: int) -> Optional["PendingChunk"]:
        """The last ``n`` tokens, or None when ``n`` is 0."""
        if n == 0:
            return None
        return PendingChunk(*(None if a is None else a[:, a.size(1) - n :] for a in self))


@dataclass(frozen=True)
class LayerCache:
    """Decoding state of one hybrid layer after ``pos`` tokens (see the module docstring).

    keys, values: [B, heads, ≤ window − 1, Dh] (all earlier tokens for full attention);
    fast: the fast weights after the last complete chunk (None before the first call);
    pending: the incomplete chunk's fast-weight inputs, or None when ``pos`` is a chunk multiple.
    """

    pos: int = 0
    keys: Optional[torch.Tensor] = None
    values: Optional[torch.Tensor] = None
    fast: Optional[FastWeights] = None
    pending: Optional[PendingChunk] = None


def streaming_schedule(n: int, chunk: int, applied: int) -> list[Op]:
    """The causal schedule of ``n`` tokens whose first ``applied`` (< chunk) were applied earlier.

    Chunks stay aligned at the first token; every complete chunk updates, so the returned state
    continues the sequence.
    """
    ops = causal_schedule(n, chunk, update_last=True)
    first = ops[0]
    return [Op(applied, first.end, update=False, apply=True)] + ops[1:]


class HybridLaCTAttention(nn.Module):
    """Shared qkv → causal window attention (RoPE) + causal LaCT branch → sum → output projection.

    The LaCT branch follows the LM reference (LACT_SPEC.md §1.3, §1.10–1.12): per-channel affine
    of q̂, k̂, silu on q, k, v, l2 of q, k per fast-weight head, the attention's RoPE on q, k;
    per-token lrs (base 1e-3) and momentum from the layer input; apply-then-update chunks
    aligned at 0; per-head RMSNorm of the output and a per-head silu gate.

    Args:
        dim: model width d.
        num_attn_heads: attention heads (head dim d / num_attn_heads, also the RoPE width).
        num_lact_heads: fast-weight heads n_h (head dim D = d / n_h, a multiple of the attention
            head dim).
        window: attention window w in tokens (including the token itself).
        chunk: LaCT chunk size c (window >= chunk gives every token its whole chunk through attention).
        branch: ``"lact"``, ``"full_attention"`` or ``"none"`` (see ``BRANCHES``).
        inter_multi: fast-weight hidden width H = inter_multi · D.
        base_lr: per-token inner lr at zero logit.
        use_momentum: momentum on the inner updates (chunk-mean σ(Linear(x))).
        use_muon: Newton–Schulz orthogonalisation of the inner updates.
        w_init: initial fast weights, ``"low_rank"`` (w0, w2 = L·R + 0.5·I, LM reference),
            ``"normal"`` or ``"nvs"``.
        low_rank: rank of the low-rank w0/w2.
        init_gain: gain of the low-rank factors.
        fast_rope: RoPE on the fast q, k (the reference's default; False = its ``ttt_nope``).
        rope_theta: RoPE base of attention and the fast q, k.
    """

    def __init__(
        self,
        dim: int,
        num_attn_heads: int,
        num_lact_heads: int,
        window: int,
        chunk: int,
        branch: str = "lact",
        inter_multi: float = 1.0,
        base_lr: float = 1e-3,
        use_momentum: bool = True,
        use_muon: bool = False,
        w_init: str = "low_rank",
        low_rank: int = 32,
        init_gain: float = 0.5,
        fast_rope: bool = True,
        rope_theta: float = 1e6,
    ):
        super().__init__()
        if branch not in BRANCHES:
            raise ValueError(f"branch must be one of {BRANCHES}, got {branch!r}")
        if dim % num_attn_heads or dim % num_lact_heads:
            raise ValueError(f"dim {dim} must be divisible by num_attn_heads and num_lact_heads")
        if window < 1 or chunk < 1:
            raise ValueError(f"window and chunk must be >= 1, got {window}, {chunk}")
        self.num_attn_heads, self.branch_kind = num_attn_heads, branch
        self.window = None if branch == "full_attention" else window
        self.chunk = chunk
        self.rope = RotaryEmbedding(dim // num_attn_heads, rope_theta)
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.o_proj = nn.Linear(dim, dim, bias=False)
        if branch == "lact":
            self._build_lact(dim, num_lact_heads, inter_multi, base_lr, use_momentum, use_muon,
                             w_init, low_rank, init_gain, fast_rope)

    def _build_lact(self, dim, heads, inter_multi, base_lr, use_momentum, use_muon, w_init, low_rank,
                    init_gain, fast_rope) -> None:
        head_dim = dim // heads
        self.fast_inputs = FastWeightInputs(dim, heads, qk_affine=True, rope=self.rope if fast_rope else None)
        self.lr_proj = LRProjection(dim, heads, base_lr, bias=True)
        self.momentum_proj = MomentumProjection(dim, heads) if use_momentum else None
        self.fast = FastWeightBranch(heads, head_dim, inter_multi, w_init, low_rank, init_gain, use_muon)
        self.fast_norm = HeadRMSNorm(heads, head_dim)
        self.gate = OutputGate(dim, heads, "head")

    def forward(self, h: torch.Tensor, cache: Optional[LayerCache] = None) -> tuple[torch.Tensor, Optional[LayerCache]]:
        """h: [B, L, dim] (normed layer input) -> y: [B, L, dim], and the advanced cache.

        Without a cache the tokens are a whole sequence from position 0 and no cache is returned;
        with one they continue the sequence the cache describes (``LayerCache()`` starts one).
        """
        pos = 0 if cache is None else cache.pos
        positions = torch.arange(pos, pos + h.size(1), device=h.device)
        q, k, v = self.qkv(h).chunk(3, dim=-1)
        out, kv = self._attention(q, k, v, positions, cache)
        fast = pending = None
        if self.branch_kind == "lact":
            lact, fast, pending = self._lact(h, q, k, v, positions, cache)
            out = out + lact
        y = self.o_proj(out)
        if cache is None:
            return y, None
        return y, LayerCache(pos + h.size(1), *kv, fast, pending)

    def _attention(self, q, k, v, positions, cache):
        """Window attention of the new tokens over the cached and new keys.  -> ([B, L, dim], (keys, values))."""
        q, k, v = (rearrange(t, "b l (h d) -> b h l d", h=self.num_attn_heads) for t in (q, k, v))
        q, k = self.rope.apply(q, positions), self.rope.apply(k, positions)
        pos = 0 if cache is None else cache.pos
        if cache is not None and cache.keys is not None:
            k, v = torch.cat([cache.keys, k], dim=2), torch.cat([cache.values, v], dim=2)
        o = window_attention(q, k, v, self.window, pos, pos + q.size(2) - k.size(2))
        kv = (None, None)
        if cache is not None:
            keep = k.size(2) if self.window is None else min(k.size(2), self.window - 1)
            kv = (k[:, :, k.size(2) - keep :], v[:, :, v.size(2) - keep :])
        return rearrange(o, "b h l d -> b l (h d)"), kv

    def _lact(self, h, q, k, v, positions, cache):
        """The gated LaCT branch.  -> (o: [B, L, dim], fast weights, pending chunk) (None, None one-shot)."""
        q, k, v = self.fast_inputs(q, k, v, positions)
        new = PendingChunk(k, v, self.lr_proj(h), None if self.momentum_proj is None else self.momentum_proj(h))
        if cache is None:  # a whole sequence: the last chunk's update would be read by no one
            o, _ = self.fast(q, k, v, new.lr, causal_schedule(q.size(1), self.chunk, update_last=False), new.momentum)
            return self._gated(h, o), None, None
        applied = 0 if cache.pending is None else cache.pending.k.size(1)
        inputs = new if cache.pending is None else cache.pending.extend(new)
        if applied + q.size(1) < self.chunk:  # no chunk completes (most decoding steps): apply only
            o, fast = self.fast(q, k, v, new.lr, [Op(0, q.size(1), update=False, apply=True)], state=cache.fast)
            return self._gated(h, o), fast, inputs
        if applied:  # the incomplete chunk's queries were applied already: pad their slots
            q = torch.cat([q.new_zeros(q.size(0), applied, q.size(2)), q], dim=1)
        n = q.size(1)
        o, fast = self.fast(q, inputs.k, inputs.v, inputs.lr, streaming_schedule(n, self.chunk, applied),
                            inputs.momentum, cache.fast)
        return self._gated(h, o[:, applied:]), fast, inputs.tail(n % self.chunk)

    def _gated(self, h: torch.Tensor, o: torch.Tensor) -> torch.Tensor:
        return self.gate(h, self.fast_norm(o))


class HybridBlock(nn.Module):
    """Llama-style decoder block: x + mixer(RMSNorm(x)), then x + SwiGLU(RMSNorm(x)).

    Args:
        mixer: the token mixer (a :class:`HybridLaCTAttention`).
        dim: model width.
        mlp_hidden: hidden width of the SwiGLU MLP.
        norm_eps: eps of the two RMSNorms.
    """

    def __init__(self, mixer: HybridLaCTAttention, dim: int, mlp_hidden: int, norm_eps: float = 1e-6):
        super().__init__()
        self.mixer_norm = nn.RMSNorm(dim, eps=norm_eps)
        self.mixer = mixer
        self.mlp_norm = nn.RMSNorm(dim, eps=norm_eps)
        self.mlp = SwiGLUMLP(dim, mlp_hidden)

    def forward(self, x: torch.Tensor, cache: Optional[LayerCache] = None) -> tuple[torch.Tensor, Optional[LayerCache]]:
        """x: [B, L, dim] -> [B, L, dim] and the mixer's advanced cache (None without one)."""
        y, cache = self.mixer(self.mixer_norm(x), cache)
        x = x + y
        return x + self.mlp(self.mlp_norm(x)), cache
