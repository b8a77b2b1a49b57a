"""LaCTLayer: shapes, streaming, causality, set equivariance, gradients, gates, precision."""

import pytest
import torch

from lact_app.nn import LaCTLayer, Rotary3DEmbedding, RotaryEmbedding, grid_positions
from lact_app.ops import bidirectional_schedule, causal_schedule

DIM, HEADS = 16, 2


def _layer(**kwargs):
    torch.manual_seed(0)
    return LaCTLayer(DIM, HEADS, **kwargs)


def _x(B=2, L=12, dtype=torch.float32):
    return torch.randn(B, L, DIM, generator=torch.Generator().manual_seed(1), dtype=dtype)


def test_shape_and_state():
    layer = _layer(inter_multi=2.0, gate="head", qk_affine=True)
    y, state = layer(_x(), causal_schedule(12, 4))
    assert y.shape == (2, 12, DIM)
    assert state.w02.shape == (2 * HEADS, 2 * 16, 8) and state.w1.shape == (2 * HEADS, 8, 16)


def test_streaming_equals_one_call():
    layer = _layer(use_momentum=True, use_muon=True, rope=RotaryEmbedding(4), state_dtype=torch.float64).double()
    x = _x(L=16, dtype=torch.float64)
    y_full, s_full = layer(x, causal_schedule(16, 4, update_last=True))
    y1, s1 = layer(x[:, :8], causal_schedule(8, 4, update_last=True))
    y2, s2 = layer(x[:, 8:], causal_schedule(8, 4, update_last=True), state=s1, positions=torch.arange(8, 16))
    torch.testing.assert_close(torch.cat([y1, y2], dim=1), y_full, rtol=0, atol=1e-10)
    torch.testing.assert_close(s2.w02, s_full.w02, rtol=0, atol=1e-10)
    torch.testing.assert_close(s2.mom1, s_full.mom1, rtol=0, atol=1e-10)


@pytest.mark.parametrize("changed_chunk", [1, 2])
def test_block_causality(changed_chunk):
    layer = _layer(use_momentum=True, use_muon=True, gate="head", rope=RotaryEmbedding(4))
    chunk, x = 4, _x()
    x2 = x.clone()
    x2[:, changed_chunk * chunk : (changed_chunk + 1) * chunk] += 1.0
    schedule = causal_schedule(12, chunk)
    (y, _), (y2, _) = layer(x, schedule), layer(x2, schedule)
    cut = changed_chunk * chunk
    torch.testing.assert_close(y2[:, :cut], y[:, :cut], rtol=0, atol=1e-6)
    assert (y2[:, cut:] - y[:, cut:]).abs().amax(dim=-1).min() > 1e-4  # every later token is affected


def test_permutation_equivariance_bidirectional():
    layer = _layer(use_muon=True, gate="head", inter_multi=2.0)
    x = _x(L=10)
    perm = torch.randperm(10, generator=torch.Generator().manual_seed(2))
    y, state = layer(x, bidirectional_schedule(10))
    y_p, state_p = layer(x[:, perm], bidirectional_schedule(10))
    torch.testing.assert_close(y_p, y[:, perm], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(state_p.w02, state.w02, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("w_init", ["normal", "low_rank"])
def test_gradients_reach_parameters(w_init):
    layer = _layer(use_momentum=True, use_muon=True, gate="head", qk_affine=True, w_init=w_init, low_rank=2)
    y, _ = layer(_x(), causal_schedule(12, 4, update_last=False))
    y.square().sum().backward()
    fast = ["w0", "w2"] if w_init == "normal" else ["w0_left", "w0_right", "w2_left", "w2_right"]
    names = ["branch." + n for n in fast + ["w1"]]
    names += ["qkv.weight", "lr_proj.weight", "lr_proj.bias", "momentum_proj.weight", "inputs.qk_scale"]
    params = dict(layer.named_parameters())
    for name in names:
        grad = params[name].grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().max() > 0, name


def test_token_gate_is_zero_at_init():
    layer = _layer(gate="token")
    y, _ = layer(_x(), causal_schedule(12, 4))
    assert torch.equal(y, torch.zeros_like(y))
    assert layer.gate.proj.weight.shape == (1, DIM)


def test_bf16_autocast():
    layer = _layer(use_momentum=True, use_muon=True, gate="head", rope=RotaryEmbedding(8))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, state = layer(_x(), causal_schedule(12, 4))
    assert torch.isfinite(y).all()
    assert state.w02.dtype == state.w1.dtype == state.mom02.dtype == state.norm02.dtype == torch.float32


def test_lr_at_zero_logit_is_base_lr():
    layer = _layer(base_lr=0.02)
    torch.nn.init.zeros_(layer.lr_proj.bias)
    lr = layer.lr_proj(torch.zeros(1, 3, DIM))
    assert lr.shape == (1, 3, HEADS, 3) and lr.dtype == torch.float32
    torch.testing.assert_close(lr, torch.full_like(lr, 0.02), rtol=1e-6, atol=0)


def test_3d_rope_positions():
    layer = _layer(rope=Rotary3DEmbedding(8))
    pos = grid_positions(3, 2, 2)
    y, _ = layer(_x(L=12), causal_schedule(12, 4), positions=pos)
    assert y.shape == (2, 12, DIM)
    with pytest.raises(ValueError, match="explicit"):
        layer(_x(L=12), causal_schedule(12, 4))


def test_bad_arguments():
    with pytest.raises(ValueError, match="divisible"):
        LaCTLayer(10, 3)
    with pytest.raises(ValueError, match="gate"):
        LaCTLayer(DIM, HEADS, gate="channel")
    with pytest.raises(ValueError, match="rope head_dim"):
        LaCTLayer(DIM, HEADS, rope=RotaryEmbedding(6))
