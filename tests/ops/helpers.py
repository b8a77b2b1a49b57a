"""Random inputs for the fast-weight op tests."""

from __future__ import annotations

import torch

from lact_app.ops import FastWeights


def rel_err(ours: torch.Tensor, ref: torch.Tensor) -> float:
    """max|ours − ref| / max|ref|, the error measure of the golden cases."""
    return ((ours.float() - ref.float()).abs().max() / ref.float().abs().max()).item()


def make_inputs(B=3, L=37, D=60, H=100, momentum=False, seed=0, requires_grad=False):
    """Weights w0, w2: [B, H, D], w1: [B, D, H]; q, k (l2-normalised), v: [B, L, D]; lr: [B, L, 3]."""
    g = torch.Generator().manual_seed(seed)
    t = {
        "w0": torch.randn(B, H, D, generator=g) / D**0.5,
        "w1": torch.randn(B, D, H, generator=g) / H**0.5,
        "w2": torch.randn(B, H, D, generator=g) / D**0.5,
        "q": torch.nn.functional.normalize(torch.randn(B, L, D, generator=g), dim=-1),
        "k": torch.nn.functional.normalize(torch.randn(B, L, D, generator=g), dim=-1),
        "v": torch.randn(B, L, D, generator=g),
        "lr": 0.05 * torch.rand(B, L, 3, generator=g) + 0.01,
    }
    if momentum:
        t["momentum"] = torch.rand(B, L, 1, generator=g) * 0.8 + 0.1
    if requires_grad:
        for x in t.values():
            x.requires_grad_(True)
    return t


def initial_state(t, **kwargs) -> FastWeights:
    return FastWeights.from_initial(t["w0"], t["w1"], t["w2"], **kwargs)
