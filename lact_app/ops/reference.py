"""A readable, slow reference of the fast-weight op: one op at a time, autograd for the inner gradient.

Tests compare the fast path (:mod:`.swiglu`) with it. It keeps the three weights separate, in the
row layout of LACT_SPEC.md §1.1, and follows §1.4–1.9 literally.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from .newton_schulz import LM_NS_COEFFS, Coeffs, newton_schulz
from .schedule import Op


def _f(w0: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """f(x) = w1 (silu(w0 x) ⊙ (w2 x)).  w0, w2: [B, H, D]; w1: [B, D, H]; x: [B, n, D] -> [B, n, D]."""
    a = torch.einsum("bhd,bnd->bnh", w0, x)
    b = torch.einsum("bhd,bnd->bnh", w2, x)
    return torch.einsum("bdh,bnh->bnd", w1, F.silu(a) * b)


def _inner_step(weights, k, v, lr):
    """−η_j ∇_{W_j} L_j for j = 0, 1, 2 with L_j = −Σ_t η_{j,t} v_tᵀ f(k_t), by autograd."""
    steps = []
    with torch.enable_grad():
        for j in range(3):
            ws = list(weights)
            create_graph = ws[j].requires_grad
            if not create_graph:
                ws[j] = ws[j].detach().requires_grad_(True)
            loss = -(lr[..., j] * (v * _f(*ws, k)).sum(-1)).sum()
            (grad,) = torch.autograd.grad(loss, ws[j], create_graph=create_graph)
            steps.append(-grad)
    return steps


def naive_lact_swiglu(
    w0: torch.Tensor,
    w1: torch.Tensor,
    w2: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    lr: torch.Tensor,
    schedule: Sequence[Op],
    momentum: Optional[torch.Tensor] = None,
    use_muon: bool = False,
    weight_norm: bool = True,
    ns_coeffs: Coeffs = LM_NS_COEFFS,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Reference semantics of :func:`lact_app.ops.lact_swiglu` in fp32.

    Returns o: [B, L, D] and the final [w0, w1, w2]. The lr of token t for weight j is lr[:, t, j].
    """
    weights = initial = [w.float() for w in (w0, w1, w2)]
    init_norms = [w.norm(dim=-1, keepdim=True) for w in weights]
    buffers: list[Optional[torch.Tensor]] = [None, None, None]
    o = torch.zeros_like(q, dtype=torch.float32)
    for op in schedule:
        span = slice(op.start, op.end)
        if op.reset:
            weights, buffers = initial, [None, None, None]
        if op.update:
            steps = _inner_step(weights, k[:, span].float(), v[:, span].float(), lr[:, span].float())
            if momentum is not None:
                beta = momentum[:, span].float().mean(dim=1, keepdim=True)
                steps = [s if m is None else s + beta * m for s, m in zip(steps, buffers)]
                buffers = steps
            if use_muon:
                steps = [newton_schulz(s, ns_coeffs) for s in steps]
            weights = [w + s for w, s in zip(weights, steps)]
            if weight_norm:
                weights = [w / (w.norm(dim=-1, keepdim=True) + 1e-5) * n for w, n in zip(weights, init_norms)]
        if op.apply:
            o[:, span] = _f(*weights, q[:, span].float())
    return o, weights
