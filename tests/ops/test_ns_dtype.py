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


def test_bf16_newton_schulz_equals_running_it_on_bf16_inputs():
    t = make_inputs(B=2, L=16, D=12, H=20)
    fw = initial_state(t)
    d02, d1 = fast_weight_grads(fw, t["k"], t["v"], t["lr"])
    ours = _update(t, torch.bfloat16)
    B, two_h, D = d02.shape
    o02 = newton_schulz(d02.reshape(2 * B, two_h // 2, D).bfloat16(), LM_NS_COEFFS).float().reshape(B, two_h, D)
    o1 = newton_schulz(d1.bfloat16(), LM_NS_COEFFS).float()
    assert torch.equal(ours.w02, fw.w02 + o02)
    assert torch.equal(ours.w1, fw.w1 + o1)
    assert ours.w02.dtype == torch.float32


def test_bf16_update_differs_from_fp32_by_a_bf16_sized_amount():
    t = make_inputs(B=2, L=16, D=12, H=20)
    fp32, bf16 = _update(t), _update(t, torch.bfloat16)
    gap = (fp32.w02 - bf16.w02).abs().max().item()
    assert 1e-4 < gap < 5e-2  # bf16 has 8 mantissa bits: ~4e-3 relative on O(1) entries
    assert torch.equal(_update(t, torch.float32).w02, fp32.w02)  # fp32 is today's iteration exactly


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
