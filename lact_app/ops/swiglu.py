"""The fast path of the LaCT fast-weight op: a few large batched matmuls per chunk.

Shapes follow DESIGN.md §3 (heads folded into the batch): ``q, k, v: [B, L, D]``, ``lr: [B, L, 3]``
(per-token lrs for w0, w1, w2), ``momentum: [B, L, 1]``. The inner gradient is written by hand
(LACT_SPEC.md §1.4) with differentiable tensor ops, so the outer gradient flows through every update.
"""

from __future__ import annotations

from typing import NamedTuple, Optional, Sequence

import torch
import torch.nn.functional as F

from .newton_schulz import LM_NS_COEFFS, Coeffs, newton_schulz
from .schedule import Op, validate_schedule
from .state import FastWeights, row_norms

#: Added to a row's norm before dividing (LACT_SPEC.md §1.8).
WEIGHT_NORM_EPS = 1e-5


def _blocks(n: int, block: int) -> list[slice]:
    """Token slices of at most ``block`` tokens covering ``[0, n)``."""
    return [slice(s, min(s + block, n)) for s in range(0, n, block)]


def default_token_block(x: torch.Tensor) -> int:
    """Tokens processed per matmul block: on CPU 512 keeps the [block, 2H] activations in cache
    (about 2× faster than one big matmul at H = 256); accelerators prefer one large matmul."""
    return 512 if x.device.type == "cpu" else x.size(1)


def apply_fast_weights(fw: FastWeights, x: torch.Tensor, token_block: Optional[int] = None) -> torch.Tensor:
    """f(x) = w1 (silu(w0 x) * (w2 x)) per head.  x: [B, n, D] -> [B, n, D]."""
    dtype = x.dtype  # under autocast the matmuls still pick their own dtype
    w02, w1 = fw.w02.to(dtype).mT, fw.w1.to(dtype).mT
    block = token_block or default_token_block(x)
    if x.size(1) <= block:  # one block (every decoding step): no slicing, no concatenation
        return _swiglu(x, w02, w1)
    return torch.cat([_swiglu(x[:, span], w02, w1) for span in _blocks(x.size(1), block)], dim=1)


def _swiglu(x: torch.Tensor, w02t: torch.Tensor, w1t: torch.Tensor) -> torch.Tensor:
    """x: [B, n, D], w02t: [B, D, 2H], w1t: [B, H, D] -> w1 (silu(w0 x) * (w2 x)): [B, n, D].

    ``torch.bmm``, not ``@``: the same kernel without matmul's shape dispatch (half the cost of a
    decoding step's single-token product)."""
    a, b = torch.bmm(x, w02t).chunk(2, dim=-1)
    return torch.bmm(F.silu(a) * b, w1t)


def _grad_factors(w02: torch.Tensor, w1: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lr: torch.Tensor):
    """Per-token factors of the update.  -> (g02: [B, n, 2H] = [g0·η0, g2·η2], h·η1: [B, n, H]).

    The products here and in :func:`fast_weight_grads` call ``torch.bmm`` (what ``@`` runs for 3-D
    operands) directly: a chunk's matmuls are small, and matmul's shape dispatch costs as much."""
    a, b = torch.bmm(k, w02.mT).chunk(2, dim=-1)  # [B, n, H] each
    sig = torch.sigmoid(a)
    silu_a = a * sig
    dh = torch.bmm(v, w1)  # w1ᵀ v per token: [B, n, H]
    lr = lr.float()
    g0 = dh * b * sig * (1 + a * (1 - sig)) * lr[..., 0:1]  # silu'(a) = σ(a)(1 + a(1 − σ(a)))
    g2 = dh * silu_a * lr[..., 2:3]
    return torch.cat([g0, g2], dim=-1), silu_a * b * lr[..., 1:2]


