"""The memory-saving backward (``recompute=True``) gives plain autograd's values and gradients."""

import pytest
import torch

from lact_app.ops import FastWeights, Op, causal_schedule, lact_swiglu

from .helpers import make_inputs, rel_err
from .test_parity import FLAGS, schedules

INPUTS = ("w0", "w1", "w2", "q", "k", "v", "lr", "momentum", "mom02", "mom1")


def run(recompute, schedule, *, dtype=torch.float64, momentum=True, detach_norms=False, autocast=False, **switches):
    """Outputs and the gradients of every input of a loss on o and on the whole final state.

    With momentum the call continues a stream: it starts from momentum buffers that need a gradient.
    """
    L = max(op.end for op in schedule)
    t = make_inputs(B=2, L=L, D=8, H=12, momentum=momentum, seed=1)
    g = torch.Generator().manual_seed(2)
    if momentum:
        t["mom02"], t["mom1"] = 0.1 * torch.randn(2, 24, 8, generator=g), 0.1 * torch.randn(2, 8, 12, generator=g)
    t = {n: x.to(dtype).requires_grad_() for n, x in t.items()}
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        fw = FastWeights.from_initial(t["w0"], t["w1"], t["w2"], state_dtype=dtype, detach_norms=detach_norms)
        if momentum:
            fw = fw.replace(mom02=t["mom02"], mom1=t["mom1"])
        o, end = lact_swiglu(fw, t["q"], t["k"], t["v"], t["lr"], schedule, t.get("momentum"), recompute=recompute,
                             **switches)  # fmt: skip
    assert (type(o.grad_fn).__name__ == "_RecomputedOpsBackward") == recompute
    weights = torch.linspace(-1, 1, o.numel(), dtype=torch.float64).view_as(o)  # every token's gradient differs
    loss = (o.double() * weights).sum() + end.w02.square().sum() + end.w1.sum()
    if end.mom02 is not None:
        loss = loss + 0.5 * end.mom02.sum() - end.mom1.square().sum()
    loss.backward()
    return o.detach(), {n: x.grad for n, x in t.items()}


def assert_same(ours, ref, tol):
    (o, grads), (o_ref, grads_ref) = ours, ref
    assert torch.equal(o, o_ref), "the forward must not change"
    for name in INPUTS:
        if name not in grads_ref:
            continue
        if grads_ref[name] is None:
            assert grads[name] is None, name
        else:
            assert grads[name] is not None and rel_err(grads[name], grads_ref[name]) <= tol, name


@pytest.mark.parametrize("token_block", [None, 5], ids=["one_block", "blocks_of_5"])
@pytest.mark.parametrize("name", ["causal", "causal_train", "bidirectional", "nvs", "interleaved", "packed"])
@pytest.mark.parametrize("momentum,use_muon,weight_norm", FLAGS)
def test_gradients_equal_plain_autograd_float64(name, momentum, use_muon, weight_norm, token_block):
    """With blocks of 5 tokens the replay backpropagates every update and apply block by block."""
    schedule = schedules(37)[name]
    switches = {"momentum": momentum, "use_muon": use_muon, "weight_norm": weight_norm, "token_block": token_block}
    assert_same(run(True, schedule, **switches), run(False, schedule, **switches), 1e-10)


@pytest.mark.parametrize("schedule", [[Op(0, 20, False, True)], [Op(0, 8, True, False)],
                                      causal_schedule(20, 4) + [Op(20, 24, False, True, reset=True)]],
                         ids=["apply_only", "update_only", "ends_after_reset"])  # fmt: skip
def test_gradients_equal_plain_autograd_edge_schedules(schedule):
    """The final state may be the initial one (no update, or a reset); a segment may apply nothing."""
    assert_same(run(True, schedule, use_muon=True), run(False, schedule, use_muon=True), 1e-10)


def test_detached_norms_get_no_gradient_through_them():
    schedule = causal_schedule(37, 8)
    ours, ref = run(True, schedule, detach_norms=True), run(False, schedule, detach_norms=True)
    assert_same(ours, ref, 1e-10)
    assert rel_err(ours[1]["w0"], run(True, schedule)[1]["w0"]) > 1e-6, "detaching the norms must matter"


@pytest.mark.parametrize("switches", [{"use_muon": True}, {"use_muon": True, "ns_dtype": torch.bfloat16},
                                      {"use_muon": True, "token_block": 5}])  # fmt: skip
def test_gradients_equal_plain_autograd_float32(switches):
    schedule = schedules(37)["packed"]
    assert_same(run(True, schedule, dtype=torch.float32, **switches),
                run(False, schedule, dtype=torch.float32, **switches), 1e-5)  # fmt: skip


@pytest.mark.parametrize("switches", [{}, {"use_muon": True, "ns_dtype": torch.bfloat16}])
def test_gradients_equal_plain_autograd_under_bf16_autocast(switches):
    """The replay rounds as the forward did (bf16 matmuls) and backpropagates in the graph's dtypes.

    Not with Muon iterated in fp32 under autocast: there plain autograd's own gradients are 10–80 %
    away from fp32's, so summation-order differences of the replay (1e-7 in fp32) flip bf16 roundings
    and the two differ by a few %; the values are still identical.
    """
    schedule = schedules(37)["interleaved"]
    assert_same(run(True, schedule, dtype=torch.float32, autocast=True, **switches),
                run(False, schedule, dtype=torch.float32, autocast=True, **switches), 1e-5)  # fmt: skip


def test_backward_keeps_only_the_state_at_each_update():
    """Saved for the backward: the inputs and three states per update, no per-token activation."""
    B, L, D, H, chunk = 2, 64, 8, 12, 8
    t = make_inputs(B=B, L=L, D=D, H=H, momentum=True, requires_grad=True)
    schedule = causal_schedule(L, chunk)

    def saved_numel(recompute):
        sizes = []
        with torch.autograd.graph.saved_tensors_hooks(lambda x: sizes.append(x.numel()) or x, lambda x: x):
            lact_swiglu(FastWeights.from_initial(t["w0"], t["w1"], t["w2"]), t["q"], t["k"], t["v"], t["lr"],
                        schedule, t["momentum"], use_muon=True, recompute=recompute)  # fmt: skip
        return sum(sizes)

    inputs = sum(t[n].numel() for n in ("q", "k", "v", "lr", "momentum"))
    state, norms = B * 3 * H * D, B * (2 * H + D)  # (w02, w1) and (norm02, norm1)
    initial = 2 * (state + norms)  # kept by the row norms' backward and by the op
    bound = inputs + initial + 3 * state * (L // chunk)  # weights + momentum before, directions of each update
    assert saved_numel(True) <= bound < saved_numel(False) / 5
