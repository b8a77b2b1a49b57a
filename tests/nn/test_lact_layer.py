"""LaCTLayer: shapes, streaming, causality, set equivariance, gradients, gates, precision."""

import pytest
import torch

import dataclasses

from lact_app.nn import FastWeightConfig, LaCTLayer, MixerCache, Rotary3DEmbedding, RotaryEmbedding, grid_positions
from lact_app.ops import bidirectional_schedule, causal_schedule

DIM, HEADS = 16, 2
CONFIG_FIELDS = {f.name for f in dataclasses.fields(FastWeightConfig)}


def _layer(**kwargs):
    """A layer of HEADS heads; config fields and layer options may be mixed in ``kwargs``."""
    torch.manual_seed(0)
    config = {"heads": HEADS, "inter_multi": 1.0, "base_lr": 0.01}
    config.update({k: v for k, v in kwargs.items() if k in CONFIG_FIELDS})
    options = {k: v for k, v in kwargs.items() if k not in CONFIG_FIELDS}
    return LaCTLayer(DIM, FastWeightConfig(**config), **options)


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
    with pytest.raises(ValueError, match="dim 10 is not divisible by fast_weight.heads 3"):
        LaCTLayer(10, FastWeightConfig(heads=3))
    with pytest.raises(ValueError, match="gate"):
        _layer(gate="channel")
    with pytest.raises(ValueError, match="rope head_dim"):
        _layer(rope=RotaryEmbedding(6))
    with pytest.raises(ValueError, match="pass qkv"):
        _layer(projections=False)(_x(), causal_schedule(12, 4))
    with pytest.raises(ValueError, match="needs fast_weight.chunk"):
        _layer().causal(_x())


def test_shared_projections_equal_own_projections():
    """Without projections the layer reads the caller's q̂, k̂, v̂ and returns the gated output."""
    own = _layer(gate="head", qk_affine=True)
    shared = _layer(gate="head", qk_affine=True, projections=False)
    shared.load_state_dict({k: v for k, v in own.state_dict().items() if not k.startswith(("qkv.", "out_proj."))})
    x, schedule = _x(), causal_schedule(12, 4)
    y_own, s_own = own(x, schedule)
    y_shared, s_shared = shared(x, schedule, qkv=own.qkv(x).chunk(3, dim=-1))
    torch.testing.assert_close(own.out_proj(y_shared), y_own, rtol=0, atol=0)
    torch.testing.assert_close(s_shared.w02, s_own.w02, rtol=0, atol=0)


def test_fast_parameters_exclude_the_projections():
    layer = _layer(use_momentum=True, gate="head", qk_affine=True)
    names = {n for n, _ in layer.fast_parameters()}
    assert names == {n for n, _ in layer.named_parameters()} - {"qkv.weight", "out_proj.weight"}
    assert {"branch.w0", "lr_proj.weight", "momentum_proj.bias", "inputs.qk_scale", "gate.proj.weight"} <= names


@pytest.mark.parametrize("pieces", [[12], [5, 7], [1] * 12, [3, 1, 8]])
def test_causal_stream_equals_one_shot(pieces):
    """Any split of a sequence streamed through ``causal`` with a cache gives the one-shot output."""
    layer = _layer(chunk=4, use_momentum=True, use_muon=True, gate="head", rope=RotaryEmbedding(4),
                   state_dtype=torch.float64).double()  # fmt: skip
    x = _x(L=12, dtype=torch.float64)
    expected, fast, pending = layer.causal(x, positions=torch.arange(12))
    assert fast is None and pending is None
    cache, outs, pos = MixerCache(), [], 0
    for n in pieces:
        inputs = layer.fast_inputs(x[:, :pos + n], None, torch.arange(pos + n))
        y, fast, pending = layer.causal(x[:, pos:pos + n], positions=torch.arange(pos, pos + n), cache=cache)
        pos += n
        cache = MixerCache(pos, fast, pending)
        outs.append(y)
        # the incomplete chunk's k, v and layer input fill the first pos % 4 slots of a preallocated
        # one-chunk buffer; from them the lr / momentum heads give the values of the one-shot pass
        held, start = pending.head(pos % 4), pos - pos % 4
        assert pending.k.size(1) == 4 and pending.x.size(1) == 4
        torch.testing.assert_close(held.x, x[:, start:pos], rtol=0, atol=0)
        for got, want in zip(layer.chunk_inputs(held)[1:], inputs[1:]):  # k, v, lr, momentum
            torch.testing.assert_close(got, want[:, start:])
    # the lr / momentum heads run in fp32 by design, so pieces of other lengths round differently
    torch.testing.assert_close(torch.cat(outs, dim=1), expected, rtol=1e-6, atol=1e-6)


def _lm_like(recompute: bool) -> LaCTLayer:
    """The LM's layer (q/k affine, silu, RoPE, momentum, head gate) with ``recompute`` on or off."""
    return _layer(chunk=8, use_momentum=True, recompute=recompute, qk_affine=True, gate="head", rope=RotaryEmbedding(4))


def _saved_numel(layer: LaCTLayer, L: int) -> int:
    """Elements of the distinct storages one forward of L tokens saves for the backward (parameters excluded)."""
    x = _x(B=1, L=L).requires_grad_()
    params = {p.untyped_storage().data_ptr() for p in layer.parameters()}
    storages = {}

    def pack(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes() // t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        layer(x, causal_schedule(L, 8))
    return sum(n for ptr, n in storages.items() if ptr not in params)


def test_recompute_gives_the_same_values_and_gradients():
    x = _x(L=20).requires_grad_()
    runs = []
    for recompute in (False, True):
        layer = _lm_like(recompute)
        y, _ = layer(x, causal_schedule(20, 8))
        grads = torch.autograd.grad(y.square().sum(), [x, *layer.parameters()])
        runs.append((y, grads))
    (y_off, g_off), (y_on, g_on) = runs
    assert torch.equal(y_on, y_off)
    for a, b in zip(g_on, g_off):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_recompute_keeps_no_elementwise_intermediates_per_token():
    """Per token, plain autograd keeps the op's and the layer's elementwise intermediates (784
    elements here). With recompute the layer keeps its inputs, the op's inputs and the branch
    output, and the op its per-update states: 302 (420 when only the op recomputes)."""
    per_token = {r: (_saved_numel(_lm_like(r), 128) - _saved_numel(_lm_like(r), 64)) / 64 for r in (False, True)}
    assert per_token[True] <= 0.45 * per_token[False]
