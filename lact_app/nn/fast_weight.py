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
from torch import nn

from ..ops import LM_NS_COEFFS, FastWeights, Op, apply_fast_weights, classic_ns_coeffs, lact_swiglu
from .config import FastWeightConfig
from .fast_inputs import FastInputs
from .precision import autocast_off

Coeffs = Sequence[tuple[float, float, float]]

#: Scale of the fixed identity added to the low-rank w0/w2 (LM reference).
LOW_RANK_IDENTITY = 0.5


def resolve_ns_coeffs(ns_coeffs: Union[str, Coeffs], ns_steps: int = 5) -> tuple[tuple[float, float, float], ...]:
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
    return x.unflatten(-1, (num_heads, -1)).transpose(1, 2).flatten(0, 1)


def fold_heads(x: torch.Tensor) -> torch.Tensor:
    """Per-head scalars [B, L, n_h, j] -> [B * n_h, L, j] (lr: j = 3, momentum: j = 1)."""
    return x.transpose(1, 2).flatten(0, 1)


def merge_heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """[B * n_h, L, D] -> [B, L, n_h * D]."""
    return x.unflatten(0, (-1, num_heads)).transpose(1, 2).flatten(-2)


class FastWeightBranch(nn.Module):
    """Learned initial fast weights of ``config.heads`` SwiGLU heads and the schedule that runs them.

    Args:
        head_dim: D, the fast-weight head dim (input and output width of each SwiGLU).
        config: the fast-weight knobs (heads, ``inter_multi``, ``w_init``, Muon, weight norm …).
        detach_norms: stop the outer gradient through the initial row norms (NVS reference).
        state_dtype: dtype of the fast-weight state (fp32 also under bf16 autocast).
    """

    def __init__(
        self,
        head_dim: int,
        config: FastWeightConfig,
        *,
        detach_norms: bool = False,
        state_dtype: torch.dtype = torch.float32,
    ):
        super().__init__()
        self.num_heads, self.head_dim = config.heads, head_dim
        self.hidden = int(config.inter_multi * head_dim)
        if self.hidden < 1:
            raise ValueError(f"fast_weight.inter_multi * head_dim must give a hidden width >= 1, got {self.hidden}")
        self.w_init, self.low_rank, self.init_gain = config.w_init, config.low_rank, config.init_gain
        self.use_muon, self.ns_coeffs = config.use_muon, resolve_ns_coeffs(config.ns_coeffs, config.ns_steps)
        # "float32": no cast, the iteration runs in the state dtype (fp32, or fp64 in exactness tests)
        self.ns_dtype = torch.bfloat16 if config.ns_dtype == "bfloat16" else None
        self.weight_norm, self.detach_norms, self.state_dtype = config.weight_norm, detach_norms, state_dtype
        self.recompute = config.recompute
        n, h, d, r = config.heads, self.hidden, head_dim, config.low_rank
        if config.w_init == "low_rank":  # learned factors; the identity term is fixed (LM reference)
            self.w0_left = nn.Parameter(torch.empty(n, h, r))
            self.w0_right = nn.Parameter(torch.empty(n, r, d))
            self.w2_left = nn.Parameter(torch.empty(n, h, r))
            self.w2_right = nn.Parameter(torch.empty(n, r, d))
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
        self, inputs: FastInputs, schedule: Sequence[Op], state: Optional[FastWeights] = None
    ) -> tuple[torch.Tensor, FastWeights]:
        """Run ``schedule`` over one sequence piece.

        Args:
            inputs: q, k, v [B, L, n_h * D] already preprocessed (silu / l2 / RoPE as the task
                wants); lr [B, L, n_h, 3] positive per-token lrs of (w0, w1, w2); momentum
                [B, L, n_h, 1] in (0, 1) or None.
            schedule: ops over [0, L) (``lact_app.ops.causal_schedule`` …).
            state: the state returned by a previous call (streaming), or None to start from the
                learned initial weights.

        Returns:
            o: [B, L, n_h * D] (zero where no op applies) and the new state ([B * n_h, ·, ·]).
        """
        n = self.num_heads
        if state is None:
            state = self.initial_state(inputs.k.size(0))
        o, state = lact_swiglu(
            state,
            split_heads(inputs.q, n),
            split_heads(inputs.k, n),
            split_heads(inputs.v, n),
            fold_heads(inputs.lr),
            schedule=schedule,
            momentum=None if inputs.momentum is None else fold_heads(inputs.momentum),
            use_muon=self.use_muon,
            weight_norm=self.weight_norm,
            ns_coeffs=self.ns_coeffs,
            ns_dtype=self.ns_dtype,
            recompute=self.recompute,
        )
        return merge_heads(o, n), state

    def apply_only(self, q: torch.Tensor, state: FastWeights) -> torch.Tensor:
        """The fast weights applied to preprocessed queries, q: [B, L, n_h * D] -> o: [B, L, n_h * D].

        What an apply-only op computes, without the schedule machinery (validation, assembly),
        which costs more than the maths for a decoding step's single token.
        """
        return merge_heads(apply_fast_weights(state, split_heads(q, self.num_heads)), self.num_heads)

    def update_only(self, inputs: FastInputs, state: FastWeights) -> FastWeights:
        """One inner step of ``state`` on every token of ``inputs`` (k, v, lr, momentum [B, L, ·]),
        through the op (the completed chunk of a causal stream)."""
        update = [Op(0, inputs.k.size(1), update=True, apply=False)]
        _, state = self(inputs._replace(q=inputs.k), update, state)  # an update-only op reads no query
        return state

    def extra_repr(self) -> str:
        return (
            f"num_heads={self.num_heads}, head_dim={self.head_dim}, hidden={self.hidden}, "
            f"w_init={self.w_init!r}, use_muon={self.use_muon}, ns_dtype={self.ns_dtype}, "
            f"weight_norm={self.weight_norm}, recompute={self.recompute}"
        )
