"""FastWeightBranch and the elementwise helpers of lact_app.nn."""

import math

import pytest
import torch

from lact_app.nn import (
    FastInputs,
    FastWeightBranch,
    FastWeightConfig,
    inverse_softplus,
    l2_normalize,
    lr_from_logits,
    resolve_ns_coeffs,
)
from lact_app.ops import LM_NS_COEFFS, FastWeights, causal_schedule, classic_ns_coeffs, lact_swiglu


def _branch(n_h, D, state_dtype=torch.float32, **config):
    """A branch of ``n_h`` heads of dim D (hidden D unless ``inter_multi`` says otherwise)."""
    return FastWeightBranch(D, FastWeightConfig(heads=n_h, **{"inter_multi": 1.0, **config}), state_dtype=state_dtype)


def _inputs(B, L, n_h, D, dtype=torch.float64):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(B, L, n_h * D, generator=g, dtype=dtype) for _ in range(3))
    lr = torch.rand(B, L, n_h, 3, generator=g, dtype=dtype) * 0.1 + 0.01
    mom = torch.rand(B, L, n_h, 1, generator=g, dtype=dtype)
    return q, k, v, lr, mom


@pytest.mark.parametrize("w_init", ["normal", "low_rank"])
def test_branch_equals_lact_swiglu_per_head(w_init):
    B, L, n_h, D = 2, 10, 3, 6
    branch = _branch(n_h, D, torch.float64, inter_multi=1.5, w_init=w_init, low_rank=2, use_muon=True,
                     ns_coeffs="classic").double()  # fmt: skip
    q, k, v, lr, mom = _inputs(B, L, n_h, D)
    schedule = causal_schedule(L, 4)
    o, state = branch(FastInputs(q, k, v, lr, mom), schedule)
    assert o.shape == (B, L, n_h * D) and state.w02.shape == (B * n_h, 2 * 9, D)
    w0, w1, w2 = branch.initial_weights()
    for b in range(B):
        for h in range(n_h):
            cols = slice(h * D, (h + 1) * D)
            fw = FastWeights.from_initial(w0[h : h + 1], w1[h : h + 1], w2[h : h + 1], state_dtype=torch.float64)
            o_ref, s_ref = lact_swiglu(
                fw, q[b : b + 1, :, cols], k[b : b + 1, :, cols], v[b : b + 1, :, cols], lr[b : b + 1, :, h],
                schedule, mom[b : b + 1, :, h], use_muon=True, ns_coeffs=classic_ns_coeffs(5),
            )  # fmt: skip
            torch.testing.assert_close(o[b, :, cols], o_ref[0], rtol=0, atol=1e-12)
            torch.testing.assert_close(state.w02[b * n_h + h], s_ref.w02[0], rtol=0, atol=1e-12)


def test_branch_continues_from_given_state():
    branch = _branch(2, 4, torch.float64).double()
    inputs = FastInputs(*_inputs(1, 8, 2, 4)[:4], None)
    _, s1 = branch(inputs, causal_schedule(8, 4))
    o_fresh, _ = branch(inputs, causal_schedule(8, 4))
    o_cont, s2 = branch(inputs, causal_schedule(8, 4), state=s1)
    assert not torch.allclose(o_fresh, o_cont)
    assert not torch.allclose(s1.w02, s2.w02)


def test_low_rank_init_structure():
    n_h, D, r = 2, 16, 3
    branch = _branch(n_h, D, w_init="low_rank", low_rank=r, init_gain=0.5)
    w0, w1, w2 = branch.initial_weights()
    eye = torch.eye(D)
    for w in (w0, w2):
        assert w.shape == (n_h, D, D)
        assert torch.linalg.matrix_rank(w - 0.5 * eye).tolist() == [r] * n_h
    torch.testing.assert_close(w0, branch.w0_left @ branch.w0_right + 0.5 * eye)
    assert w1.shape == (n_h, D, D) and torch.linalg.matrix_rank(w1).tolist() == [D] * n_h


def test_low_rank_rectangular_identity():
    # H != D: the identity term is the rectangular eye(H, D), as in the LM reference
    w0, _, _ = _branch(1, 4, inter_multi=1.5, w_init="low_rank", low_rank=1).initial_weights()
    assert w0.shape == (1, 6, 4)
    assert torch.linalg.matrix_rank(w0 - 0.5 * torch.eye(6, 4)).tolist() == [1]


