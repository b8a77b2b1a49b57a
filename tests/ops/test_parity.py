"""The fast path equals the naive reference (autograd inner gradient) on odd shapes."""

import itertools

import pytest

from lact_app.ops import (
    Op,
    bidirectional_schedule,
    causal_schedule,
    classic_ns_coeffs,
    lact_swiglu,
    naive_lact_swiglu,
)

from .helpers import initial_state, make_inputs, rel_err

CHUNK = 16


def schedules(L):
    """Every kind of schedule the tasks use, on a sequence of length L."""
    half = max(L // 2, 1)
    return {
        "causal": causal_schedule(L, CHUNK),
        "causal_train": causal_schedule(L, CHUNK, update_last=False),
        "bidirectional": bidirectional_schedule(L),
        # NVS: update on the input views, then apply to inputs and targets.
        "nvs": [Op(0, half, True, False), Op(0, L, False, True)],
        # video: apply W0 to N0, then per clean chunk update-then-apply, and apply to the next noisy chunk.
        "interleaved": [Op(0, 4, False, True), Op(4, 8, True, True), Op(8, 12, False, True),
                        Op(12, L, True, True)] if L > 12 else [Op(0, L, True, True)],
        # packed documents: a second document starts at `half` from the initial state.
        "packed": causal_schedule(half, 4) + [op._replace(start=op.start + half, end=op.end + half, reset=i == 0)
                                              for i, op in enumerate(causal_schedule(L - half, 4))],
    }


FLAGS = list(itertools.product([False, True], repeat=3))  # momentum, muon, weight_norm


@pytest.mark.parametrize("L", [37, 10])
@pytest.mark.parametrize("name", ["causal", "causal_train", "bidirectional", "nvs", "interleaved", "packed"])
@pytest.mark.parametrize("momentum,use_muon,weight_norm", FLAGS)
def test_fast_path_equals_naive_reference(L, name, momentum, use_muon, weight_norm):
    t = make_inputs(B=3, L=L, D=60, H=100, momentum=momentum)
    schedule = schedules(L)[name]
    o, fw = lact_swiglu(initial_state(t), t["q"], t["k"], t["v"], t["lr"], schedule,
                        momentum=t.get("momentum"), use_muon=use_muon, weight_norm=weight_norm)
    o_ref, w_ref = naive_lact_swiglu(t["w0"], t["w1"], t["w2"], t["q"], t["k"], t["v"], t["lr"], schedule,
                                     momentum=t.get("momentum"), use_muon=use_muon, weight_norm=weight_norm)
    assert rel_err(o, o_ref) <= 1e-4
    for ours, ref in zip((fw.w0, fw.w1, fw.w2), w_ref):
        assert rel_err(ours, ref) <= 1e-4


def test_classic_newton_schulz_coefficients_match_reference():
    t = make_inputs(B=2, L=40, D=24, H=48, momentum=True)
    schedule = causal_schedule(40, CHUNK)
    coeffs = classic_ns_coeffs(3)
    o, _ = lact_swiglu(initial_state(t), t["q"], t["k"], t["v"], t["lr"], schedule, t["momentum"],
                       use_muon=True, ns_coeffs=coeffs)
    o_ref, _ = naive_lact_swiglu(t["w0"], t["w1"], t["w2"], t["q"], t["k"], t["v"], t["lr"], schedule,
                                 t["momentum"], use_muon=True, ns_coeffs=coeffs)
    o_default, _ = lact_swiglu(initial_state(t), t["q"], t["k"], t["v"], t["lr"], schedule, t["momentum"],
                               use_muon=True)
    assert rel_err(o, o_ref) <= 1e-4
    assert rel_err(o, o_default) > 1e-3, "the coefficient option must change the result"


def test_outer_gradients_equal_reference():
    """Autograd through the hand-written inner step equals autograd through the autograd inner step."""
    L = 40
    schedule = causal_schedule(L, CHUNK)
    names = ["w0", "w1", "w2", "q", "k", "v", "lr", "momentum"]

    def grads(fast):
        t = make_inputs(B=2, L=L, D=12, H=20, momentum=True, requires_grad=True)
        if fast:
            o, fw = lact_swiglu(initial_state(t), t["q"], t["k"], t["v"], t["lr"], schedule, t["momentum"],
                                use_muon=True)
            final = fw.w1
        else:
            o, ws = naive_lact_swiglu(t["w0"], t["w1"], t["w2"], t["q"], t["k"], t["v"], t["lr"], schedule,
                                      t["momentum"], use_muon=True)
            final = ws[1]
        (o.square().sum() + final.sum()).backward()
        return [t[n].grad for n in names]

    for name, ours, ref in zip(names, grads(True), grads(False)):
        assert ours is not None and ours.abs().sum() > 0, f"no gradient reaches {name}"
        assert rel_err(ours, ref) <= 1e-4, name


@pytest.mark.parametrize("name", ["causal", "bidirectional", "nvs"])
def test_token_blocking_does_not_change_results(name):
    """Blocks of 7 tokens (a speed knob) give the same outputs and gradients as one block."""
    L = 37

    def run(token_block):
        t = make_inputs(B=2, L=L, D=12, H=20, momentum=True, requires_grad=True)
        o, fw = lact_swiglu(initial_state(t), t["q"], t["k"], t["v"], t["lr"], schedules(L)[name],
                            t["momentum"], use_muon=True, token_block=token_block)
        (o.square().sum() + fw.w02.sum()).backward()
        return [o] + [t[n].grad for n in ("w0", "w1", "q", "k", "lr")]

    for ours, ref in zip(run(7), run(L)):
        assert rel_err(ours, ref) <= 1e-5
