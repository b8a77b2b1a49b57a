"""The standalone LaCT layer: its own projections around a :class:`FastWeightBranch`."""

from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
from torch import nn

from ..ops import FastWeights, Op
from .fast_inputs import FastWeightInputs
from .fast_weight import Coeffs, FastWeightBranch
from .norms import HeadRMSNorm
from .projections import GATES, LRProjection, MomentumProjection, OutputGate
from .rotary import RotaryEmbedding


class LaCTLayer(nn.Module):
    """Large-chunk test-time-training layer (LACT_SPEC.md §1).

    x → fused qkv → :class:`FastWeightInputs` (affine, silu, l2, RoPE) → :class:`FastWeightBranch`
    driven by per-token lrs (and momentum) projected from x → per-head RMSNorm → gate → out proj.

    Args:
        dim: model width, = n_h * D.
        num_heads: n_h, the number of fast-weight heads.
        inter_multi: fast-weight hidden width multiplier, H = int(inter_multi * D).
        base_lr: per-token lr at zero logit.
        lr_bias: learn a bias in the lr projection.
        use_momentum: per-token momentum σ(Linear(x)), averaged per chunk.
        use_muon: orthogonalise updates with Newton–Schulz.
        ns_coeffs: ``"lm"`` (5-step LM schedule) or ``"classic"`` (Muon quintic × ``ns_steps``).
        ns_steps: steps of the classic schedule.
        weight_norm: restore each row's initial norm after every update.
        detach_norms: no outer gradient through those initial norms.
        qk_l2_norm: l2-normalise the fast q, k per head.
        silu_q: silu on the fast q.
        silu_k: silu on the fast k.
        silu_v: silu on the fast v.
        qk_affine: learned per-channel scale/offset ``[dim, 2]`` on the fast q, k.
        output_norm: per-head RMSNorm (weight [D], eps 1e-5) of the branch output.
        gate: ``"none"``, ``"head"`` (silu(Linear(dim→n_h)) per head) or ``"token"``
            (silu(Linear(dim→1)), zero-initialised: the layer outputs exactly zero at init).
        rope: rotary embedding of the fast q, k (its head_dim must divide D), or None.
        w_init: initial fast weights, ``"normal"``, ``"nvs"`` or ``"low_rank"``.
        low_rank: rank of the low-rank w0/w2.
        init_gain: gain of the low-rank factors.
        state_dtype: dtype of the fast-weight state.
        out_proj: end with a Linear(dim→dim, no bias); otherwise return the gated output.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        inter_multi: float = 1.0,
        base_lr: float = 0.01,
        lr_bias: bool = True,
        use_momentum: bool = False,
        use_muon: bool = False,
        ns_coeffs: Union[str, Coeffs] = "lm",
        ns_steps: int = 5,
        weight_norm: bool = True,
        detach_norms: bool = False,
        qk_l2_norm: bool = True,
        silu_q: bool = True,
        silu_k: bool = True,
        silu_v: bool = True,
        qk_affine: bool = False,
        output_norm: bool = True,
        gate: str = "none",
        rope: Optional[RotaryEmbedding] = None,
        w_init: str = "normal",
        low_rank: int = 32,
        init_gain: float = 0.5,
        state_dtype: torch.dtype = torch.float32,
        out_proj: bool = True,
    ):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        if gate not in GATES:
            raise ValueError(f"gate must be one of {GATES}, got {gate!r}")
        head_dim = dim // num_heads
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.inputs = FastWeightInputs(dim, num_heads, silu_q, silu_k, silu_v, qk_affine, qk_l2_norm, rope)
        self.lr_proj = LRProjection(dim, num_heads, base_lr, lr_bias)
        self.momentum_proj = MomentumProjection(dim, num_heads) if use_momentum else None
        self.branch = FastWeightBranch(
            num_heads, head_dim, inter_multi, w_init, low_rank, init_gain,
            use_muon, ns_coeffs, ns_steps, weight_norm, detach_norms, state_dtype,
        )  # fmt: skip
        self.output_norm = HeadRMSNorm(num_heads, head_dim) if output_norm else nn.Identity()
        self.gate = OutputGate(dim, num_heads, gate) if gate != "none" else None
        self.out_proj = nn.Linear(dim, dim, bias=False) if out_proj else nn.Identity()

    def forward(
        self,
        x: torch.Tensor,
        schedule: Sequence[Op],
        state: Optional[FastWeights] = None,
        positions: Optional[torch.Tensor] = None,
    ) -> tuple[torch.Tensor, FastWeights]:
        """Run the layer over one sequence piece.

        Args:
            x: [B, L, dim].
            schedule: fast-weight ops over [0, L) (``causal_schedule(L, chunk)``,
                ``bidirectional_schedule(L)``, an NVS or interleaved op list).
            state: the state of a previous call to continue from (streaming), or None.
            positions: rope positions of the tokens ([L] / [B, L]; 3-D: [(B,) L, 3]); defaults to
                0..L−1 for 1-D RoPE, so pass offsets when streaming.

        Returns:
            y: [B, L, dim] and the fast-weight state after the last op.
        """
        q, k, v = self.inputs(*self.qkv(x).chunk(3, dim=-1), positions=positions)
        lr = self.lr_proj(x)
        momentum = None if self.momentum_proj is None else self.momentum_proj(x)
        o, state = self.branch(q, k, v, lr, schedule, momentum, state)
        o = self.output_norm(o)
        if self.gate is not None:
            o = self.gate(x, o)
        return self.out_proj(o), state
