"""Invariants of the fast-weight op: streaming, causality, equivariance, gradients, precision."""

import pytest
import torch

from lact_app.ops import (
    FastWeights,
    Op,
    bidirectional_schedule,
    causal_schedule,
    fast_weight_grads,
    lact_swiglu,
    newton_schulz,
)

from .helpers import initial_state, make_inputs, rel_err

CHUNK = 16


def run(t, schedule, fw=None, span=slice(None), **kw):
    fw = initial_state(t) if fw is None else fw
    mom = t.get("momentum")
    return lact_swiglu(fw, t["q"][:, span], t["k"][:, span], t["v"][:, span], t["lr"][:, span], schedule,
                       None if mom is None else mom[:, span], **kw)


def test_hand_gradient_equals_autograd():
    t = make_inputs(B=2, L=24, D=20, H=36)
    fw = initial_state(t)
    d02, d1 = fast_weight_grads(fw, t["k"], t["v"], t["lr"])
    w0, w1, w2 = (fw.w0.clone().requires_grad_(), fw.w1.clone().requires_grad_(), fw.w2.clone().requires_grad_())
    h = torch.nn.functional.silu(t["k"] @ w0.mT) * (t["k"] @ w2.mT)
    vf = (t["v"] * (h @ w1.mT)).sum(-1)  # [B, n]: v_tᵀ f(k_t)
    expected = []
    for j, w in enumerate((w0, w1, w2)):
        (g,) = torch.autograd.grad(-(t["lr"][..., j] * vf).sum(), w, retain_graph=True)
        expected.append(-g)
    assert rel_err(d02[:, :36], expected[0]) < 1e-5
    assert rel_err(d1, expected[1]) < 1e-5
    assert rel_err(d02[:, 36:], expected[2]) < 1e-5


