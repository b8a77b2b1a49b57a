"""The projection-free fast-weight branch: learned initial SwiGLU fast weights of ``n_h`` heads.

Inputs arrive already projected and preprocessed (see :mod:`lact_app.nn.fast_inputs`), so the
standalone :class:`~lact_app.nn.LaCTLayer` and the hybrid blocks that share a qkv projection with
attention use the same branch. The learned parameters are the *initial* state ``W^(0)``; the
evolving fast weights are activations (LACT_SPEC.md §1.1).
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import torch
from einops import rearrange
from torch import nn

from ..ops import LM_NS_COEFFS, FastWeights, Op, classic_ns_coeffs, lact_swiglu
from .precision import autocast_off

Coeffs = Sequence[tuple[float, float, float]]

#: Initialisation schemes of the initial fast weights (LACT_SPEC.md §1.2).
W_INITS = ("normal", "nvs", "low_rank")

#: Scale of the fixed identity added to the low-rank w0/w2 (LM reference).
LOW_RANK_IDENTITY = 0.5


def resolve_ns_coeffs(
    ns_coeffs: Union[str, Coeffs], ns_steps: int = 5
) -> tuple[tuple[float, float, float], ...]:
    """Newton–Schulz coefficients from a name or an explicit list.

    Args:
        ns_coeffs: ``"lm"`` (the reference LM 5-step schedule; ``ns_steps`` does not apply),
            ``"classic"`` (the Muon quintic repeated ``ns_steps`` times, NVS/video) or a sequence of
            ``(a, b, c)`` triples.
        ns_steps: number of steps of the classic schedule.
    """
    if isinstance(ns_coeffs, str):
        if ns_coeffs == "lm":
            return LM_NS_COEFFS
        if ns_coeffs == "classic":
            return classic_ns_coeffs(ns_steps)
        raise ValueError(f"ns_coeffs must be 'lm', 'classic' or a list of (a, b, c), got {ns_coeffs!r}")
    return tuple((float(a), float(b), float(c)) for a, b, c in ns_coeffs)


def split_heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """[B, L, n_h * D] -> [B * n_h, L, D] (heads folded into the batch, batch-major like ``repeat``)."""
    return rearrange(x, "b l (h d) -> (b h) l d", h=num_heads)


def fold_heads(x: torch.Tensor) -> torch.Tensor:
    """Per-head scalars [B, L, n_h, j] -> [B * n_h, L, j] (lr: j = 3, momentum: j = 1)."""
    return rearrange(x, "b l h j -> (b h) l j")


def merge_heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """[B * n_h, L, D] -> [B, L, n_h * D]."""
    return rearrange(x, "(b h) l d -> b l (h d)", h=num_heads)


class FastWeightBranch(nn.Module):
    """Learned initial fast weights of ``num_heads`` SwiGLU heads and the schedule that runs them.

    Args:
        num_heads: n_h, the number of fast-weight heads.
        head_dim: D, the fast-weight head dim (input and output width of each SwiGLU).
        inter_multi: hidden width multiplier, H = int(inter_multi * D).
        w_init: ``"normal"`` (w0, w2 ~ N(0,1)/√D, w1 ~ N(0,1)/√H: minimal and video code),
            ``"nvs"`` (the same × √2) or ``"low_rank"`` (w0, w2 = L·R + 0.5·I with learned factors
            of rank ``low_rank`` and gain ``init_gain``; w1 ~ N(0,1)/√H: LM code).
        low_rank: rank r of the low-rank w0/w2.
        init_gain: gain g of the low-rank factors (L ~ N(0, (g/√r)²), R ~ N(0, (g/√D)²)).
        use_muon: orthogonalise each update with Newton–Schulz.
        ns_coeffs: ``"lm"``, ``"classic"`` or explicit (a, b, c) triples (see :func:`resolve_ns_coeffs`).
        ns_steps: steps of the classic schedule.
        weight_norm: rescale each row to its initial norm after every update.
        detach_norms: stop the outer gradient through those initial norms (NVS reference).
        state_dtype: dtype of the fast-weight state (fp32 also under bf16 autocast).
    """

    def __init__(
        self,
        num_heads: int,
        head_dim: int,
        inter_multi: float = 1.0,
        w_init: str = "normal",
        low_rank: int = 32,
        init_gain: float = 0.5,
        use_muon: bool = False,
        ns_coeffs: Union[str, Coeffs] = "lm",
        ns_steps: int = 5,
        weight_norm: bool = True,
        detach_norms: bool = False,
        state_dtype: torch.dtype = torch.float32,
    ):
        super().__init__()
        if w_init not in W_INITS:
            raise ValueError(f"w_init must be one of {W_INITS}, got {w_init!r}")
        self.num_heads, self.head_dim = num_heads, head_dim
        self.hidden = int(inter_multi * head_dim)
        if self.hidden < 1:
            raise ValueError(f"inter_multi * head_dim must give a hidden width >= 1, got {self.hidden}")
        self.w_init, self.low_rank, self.init_gain = w_init, low_rank, init_gain
        self.use_muon, self.ns_coeffs = use_muon, resolve_ns_coeffs(ns_coeffs, ns_steps)
        self.weight_norm, self.detach_norms, self.state_dtype = weight_norm, detach_norms, state_dtype
        n, h, d = num_heads, self.hidden, head_dim
        if w_init == "low_rank":  # learned factors; the identity term is fixed (LM reference)
            self.w0_left = nn.Parameter(torch.empty(n, h, low_rank))
            self.w0_right = nn.Parameter(torch.empty(n, low_rank, d))
            self.w2_left = nn.Parameter(torch.empty(n, h, low_rank))
            self.w2_right = nn.Parameter(torch.empty(n, low_rank, d))
        else:
            self.w0, self.w2 = nn.Parameter(torch.empty(n, h, d)), nn.Parameter(torch.empty(n, h, d))
        self.w1 = nn.Parameter(torch.empty(n, d, h))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Draw the initial fast weights from the ``w_init`` scheme (LACT_SPEC.md §1.2)."""
        gain = math.sqrt(2.0) if self.w_init == "nvs" else 1.0
        nn.init.normal_(self.w1, std=gain / math.sqrt(self.hidden))
        if self.w_init == "low_rank":
            for left, right in ((self.w0_left, self.w0_right), (self.w2_left, self.w2_right)):
                nn.init.normal_(left, std=self.init_gain / math.sqrt(self.low_rank))
                nn.init.normal_(right, std=self.init_gain / math.sqrt(self.head_dim))
        else:
            nn.init.normal_(self.w0, std=gain / math.sqrt(self.head_dim))
            nn.init.normal_(self.w2, std=gain / math.sqrt(self.head_dim))

    def initial_weights(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The initial fast weights per head: (w0: [n_h, H, D], w1: [n_h, D, H], w2: [n_h, H, D])."""
        if self.w_init != "low_rank":
            return self.w0, self.w1, self.w2
        with autocast_off(self.w1):  # compose the factors in their own dtype, not bf16
            eye = torch.eye(self.hidden, self.head_dim, device=self.w1.device, dtype=self.w0_left.dtype)
            w0 = self.w0_left @ self.w0_right + LOW_RANK_IDENTITY * eye
            w2 = self.w2_left @ self.w2_right + LOW_RANK_IDENTITY * eye
        return w0, self.w1, w2

    def initial_state(self, batch_size: int) -> FastWeights:
        """The initial state of a batch: the per-head weights repeated to [batch_size * n_h, ·, ·]."""
        w0, w1, w2 = (w.repeat(batch_size, 1, 1) for w in self.initial_weights())
        return FastWeights.from_initial(w0, w1, w2, state_dtype=self.state_dtype, detach_norms=self.detach_norms)

    def forward(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        lr: torch.Tensor,
        schedule: Sequence[Op],
        momentum: Optional[torch.Tensor] = None,
        state: Optional[FastWeights] = None,
    ) -> tuple[torch.Tensor, FastWeights]:
        """Run ``schedule`` over one sequence piece.

        Args:
            q, k, v: [B, L, n_h * D], already preprocessed (silu / l2 / RoPE as the task wants).
            lr: [B, L, n_h, 3] positive per-token lrs of (w0, w1, w2).
            schedule: ops over [0, L) (``lact_app.ops.causal_schedule`` …).
            momentum: [B, L, n_h, 1] in (0, 1), or None for no momentum.
            state: the state returned by a previous call (streaming), or None to start from the
                learned initial weights.

        Returns:
            o: [B, L, n_h * D] (zero where no op applies) and the new state ([B * n_h, ·, ·]).
        """
        n = self.num_heads
        if state is None:
            state = self.initial_state(q.size(0))
        o, state = lact_swiglu(
            state,
            split_heads(q, n),
            split_heads(k, n),
            split_heads(v, n),
            fold_heads(lr),
            schedule,
            None if momentum is None else fold_heads(momentum),
            self.use_muon,
            self.weight_norm,
            ns_coeffs=self.ns_coeffs,
        )
        return merge_heads(o, n), state

    def extra_repr(self) -> str:
        return (
            f"num_heads={self.num_heads}, head_dim={self.head_dim}, hidden={self.hidden}, "
            f"w_init={self.w_init!r}, use_muon={self.use_muon}, weight_norm={self.weight_norm}"
        )
