"""Memory-saving backward of the fast-weight op: keep the state at each update, recompute the rest.

Plain autograd through :func:`~lact_app.ops.lact_swiglu` keeps every intermediate of every update
(the SwiGLU activations, the inner gradients, the Newton–Schulz iterates) until the backward: memory
grows with L·H per head. Here the forward runs without a graph and keeps only the inputs and the
fast-weight state at the start of each *segment* (one update and the applies that read its result).
The backward replays the segments in reverse from those states, one at a time with a graph, and
backpropagates each segment's output gradient and the gradient of the state it hands to the next
segment (the recipe of the official code's gradient-checkpointed chunks, done once in the op). Peak
memory is one segment's graph plus one state per update; the price is a second forward of the op.
The maths is :func:`~lact_app.ops.swiglu.run_ops`, the code of the plain path, so the values are
identical and the gradients equal up to summation order.
"""

from __future__ import annotations

from typing import NamedTuple, Optional, Sequence

import torch
from torch.autograd.function import once_differentiable

from .schedule import Op
from .state import FastWeights
from .swiglu import OpInputs, UpdateRule, assemble, run_ops

#: Tensors of a state that change along the sequence (the row norms stay those of the initial weights).
MOVING = ("w02", "w1", "mom02", "mom1")
NORMS = ("norm02", "norm1")

class Segment(NamedTuple):
    """Ops replayed together: an update (or the first op, or a reset) and the apply-only ops after it."""

    ops: tuple[Op, ...]
    from_initial: bool  # starts from the call's initial state (the first segment, or a reset)


class Plan(NamedTuple):
    segments: tuple[Segment, ...]
    rule: UpdateRule


def split_segments(ops: Sequence[Op]) -> tuple[Segment, ...]:
    """Cut the schedule before every update and every reset, so only those states need keeping."""
    groups: list[list[Op]] = []
    for op in ops:
        if not groups or op.update or op.reset:
            groups.append([])
        groups[-1].append(op)
    return tuple(Segment(tuple(g), from_initial=i == 0 or g[0].reset) for i, g in enumerate(groups))


def moving(fw: FastWeights) -> tuple[Optional[torch.Tensor], ...]:
    """The state's tensors that change along the sequence, in :data:`MOVING` order."""
    return tuple(getattr(fw, name) for name in MOVING)


def _leaf(t: Optional[torch.Tensor], requires_grad: bool) -> Optional[torch.Tensor]:
    """A graph-free view of t to replay from, recording its gradient when asked."""
    return None if t is None else t.detach().requires_grad_(requires_grad)