def fast_weight_grads(
    fw: FastWeights, k: torch.Tensor, v: torch.Tensor, lr: torch.Tensor, token_block: Optional[int] = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Update directions −η∇L of the dot-product inner loss L = −Σ_t η_t v_tᵀ f(k_t) (LACT_SPEC.md §1.4).

    k, v: [B, n, D]; lr: [B, n, 3] -> (Δw02: [B, 2H, D], Δw1: [B, D, H]). Each weight uses its own
    per-token lr; the lr is folded into the token-side factor so Δw0 and Δw2 come out of one bmm.
    The sums over tokens are accumulated block by block (see :func:`default_token_block`).
    """
    dtype = k.dtype
    w02, w1 = fw.w02.to(dtype), fw.w1.to(dtype)
    d02 = d1 = None
    for span in _blocks(k.size(1), token_block or default_token_block(k)):
        g02, h_lr = _grad_factors(w02, w1, k[:, span], v[:, span], lr[:, span])
        part02 = torch.bmm(g02.to(dtype).mT, k[:, span])
        part1 = torch.bmm(v[:, span].mT, h_lr.to(dtype))
        d02 = part02 if d02 is None else d02 + part02
        d1 = part1 if d1 is None else d1 + part1
    return d02, d1


def _with_momentum(
    fw: FastWeights, d02: torch.Tensor, d1: torch.Tensor, momentum: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Heavy-ball without damping: M_i = ΔW_i + β̄_i M_{i−1}, β̄_i the chunk mean (LACT_SPEC.md §1.6).

    momentum: [B, n, 1] -> the new buffers (they are also the update directions).
    """
    if fw.mom02 is None:  # M_{-1} = 0
        return d02, d1
    beta = momentum.float().mean(dim=1, keepdim=True)  # [B, 1, 1]
    return d02 + beta * fw.mom02, d1 + beta * fw.mom1


def _orthogonalise(
    d02: torch.Tensor, d1: torch.Tensor, coeffs: Coeffs, dtype: Optional[torch.dtype] = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Muon on Δw0, Δw2 and Δw1 separately, as one batched Newton–Schulz over [3B, H, D].

    With ``dtype`` (the official bf16 iteration) each update is orthogonalised in the official LM's
    orientation (Δw0, Δw2: [H, D]; Δw1: [D, H]), which matters for rounding when H = D.
    """
    B, two_h, D = d02.shape
    h = two_h // 2
    if dtype is not None:
        return newton_schulz(d02.reshape(2 * B, h, D), coeffs, dtype=dtype).reshape(B, two_h, D), newton_schulz(
            d1, coeffs, dtype=dtype
        )
    stacked = torch.cat([d02.reshape(2 * B, h, D), d1.mT], dim=0)
    out = newton_schulz(stacked, coeffs)
    return out[: 2 * B].reshape(B, two_h, D), out[2 * B :].mT


def _renormalise(w: torch.Tensor, norms: torch.Tensor) -> torch.Tensor:
    """Rescale every row of w: [B, R, C] back to its initial norm norms: [B, R, 1]."""
    return w / (row_norms(w) + WEIGHT_NORM_EPS) * norms


class UpdateRule(NamedTuple):
    """The knobs of one inner step (the keyword arguments of :func:`update_fast_weights`)."""

    use_muon: bool
    weight_norm: bool
    ns_coeffs: Coeffs
    ns_dtype: Optional[torch.dtype]
    token_block: Optional[int]


def update_fast_weights(
    fw: FastWeights,
    k: torch.Tensor,
    v: torch.Tensor,
    lr: torch.Tensor,
    momentum: Optional[torch.Tensor] = None,
    use_muon: bool = False,
    weight_norm: bool = True,
    ns_coeffs: Coeffs = LM_NS_COEFFS,
    token_block: Optional[int] = None,
    *,
    ns_dtype: Optional[torch.dtype] = None,
) -> FastWeights:
    """One inner step on the tokens k, v: [B, n, D] with lr: [B, n, 3] (and momentum: [B, n, 1]).

    Order (LACT_SPEC.md §6.1 item 3): gradient → momentum → Muon → add → row renormalisation.
    ``ns_dtype``: dtype of the Newton–Schulz iteration (None: the state dtype).
    """
    d02, d1 = update_directions(fw, k, v, lr, token_block)
    rule = UpdateRule(use_muon=use_muon, weight_norm=weight_norm, ns_coeffs=ns_coeffs, ns_dtype=ns_dtype,
                      token_block=token_block)  # fmt: skip
    return take_step(fw, d02, d1, momentum, rule)


def update_directions(
    fw: FastWeights, k: torch.Tensor, v: torch.Tensor, lr: torch.Tensor, token_block: Optional[int] = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`fast_weight_grads` in the state's dtype: the (Δw02, Δw1) that :func:`take_step` takes."""
    state_dtype = fw.w02.dtype
    return tuple(d.to(state_dtype) for d in fast_weight_grads(fw, k, v, lr, token_block))


def take_step(
    fw: FastWeights, d02: torch.Tensor, d1: torch.Tensor, momentum: Optional[torch.Tensor], rule: UpdateRule
) -> FastWeights:
    """The inner step after the gradient: momentum → Muon → add → row renormalisation.

    d02: [B, 2H, D], d1: [B, D, H]: the update directions of :func:`fast_weight_grads` in the state's
    dtype; momentum: [B, n, 1] of the chunk's tokens or None.
    """
    use_muon, weight_norm, ns_coeffs, ns_dtype, _ = rule
    state_dtype = fw.w02.dtype
    moments = {}
    if momentum is not None:
        d02, d1 = _with_momentum(fw, d02, d1, momentum)
        moments = {"mom02": d02, "mom1": d1}
    if use_muon:
        d02, d1 = _orthogonalise(d02, d1, ns_coeffs, ns_dtype)
    w02 = (fw.w02 + d02).to(state_dtype)
    w1 = (fw.w1 + d1).to(state_dtype)
    if weight_norm:
        w02, w1 = _renormalise(w02, fw.norm02), _renormalise(w1, fw.norm1)
    return fw.replace(w02=w02, w1=w1, **moments)


class OpInputs(NamedTuple):
    """The per-token inputs of one call: q, k, v: [B, L, D]; lr: [B, L, 3]; momentum: [B, L, 1] or None."""

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    lr: torch.Tensor
    momentum: Optional[torch.Tensor]


Piece = tuple[int, int, torch.Tensor]


def run_ops(
    fw: FastWeights, ops: Sequence[Op], x: OpInputs, rule: UpdateRule, initial: FastWeights
) -> tuple[list[Piece], FastWeights]:
    """Run validated ``ops`` from the state ``fw``; an op with ``reset`` restarts from ``initial``.

    Returns the applied outputs as (start, end, o: [B, end − start, D]) and the state after the last op.
    """
    pieces = []
    for op in ops:
        if op.reset:
            fw = initial
        if op.update:
            s = slice(op.start, op.end)
            mom = None if x.momentum is None else x.momentum[:, s]
            fw = update_fast_weights(fw, x.k[:, s], x.v[:, s], x.lr[:, s], mom, **rule._asdict())
        if op.apply:
            pieces.append((op.start, op.end, apply_fast_weights(fw, x.q[:, op.start : op.end], rule.token_block)))
    return pieces, fw


def assemble(pieces: list[Piece], like: torch.Tensor) -> torch.Tensor:
    """Concatenate applied outputs in token order, zeros where no op applied.  -> [B, L, D]."""
    B, L, D = like.shape
    dtype = pieces[0][2].dtype if pieces else like.dtype
    parts, pos = [], 0
    for start, end, out in sorted(pieces, key=lambda p: p[0]):
        if start > pos:
            parts.append(like.new_zeros(B, start - pos, D, dtype=dtype))
        parts.append(out)
        pos = end
    if pos < L:
        parts.append(like.new_zeros(B, L - pos, D, dtype=dtype))
    return torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]


def lact_swiglu(
    fw: FastWeights,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    lr: torch.Tensor,
    schedule: Sequence[Op],
    momentum: Optional[torch.Tensor] = None,
    use_muon: bool = False,
    weight_norm: bool = True,
    *,
    ns_coeffs: Coeffs = LM_NS_COEFFS,
    ns_dtype: Optional[torch.dtype] = None,
    token_block: Optional[int] = None,
    recompute: bool = False,
) -> tuple[torch.Tensor, FastWeights]:
    """Run a schedule of fast-weight updates and applications over one sequence piece.

    fw: state from :meth:`FastWeights.from_initial` or a previous call; q, k, v: [B, L, D];
    lr: [B, L, 3] (positive); momentum: [B, L, 1] in (0, 1) or None; schedule: ops over [0, L).
    Returns o: [B, L, D] (zero where no op applies) and the state after the last op. An op with
    ``reset`` restarts from ``fw`` as given (packed documents: each starts from the initial weights).
    ``ns_coeffs``: Newton–Schulz schedule for Muon; ``ns_dtype``: the dtype it runs in (None: the
    state dtype; ``torch.bfloat16`` as the official code does); ``token_block``: tokens per matmul block
    (a speed knob only, see :func:`default_token_block`). ``recompute``: when a gradient is needed,
    keep only the state at each update for the backward and recompute the rest there
    (:mod:`.recompute`; same values and gradients, a fraction of the memory).
    """
    ops = validate_schedule(schedule, q.size(1))
    x = OpInputs(q=q, k=k, v=v, lr=lr, momentum=momentum)
    rule = UpdateRule(use_muon=use_muon, weight_norm=weight_norm, ns_coeffs=ns_coeffs, ns_dtype=ns_dtype,
                      token_block=token_block)  # fmt: skip
    if recompute and torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (*x, *fw._fields())):
        from .recompute import recomputed_lact_swiglu  # it builds on run_ops: imported here to avoid a cycle

        return recomputed_lact_swiglu(fw, ops, x, rule)
    pieces, fw = run_ops(fw, ops, x, rule, initial=fw)
    return assemble(pieces, q), fw
