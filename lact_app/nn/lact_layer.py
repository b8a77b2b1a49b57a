"""`LaCTLayer`: the one fast-weight mixer of every task (LACT_SPEC.md §1).

It owns everything around the functional op: the q/k/v preprocessing, the per-token learning rate
and momentum heads, the learned initial fast weights, the per-head output norm and the gate (and,
when it has its own, the qkv and output projections). Tasks differ only in the schedule they pass
(an ``Op`` list: causal chunks, one update on the NVS input views, the video interleaving) and in
what surrounds the layer:

    LM     shared qkv with window attention; silu, q/k affine, 1-D RoPE; momentum; head gate
    video  shared (RMS-normed) qkv with chunk attention; q/k affine, 3-D RoPE; token gate
    NVS    its own projections; silu; no RoPE; Muon (classic), detached initial norms
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..ops import FastWeights, Op, causal_schedule, packed_causal_schedule
from .cache import MixerCache, PendingChunk
from .config import FastWeightConfig
from .fast_inputs import FastInputs, FastWeightInputs
from .fast_weight import FastWeightBranch
from .norms import HeadRMSNorm
from .projections import GATES, LRProjection, MomentumProjection, OutputGate
from .rotary import RotaryEmbedding

QKV = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def streaming_schedule(n: int, chunk: int, applied: int) -> list[Op]:
    """The causal schedule of ``n`` tokens whose first ``applied`` (< chunk) were applied earlier.

    Chunks stay aligned at the first token; every complete chunk updates, so the returned state
    continues the sequence.
    """
    ops = causal_schedule(n, chunk, update_last=True)
    return [Op(applied, ops[0].end, update=False, apply=True)] + ops[1:]


class LaCTLayer(nn.Module):
    """Large-chunk test-time-training layer.

    x (→ own qkv, or the caller's shared q̂, k̂, v̂) → :class:`FastWeightInputs` (affine, silu, l2,
    RoPE) → :class:`FastWeightBranch` driven by per-token lrs (and momentum) projected from x →
    per-head RMSNorm → gate (→ own output projection).

    Args:
        dim: width, = ``config.heads`` · D.
        config: the fast-weight knobs (:class:`~lact_app.nn.FastWeightConfig`).
        projections: own qkv and output projections (Linear dim → 3·dim and dim → dim, no bias);
            False when the caller shares its attention's qkv and output projection.
        silu: silu on the fast q, k and v.
        v_silu: with ``silu``, also on v (False: the official LM's ``no_v_silu``).
        qk_affine: learned per-channel scale/offset ``[dim, 2]`` on the fast q̂, k̂.
        gate: ``"none"``, ``"head"`` (silu(Linear(dim → n_h)) per head) or ``"token"``
            (silu(Linear(dim → 1)), zero-initialised: the layer starts switched off).
        norm_eps: eps of the per-head RMSNorm of the output.
        rope: rotary embedding of the fast q, k (its head_dim must divide D), or None.
        detach_norms: no outer gradient through the initial row norms (NVS reference).
        state_dtype: dtype of the fast-weight state.
    """

    def __init__(
        self,
        dim: int,
        config: FastWeightConfig,
        *,
        projections: bool = True,
        silu: bool = True,
        v_silu: bool = True,
        qk_affine: bool = False,
        gate: str = "none",
        norm_eps: float = 1e-5,
        rope: Optional[RotaryEmbedding] = None,
        detach_norms: bool = False,
        state_dtype: torch.dtype = torch.float32,
    ):
        super().__init__()
        heads = config.heads
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by fast_weight.heads {heads}")
        if gate not in GATES:
            raise ValueError(f"gate must be one of {GATES}, got {gate!r}")
        head_dim = dim // heads
        self.chunk = config.chunk
        self.qkv = nn.Linear(dim, 3 * dim, bias=False) if projections else None
        self.inputs = FastWeightInputs(dim, heads, silu=silu, v_silu=v_silu, qk_affine=qk_affine, rope=rope)
        self.lr_proj = LRProjection(dim, heads, config.base_lr)
        self.momentum_proj = MomentumProjection(dim, heads) if config.use_momentum else None
        self.branch = FastWeightBranch(head_dim, config, detach_norms=detach_norms, state_dtype=state_dtype)
        self.output_norm = HeadRMSNorm(heads, head_dim, eps=norm_eps)
        self.gate = OutputGate(dim, heads, gate) if gate != "none" else None
        self.out_proj = nn.Linear(dim, dim, bias=False) if projections else None

    def fast_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """(name, parameter) of the fast-weight machinery: everything but the qkv / output
        projections (what the video reference's fast-weight lr multiplier covers)."""
        skip = {id(p) for m in (self.qkv, self.out_proj) if m is not None for p in m.parameters()}
        return [(n, p) for n, p in self.named_parameters() if id(p) not in skip]

    def fast_qkv(self, x: torch.Tensor, qkv: Optional[QKV], positions: Optional[torch.Tensor]) -> QKV:
        """x: [B, L, dim] (and the shared q̂, k̂, v̂ [B, L, dim] when the layer has no projections)
        -> the fast q, k, v [B, L, dim] (affine, silu, l2, RoPE). ``positions`` (or their RoPE
        ``Rotation``) go to the RoPE."""
        if qkv is None:
            if self.qkv is None:
                raise ValueError("this LaCTLayer shares its caller's projections: pass qkv")
            qkv = self.qkv(x).chunk(3, dim=-1)
        return self.recomputed(self.inputs, *qkv, positions=positions)

    def step_sizes(self, x: torch.Tensor) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """x: [B, L, dim] -> the per-token lrs [B, L, n_h, 3] and momentum [B, L, n_h, 1] (or None)."""
        return self.lr_proj(x), None if self.momentum_proj is None else self.momentum_proj(x)

    def fast_inputs(self, x: torch.Tensor, qkv: Optional[QKV], positions: Optional[torch.Tensor]) -> FastInputs:
        """x: [B, L, dim] (and the shared q̂, k̂, v̂) -> the op's per-token inputs (see :meth:`fast_qkv`)."""
        return FastInputs(*self.fast_qkv(x, qkv, positions), *self.step_sizes(x))

    def chunk_inputs(self, tokens: PendingChunk, q: Optional[torch.Tensor] = None) -> FastInputs:
        """The op's inputs of a causal stream's tokens (k, v, x [B, n, ·]) with queries q [B, n, dim]
        (None: update only), their step sizes computed from x for all of them at once."""
        return FastInputs(q, tokens.k, tokens.v, *self.step_sizes(tokens.x))

    def finish(self, x: torch.Tensor, o: torch.Tensor) -> torch.Tensor:
        """Branch output o: [B, L, dim] -> per-head norm -> gate (from x: [B, L, dim]) -> out proj."""
        o = self.recomputed(self.norm_and_gate, x, o)
        return o if self.out_proj is None else self.out_proj(o)

    def norm_and_gate(self, x: torch.Tensor, o: torch.Tensor) -> torch.Tensor:
        """o: [B, L, dim] -> per-head RMSNorm, then the gate from x: [B, L, dim]."""
        o = self.output_norm(o)
        return o if self.gate is None else self.gate(x, o)

    def recomputed(self, fn: Callable, *args: torch.Tensor, **kwargs) -> torch.Tensor:
        """``fn(*args, **kwargs)``, recomputed in the backward when the op recomputes too.

        The q/k/v preprocessing (affine, silu, l2, RoPE) and the output norm and gate are cheap
        elementwise work whose intermediates would otherwise be saved for every token; with
        ``fast_weight.recompute`` only their inputs are kept (same values and gradients).
        """
        if self.branch.recompute and torch.is_grad_enabled():
            return checkpoint(fn, *args, use_reentrant=False, **kwargs)
        return fn(*args, **kwargs)

    def forward(
        self,
        x: torch.Tensor,
        schedule: Sequence[Op],
        *,
        qkv: Optional[QKV] = None,
        positions: Optional[torch.Tensor] = None,
        state: Optional[FastWeights] = None,
    ) -> tuple[torch.Tensor, FastWeights]:
        """Run the layer over one sequence piece.

        Args:
            x: [B, L, dim].
            schedule: fast-weight ops over [0, L) (``causal_schedule(L, chunk)``,
                ``bidirectional_schedule(L)``, an NVS or interleaved op list).
            qkv: the caller's q̂, k̂, v̂ [B, L, dim] (layers without projections only).
            positions: rope positions of the tokens ([L] / [B, L]; 3-D: [(B,) L, 3]); defaults to
                0..L−1 for 1-D RoPE, so pass offsets when streaming.
            state: the state of a previous call to continue from (streaming), or None.

        Returns:
            y: [B, L, dim] and the fast-weight state after the last op.
        """
        o, state = self.branch(self.fast_inputs(x, qkv, positions), schedule, state)
        return self.finish(x, o), state

    def causal(
        self,
        x: torch.Tensor,
        *,
        qkv: Optional[QKV] = None,
        positions: Optional[torch.Tensor] = None,
        cache: Optional[MixerCache] = None,
        cu_seqlens: Optional[Sequence[int]] = None,
    ) -> tuple[torch.Tensor, Optional[FastWeights], Optional[PendingChunk]]:
        """Causal apply-then-update chunks of ``config.chunk`` tokens aligned at 0 (LACT_SPEC.md §1.9(a)).

        Without a cache x is a whole sequence (the last chunk's update is read by no one, so it is
        skipped). With one, x continues the sequence: the queries of the new tokens read the
        cached fast weights until their chunk completes; the incomplete chunk's tokens are kept
        (``pending``, a :class:`~lact_app.nn.cache.PendingChunk`: a preallocated buffer of one chunk,
        written in place, whose first ``cache.pos % chunk`` tokens are valid) and update the fast
        weights when it completes. Their lrs and momentum are computed then, for the whole chunk at
        once: a single-token step runs no lr or momentum head.

        With ``cu_seqlens`` (no cache) x packs documents ``[cu_seqlens[i], cu_seqlens[i + 1])``:
        chunks align at each document's start and the fast weights restart from the initial ones.

        Returns:
            y: [B, L, dim]; the fast weights and the pending inputs to cache (None without a cache).
        """
        if self.chunk is None:
            raise ValueError("a causal LaCT layer needs fast_weight.chunk")
        L = x.size(1)
        if cache is None:
            if cu_seqlens is None:
                schedule = causal_schedule(L, self.chunk, update_last=False)
            else:
                schedule = packed_causal_schedule(cu_seqlens, self.chunk, update_last=False)
            o, _ = self.branch(self.fast_inputs(x, qkv, positions), schedule)
            return self.finish(x, o), None, None
        applied = cache.pos % self.chunk  # tokens of the incomplete chunk, applied already
        fast = self.branch.initial_state(x.size(0)) if cache.fast is None else cache.fast
        q, k, v = self.fast_qkv(x, qkv, positions)
        new = PendingChunk(k, v, x)
        pending = new.buffer(self.chunk) if cache.pending is None else cache.pending
        if applied + L <= self.chunk:  # within the current chunk (every decoding step): apply, then
            pending.write(new, applied)  # update once the chunk completes
            o = self.branch.apply_only(q, fast)
            if applied + L == self.chunk:
                fast = self.branch.update_only(self.chunk_inputs(pending), fast)
            return self.finish(x, o), fast, pending
        if applied:  # the incomplete chunk's queries were applied already: pad their slots
            new = pending.head(applied).extend(new)
            q = torch.cat([q.new_zeros(q.size(0), applied, q.size(2)), q], dim=1)
        n = q.size(1)
        o, fast = self.branch(self.chunk_inputs(new, q), streaming_schedule(n, self.chunk, applied), fast)
        pending.write(new.tail(n % self.chunk), 0)
        return self.finish(x, o[:, applied:]), fast, pending
