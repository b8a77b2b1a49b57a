"""``ns_dtype``: Muon's Newton–Schulz in bfloat16 inside the op, as the official LaCT code runs it."""

from __future__ import annotations

import pytest
import torch

from lact_app.nn import FastWeightBranch, FastWeightConfig
from lact_app.nn.fast_inputs import FastInputs
from lact_app.ops import LM_NS_COEFFS, causal_schedule, fast_weight_grads, newton_schulz, update_fast_weights
from tests.ops.helpers import initial_state, make_inputs


def _update(t, ns_dtype=None, weight_norm=False):
    fw = initial_state(t)
    return update_fast_weights(fw, t["k"], t["v"], t["lr"], use_muon=True, weight_norm=weight_norm, ns_dtype=ns_dtype)


def official_zeropower_via_newtonschulz5(G):
    """lact_llm/lact_model/ttt_operation.py, verbatim but for torch.compile."""
    X = G.bfloat16()
    if G.size(1) > G.size(2):
        X = X.transpose(1, 2)
    X = X / (X.norm(dim=(1, 2), keepdim=True) + 1e-7)
    for a, b, c in LM_NS_COEFFS:
        A = X @ X.transpose(1, 2)
        B = b * A + c * A @ A
        X = a * X + B @ X
    if G.size(1) > G.size(2):
        X = X.transpose(1, 2)
    return X


@pytest.mark.parametrize("H", [12, 20])  # square (orientation matters for rounding) and wide
def test_bf16_newton_schulz_is_the_official_iteration_on_each_update(H):
    t = make_inputs(B=2, L=16, D=12, H=H)
    fw = initial_state(t)
    d02, d1 = fast_weight_grads(fw, t["k"], t["v"], t["lr"])
    ours = _update(t, torch.bfloat16)
    B, two_h, D = d02.shape
    # the official LM orthogonalises dw0, dw2: [H, D] and dw1: [D, H] one by one
    o0, o2 = (official_zeropower_via_newtonschulz5(d) for d in d02.split(H, dim=1))
    o1 = official_zeropower_via_newtonschulz5(d1)
    assert torch.equal(ours.w02, fw.w02 + torch.cat([o0, o2], dim=1).float())
    assert torch.equal(ours.w1, fw.w1 + o1.float())
    assert ours.w02.dtype == torch.float32


def test_bf16_update_differs_from_fp32_by_a_bf16_sized_amount():
    t = make_inputs(B=2, L=16, D=12, H=20)
    fp32, bf16 = _update(t), _update(t, torch.bfloat16)
    gap = (fp32.w02 - bf16.w02).abs().max().item()
    assert 1e-4 < gap < 5e-2  # bf16 has 8 mantissa bits: ~4e-3 relative on O(1) entries


def test_config_field_reaches_the_op():
    cfg = FastWeightConfig(heads=2, use_muon=True)
    assert cfg.ns_dtype == "float32"
    torch.manual_seed(0)
    a = FastWeightBranch(8, cfg)
    b = FastWeightBranch(8, FastWeightConfig(heads=2, use_muon=True, ns_dtype="bfloat16"))
    b.load_state_dict(a.state_dict())
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.nn.functional.normalize(torch.randn(1, 8, 16, generator=g), dim=-1) for _ in range(3))
    inputs = FastInputs(q, k, v, lr=torch.full((1, 8, 2, 3), 0.1), momentum=None)
    oa, _ = a(inputs, causal_schedule(8, 4))
    ob, _ = b(inputs, causal_schedule(8, 4))
    assert 0 < (oa - ob).abs().max() < 1e-1


def test_config_rejects_other_dtypes():
    with pytest.raises(ValueError, match=r"fast_weight.ns_dtype must be one of \('float32', 'bfloat16'\), got 'float16'"):
        FastWeightConfig(ns_dtype="float16")
