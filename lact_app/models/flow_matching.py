"""Rectified flow matching per chunk (LACT_SPEC.md §4.5): noising, timestep sampling, loss weights.

Time runs from t = 0 (data x0) to t = 1 (noise ε): ``x_t = (1 − t)·x0 + t·ε`` and the model predicts
the velocity ``ε − x0``. Timesteps are drawn uniformly and *shifted*,
``t = s·u / (1 + (s − 1)·u)``, which for s > 1 spends more training (and sampling steps) at high
noise, as larger inputs need (the reference trains at s ≈ 2.11 and samples at s = 3).
"""

from __future__ import annotations

import math

import torch

#: Bins of the reference's logit-normal weighting (probability mass of [⌊1000u⌋, ⌊1000u⌋+1)/1000).
WEIGHT_BINS = 1000


def shift_timesteps(u: torch.Tensor, shift: float) -> torch.Tensor:
    """t = s·u / (1 + (s − 1)·u): maps [0, 1] onto itself, monotone, s = 1 is the identity."""
    if shift <= 0:
        raise ValueError(f"timestep shift must be > 0, got {shift}")
    return shift * u / (1 + (shift - 1) * u)


def sample_timesteps(
    shape: tuple[int, ...], shift: float, generator: torch.Generator | None = None, device=None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Shifted-uniform timesteps.  -> (t, u), both ``shape`` fp32; u ~ U(0, 1) is the unshifted draw."""
    u = torch.rand(shape, generator=generator, device=device)
    return shift_timesteps(u, shift), u


def logit_normal_weight(u: torch.Tensor, mean: float = 0.0, std: float = 1.0) -> torch.Tensor:
    """Loss weight of a draw u: the logit-normal(mean, std) density, as the reference computes it.

    The reference weights by ``1000 ×`` the probability mass of the bin ``[⌊1000u⌋, ⌊1000u⌋+1)/1000``
    (a density that stays finite at u = 0 and 1), evaluated at the *unshifted* u.
    """
    lo = torch.floor(u.double() * WEIGHT_BINS).clamp(0, WEIGHT_BINS - 1) / WEIGHT_BINS
    return (WEIGHT_BINS * (_logit_normal_cdf(lo + 1 / WEIGHT_BINS, mean, std)
                           - _logit_normal_cdf(lo, mean, std))).to(u.dtype)


def _logit_normal_cdf(x: torch.Tensor, mean: float, std: float) -> torch.Tensor:
    """P(sigmoid(N(mean, std²)) ≤ x) for x in [0, 1] (logit(0) = −∞, logit(1) = +∞)."""
    z = (torch.logit(x.clamp(0, 1)) - mean) / (std * math.sqrt(2))
    return 0.5 * (1 + torch.erf(z))


def add_noise(x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """x_t = (1 − t)·x0 + t·ε.  x0, noise: [B, F, ...]; t broadcast from the left ([B, F] or [B])."""
    t = t.reshape(t.shape + (1,) * (x0.dim() - t.dim())).to(x0.dtype)
    return (1 - t) * x0 + t * noise


def velocity_target(x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """The flow-matching target ε − x0 (what the model predicts)."""
    return noise - x0


def euler_timesteps(num_steps: int, shift: float, device=None) -> torch.Tensor:
    """Sampling grid from t = 1 to t = 0: ``num_steps + 1`` shifted points of a uniform grid.  -> [S + 1]."""
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    return shift_timesteps(torch.linspace(1.0, 0.0, num_steps + 1, device=device), shift)