@pytest.mark.parametrize("use_muon", [False, True])
@pytest.mark.parametrize("split", [16, 32])
def test_streaming_equals_one_shot(use_muon, split):
    """State in and out: two calls split at a chunk multiple equal one call (momentum travels too)."""
    L = 53
    t = make_inputs(B=2, L=L, D=24, H=40, momentum=True)
    o, fw = run(t, causal_schedule(L, CHUNK), use_muon=use_muon)
    o1, fw1 = run(t, causal_schedule(split, CHUNK), span=slice(0, split), use_muon=use_muon)
    o2, fw2 = run(t, causal_schedule(L - split, CHUNK), fw=fw1, span=slice(split, L), use_muon=use_muon)
    assert fw1.mom02 is not None
    torch.testing.assert_close(torch.cat([o1, o2], 1), o, rtol=1e-5, atol=1e-6)
    for a, b in zip((fw.w02, fw.w1, fw.mom02, fw.mom1), (fw2.w02, fw2.w1, fw2.mom02, fw2.mom1)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("j", [1, 2, 3])
def test_block_causality(j):
    """Changing chunk j (q, k, v, lr, momentum) leaves every output before chunk j unchanged."""
    L = 4 * CHUNK + 5
    t = make_inputs(B=2, L=L, D=24, H=40, momentum=True)
    o, _ = run(t, causal_schedule(L, CHUNK), use_muon=True)
    changed = {n: x.clone() for n, x in t.items()}
    for n in ("q", "k", "v", "lr", "momentum"):
        changed[n][:, j * CHUNK:] = changed[n][:, j * CHUNK:].flip(1) * 1.5
    o_changed, _ = run(changed, causal_schedule(L, CHUNK), use_muon=True)
    assert torch.equal(o[:, : j * CHUNK], o_changed[:, : j * CHUNK])
    assert not torch.allclose(o[:, j * CHUNK:], o_changed[:, j * CHUNK:])


def test_chunk_reads_only_earlier_chunks():
    """Apply-then-update: a chunk's own keys never reach its outputs through the fast weights."""
    L = 2 * CHUNK
    t = make_inputs(B=1, L=L, D=24, H=40)
    o, _ = run(t, causal_schedule(L, CHUNK))
    changed = dict(t, k=t["k"].clone())
    changed["k"][:, CHUNK:] = torch.randn(1, CHUNK, 24)
    assert torch.equal(run(changed, causal_schedule(L, CHUNK))[0], o)


@pytest.mark.parametrize("use_muon", [False, True])
def test_bidirectional_is_permutation_equivariant(use_muon):
    L = 45
    t = make_inputs(B=2, L=L, D=24, H=40)
    perm = torch.randperm(L, generator=torch.Generator().manual_seed(1))
    o, fw = run(t, bidirectional_schedule(L), use_muon=use_muon)
    permuted = {n: x[:, perm] if x.dim() == 3 and x.shape[1] == L else x for n, x in t.items()}
    o_perm, fw_perm = run(permuted, bidirectional_schedule(L), use_muon=use_muon)
    torch.testing.assert_close(o_perm, o[:, perm], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(fw_perm.w02, fw.w02, rtol=1e-4, atol=1e-5)


def test_gradients_reach_every_input():
    L = 40
    t = make_inputs(B=2, L=L, D=12, H=20, momentum=True, requires_grad=True)
    o, fw = run(t, causal_schedule(L, CHUNK), use_muon=True)
    (o.square().sum() + fw.w1.sum()).backward()
    for name, x in t.items():
        assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0, name


def test_detached_norms_stop_the_norm_gradient():
    t = make_inputs(B=1, L=20, D=8, H=12, requires_grad=True)
    fw = FastWeights.from_initial(t["w0"], t["w1"], t["w2"], detach_norms=True)
    assert not fw.norm02.requires_grad and fw.w02.requires_grad


@pytest.mark.parametrize("use_muon,tolerance", [(False, 0.03), (True, 0.3)])
def test_bf16_autocast_keeps_fp32_state(use_muon, tolerance):
    """bf16 matmuls, fp32 state. Newton–Schulz in bf16 moves outputs by up to ~25 % (reference README)."""
    L = 3 * CHUNK + 3
    t = make_inputs(B=2, L=L, D=32, H=64, momentum=True)
    o_fp32, _ = run(t, causal_schedule(L, CHUNK), use_muon=use_muon)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        o, fw = run(t, causal_schedule(L, CHUNK), use_muon=use_muon)
    assert o.dtype == torch.bfloat16 and torch.isfinite(o).all()
    assert fw.w02.dtype == fw.w1.dtype == fw.mom02.dtype == torch.float32
    assert rel_err(o, o_fp32) < tolerance


def test_bf16_inputs_keep_fp32_state():
    L = 2 * CHUNK
    t = {n: x.bfloat16() if n not in ("w0", "w1", "w2") else x for n, x in make_inputs(L=L, momentum=True).items()}
    o, fw = run(t, causal_schedule(L, CHUNK))
    assert o.dtype == torch.bfloat16 and fw.w02.dtype == torch.float32


def test_unapplied_tokens_are_zero():
    t = make_inputs(B=1, L=30, D=8, H=12)
    o, _ = run(t, [Op(0, 30, True, False), Op(10, 20, False, True)])
    assert torch.equal(o[:, :10], torch.zeros(1, 10, 8)) and torch.equal(o[:, 20:], torch.zeros(1, 10, 8))
    assert o[:, 10:20].abs().sum() > 0


def test_fast_weights_expose_current_weights():
    t = make_inputs(B=2, L=20, D=8, H=12)
    fw = initial_state(t)
    assert torch.equal(fw.w0, t["w0"]) and torch.equal(fw.w1, t["w1"]) and torch.equal(fw.w2, t["w2"])
    _, fw = run(t, bidirectional_schedule(20))
    torch.testing.assert_close(fw.w0.norm(dim=-1), t["w0"].norm(dim=-1))  # weight norm restores row norms


def test_from_initial_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match=r"expected w0, w2: \[B, H, D\] and w1: \[B, D, H\]"):
        FastWeights.from_initial(torch.zeros(1, 4, 3), torch.zeros(1, 4, 3), torch.zeros(1, 4, 3))


def test_newton_schulz_orthogonalises_and_commutes_with_transpose():
    g = torch.randn(4, 24, 40, generator=torch.Generator().manual_seed(0))
    x = newton_schulz(g)
    s = torch.linalg.svdvals(x)
    assert s.min() > 0.6 and s.max() < 1.25  # the quintic's band, not exact orthogonality
    torch.testing.assert_close(newton_schulz(g.mT), x.mT)


@pytest.mark.parametrize("use_muon", [False, True])
def test_reset_starts_a_document_afresh(use_muon):
    """A reset op makes the second document's output exactly its solo run, momentum included."""
    t = make_inputs(B=2, L=40, D=20, H=36, momentum=True)
    first = causal_schedule(24, 8)
    second = [op._replace(start=op.start + 24, end=op.end + 24, reset=i == 0)
              for i, op in enumerate(causal_schedule(16, 8))]
    o, _ = run(t, first + second, use_muon=use_muon)
    solo, _ = run(t, causal_schedule(16, 8), span=slice(24, 40), use_muon=use_muon)
    assert torch.equal(o[:, 24:], solo)
