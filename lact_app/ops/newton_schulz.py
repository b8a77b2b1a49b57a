"""Newton–Schulz orthogonalisation of fast-weight updates (Muon, LACT_SPEC.md §1.7)."""

from __future__ import annotations

from typing import Optional, Sequence

import torch

Coeffs = Sequence[tuple[float, float, float]]

#: The 5-step schedule of the reference LM code (``ttt_operation.py:51-57``); the default.
LM_NS_COEFFS: tuple[tuple[float, float, float], ...] = (
    (4.0848, -6.8946, 2.9270),
    (3.9505, -6.3029, 2.6377),
    (3.7418, -5.5913, 2.3037),
    (2.8769, -3.1427, 1.2046),
    (2.8366, -3.0525, 1.2012),
)


def classic_ns_coeffs(steps: int = 5) -> tuple[tuple[float, float, float], ...]:
    """The classic Muon quintic (3.4445, −4.7750, 2.0315) repeated ``steps`` times (NVS/video code)."""
    return ((3.4445, -4.7750, 2.0315),) * steps


def newton_schulz(g: torch.Tensor, coeffs: Coeffs = LM_NS_COEFFS, *, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """Approximately orthogonalise each matrix of a batch.

    g: [B, m, n] -> [B, m, n] in g's dtype. Transposes tall matrices so the Gram matrix is the small
    one; since the iteration commutes with transposition, ``newton_schulz(g.mT) == newton_schulz(g).mT``
    up to rounding.

    dtype: None runs in g's dtype (fp32 for fp32 state). Given (``torch.bfloat16``), g is cast to it
    and the iteration follows the official code's ``zeropower_via_newtonschulz5`` expression for
    expression (``X / (‖X‖_F + 1e-7)``, ``B = b·A + (c·A) @ A``), so it rounds as the official
    bf16 iteration does; the result is cast back to g's dtype.
    """
    if dtype is not None:
        return _official_newton_schulz(g, coeffs, dtype)
    tall = g.size(-2) > g.size(-1)
    x = g.mT if tall else g
    x = x / (torch.linalg.matrix_norm(x, keepdim=True) + 1e-7)
    for a, b, c in coeffs:
        gram = x @ x.mT
        x = a * x + torch.baddbmm(gram, gram, gram, beta=b, alpha=c) @ x
    return x.mT if tall else x


def _official_newton_schulz(g: torch.Tensor, coeffs: Coeffs, dtype: torch.dtype) -> torch.Tensor:
    """The official ``zeropower_via_newtonschulz5`` (lact_llm / lact_nvs) in ``dtype``, cast back."""
    x = g.to(dtype)
    tall = g.size(-2) > g.size(-1)
    if tall:
        x = x.mT
    x = x / (x.norm(dim=(-2, -1), keepdim=True) + 1e-7)
    for a, b, c in coeffs:
        gram = x @ x.mT
        x = a * x + (b * gram + c * gram @ gram) @ x
    return (x.mT if tall else x).to(g.dtype)