def _add(total: Optional[torch.Tensor], g: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    return g if total is None else total if g is None else total + g


class Saved(NamedTuple):
    """What the backward replays from: the inputs, the initial state split as in :class:`FastWeights`,
    which of them need a gradient, the update rule and the forward's autocast state
    (device type, enabled, dtype)."""

    x: OpInputs
    initial: FastWeights
    needs_x: tuple[bool, ...]
    needs_initial: FastWeights  # of bools, field by field
    rule: UpdateRule
    autocast: tuple[str, bool, torch.dtype]


class _RecomputedOps(torch.autograd.Function):
    """Inputs: plan, then q, k, v, lr, momentum and w02, w1, norm02, norm1, mom02, mom1 of the initial
    state. Outputs: o: [B, L, D] and the final w02, w1, mom02, mom1."""

    @staticmethod
    def forward(ctx, plan: Plan, *tensors):
        x, initial = OpInputs(*tensors[:5]), FastWeights(*tensors[5:])
        fw, pieces, kept = initial, [], []
        for seg in plan.segments:
            if not seg.from_initial:
                kept += moving(fw)
            seg_pieces, fw = run_ops(initial if seg.from_initial else fw, seg.ops, x, plan.rule, initial)
            pieces += seg_pieces
        ctx.save_for_backward(*tensors, *kept)
        ctx.plan = plan
        device = x.q.device.type  # the replay must round as the forward did
        ctx.autocast = (device, torch.is_autocast_enabled(device), torch.get_autocast_dtype(device))
        return (assemble(pieces, x.q), *moving(fw))

    @staticmethod
    @once_differentiable
    def backward(ctx, g_o, *g_end):
        tensors, needs = ctx.saved_tensors, ctx.needs_input_grad[1:]
        saved = Saved(x=OpInputs(*tensors[:5]), initial=FastWeights(*tensors[5:11]), needs_x=needs[:5],
                      needs_initial=FastWeights(*needs[5:11]), rule=ctx.plan.rule, autocast=ctx.autocast)  # fmt: skip
        kept = tensors[11:]
        starts = reversed([kept[i : i + 4] for i in range(0, len(kept), 4)])
        g_x: list[Optional[torch.Tensor]] = [None] * 5  # allocated by the first segment that reaches them
        g_initial = dict.fromkeys(("w02", "w1", "norm02", "norm1", "mom02", "mom1"))
        for seg in reversed(ctx.plan.segments):
            start = None if seg.from_initial else next(starts)
            g_start, g_norms = _replay(seg, start, saved, (g_o, g_end), g_x)
            # a segment that starts from the initial state ends the chain: the state before a reset is
            # read by no one
            g_end = (None,) * 4 if seg.from_initial else g_start
            for name, g in (*zip(MOVING, g_start if seg.from_initial else ()), *zip(NORMS, g_norms)):
                g_initial[name] = _add(g_initial[name], g)
        return (None, *g_x, *g_initial.values())


def _replay(seg: Segment, start, saved: Saved, g_out, g_x: list):
    """Rerun one segment with a graph and backpropagate its output gradient and its end state's.

    start: the kept (w02, w1, mom02, mom1) it began from, or None for the initial state; g_out:
    (g_o: [B, L, D], the gradient of the moving tensors of the state it handed on); g_x: the
    per-token gradient buffers, accumulated here (None: not reached yet). Returns the gradients of its start's moving
    tensors and of the two norms.
    """
    g_o, g_end = g_out
    lo, hi = min(op.start for op in seg.ops), max(op.end for op in seg.ops)
    local_ops = [op._replace(start=op.start - lo, end=op.end - lo) for op in seg.ops]
    x_leaves = [None if t is None else _leaf(t[:, lo:hi], need) for t, need in zip(saved.x, saved.needs_x)]
    init, needs = saved.initial, saved.needs_initial
    norms = [_leaf(getattr(init, n), getattr(needs, n)) for n in NORMS]
    if seg.from_initial:
        start_leaves = [_leaf(getattr(init, n), getattr(needs, n)) for n in MOVING]
    else:
        start_leaves = [_leaf(t, True) for t in start]
    fw = FastWeights(**dict(zip(MOVING + NORMS, start_leaves + norms)))
    device, enabled, dtype = saved.autocast
    # the forward under the forward's autocast state, so it rounds the same; the gradient outside it,
    # as autograd's own backward runs (autocast would recast the backward's matmuls)
    with torch.enable_grad(), torch.autocast(device, dtype=dtype, enabled=enabled):
        pieces, end = run_ops(fw, local_ops, OpInputs(*x_leaves), saved.rule, fw)
    outs = [(out, g_o[:, lo + s : lo + e]) for s, e, out in pieces]
    outs += [(t, g) for t, g in zip(moving(end), g_end) if t is not None and g is not None]
    outs = [(t, g) for t, g in outs if t.requires_grad]
    wanted = [t for t in (*start_leaves, *norms, *x_leaves) if t is not None and t.requires_grad]
    if not outs or not wanted:
        return (None,) * 4, (None, None)
    outputs, grad_outputs = zip(*outs)
    with torch.autocast(device, enabled=False):
        grads = torch.autograd.grad(outputs, wanted, grad_outputs, allow_unused=True)
    found = dict(zip(map(id, wanted), grads))
    for i, (t, leaf) in enumerate(zip(saved.x, x_leaves)):
        g = None if leaf is None else found.get(id(leaf))
        if g is not None:
            if g_x[i] is None:
                g_x[i] = torch.zeros_like(t)
            g_x[i][:, lo:hi] += g
    return tuple(found.get(id(t)) for t in start_leaves), tuple(found.get(id(t)) for t in norms)


def recomputed_lact_swiglu(
    fw: FastWeights, ops: Sequence[Op], x: OpInputs, rule: UpdateRule
) -> tuple[torch.Tensor, FastWeights]:
    """:func:`~lact_app.ops.lact_swiglu` on validated ops with the memory-saving backward.  -> (o, state)."""
    o, *ends = _RecomputedOps.apply(Plan(split_segments(ops), rule), *x, *fw._fields())
    return o, fw.replace(**dict(zip(MOVING, ends)))