@pytest.mark.parametrize("w_init, gain", [("normal", 1.0), ("nvs", math.sqrt(2.0))])
def test_init_scales(w_init, gain):
    D, inter = 64, 2.0
    branch = _branch(8, D, inter_multi=inter, w_init=w_init)
    H = int(inter * D)
    for w, fan_in in ((branch.w0, D), (branch.w2, D), (branch.w1, H)):
        assert w.std().item() == pytest.approx(gain / math.sqrt(fan_in), rel=0.03)


def test_state_fp32_under_bf16_autocast():
    branch = _branch(2, 8, w_init="low_rank", low_rank=2, use_momentum=True)
    q, k, v, lr, mom = _inputs(2, 8, 2, 8, dtype=torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        o, state = branch(FastInputs(q.bfloat16(), k.bfloat16(), v.bfloat16(), lr, mom), causal_schedule(8, 4))
    assert torch.isfinite(o).all()
    assert state.w02.dtype == state.w1.dtype == state.mom02.dtype == torch.float32


@pytest.mark.parametrize(
    "field, value, allowed",
    [("chunk", 0, ">= 1 (or null)"), ("heads", 0, ">= 1"), ("inter_multi", 0.0, "> 0"), ("base_lr", -1e-3, "> 0"),
     ("ns_coeffs", "fast", "one of ('lm', 'classic')"), ("ns_steps", 0, ">= 1"),
     ("w_init", "xavier", "one of ('normal', 'nvs', 'low_rank')"), ("low_rank", 0, ">= 1"), ("init_gain", 0.0, "> 0")],
)  # fmt: skip
def test_config_rejects_bad_values_naming_the_field(field, value, allowed):
    with pytest.raises(ValueError) as err:
        FastWeightConfig(**{field: value})
    assert str(err.value) == f"fast_weight.{field} must be {allowed}, got {value!r}"


def test_config_is_keyword_only_and_round_trips_through_a_dict():
    with pytest.raises(TypeError):
        FastWeightConfig(512)  # noqa: the knobs have names, not positions
    config = FastWeightConfig(chunk=64, heads=2, use_muon=True)
    assert FastWeightConfig.coerce(config.to_dict()) == config and FastWeightConfig.coerce(config) is config


def test_hidden_width_must_be_positive():
    with pytest.raises(ValueError, match="hidden width >= 1"):
        _branch(1, 2, inter_multi=0.4)


def test_resolve_ns_coeffs():
    assert resolve_ns_coeffs("lm") == LM_NS_COEFFS
    assert resolve_ns_coeffs("classic", 3) == classic_ns_coeffs(3)
    assert resolve_ns_coeffs([[1, 2, 3]]) == ((1.0, 2.0, 3.0),)


def test_l2_normalize():
    x = torch.tensor([[3.0, 4.0], [0.0, 0.0]])
    expected = torch.tensor([[3.0 / (5.0 + 1e-5), 4.0 / (5.0 + 1e-5)], [0.0, 0.0]])
    torch.testing.assert_close(l2_normalize(x), expected, rtol=0, atol=0)
    xb = torch.randn(4, 16).bfloat16()
    y = l2_normalize(xb)
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float().norm(dim=-1), torch.ones(4), rtol=0, atol=1e-2)


def test_lr_from_logits():
    assert inverse_softplus(0.01) == pytest.approx(-4.6002, abs=1e-4)
    assert inverse_softplus(0.001) == pytest.approx(-6.9073, abs=1e-4)
    assert inverse_softplus(torch.tensor(0.01, dtype=torch.float64)).item() == pytest.approx(inverse_softplus(0.01))
    lr = lr_from_logits(torch.zeros(3, dtype=torch.bfloat16), 0.01)
    assert lr.dtype == torch.float32
    torch.testing.assert_close(lr, torch.full((3,), 0.01), rtol=1e-5, atol=0)
    z = torch.linspace(-20, 20, 9)
    assert (lr_from_logits(z, 0.01) > 0).all() and (lr_from_logits(z, 0.01).diff() > 0).all()
    with pytest.raises(ValueError):
        lr_from_logits(z, 0.0)
