"""Memory-saving backward of the fast-weight op: keep the state at each update, recompute the rest.

Plain autograd through :func:`~lact_app.ops.lact_swiglu` keeps every intermediate of every update
(the SwiGLU activations, the inner gradients, the Newton–Schulz iterates) until the backward: memory
grows with L·H per head. Here the forward runs without a graph and keeps only the inputs, the
fast-weight state at the start of each *segment* (one update and the applies that read its result)
and the update's directions (the inner gradient, state-sized). The backward replays the segments in
reverse, each in three stages so that only one block of tokens' activations lives at a time:

1. the applies read the updated state: replayed block by block, they give its gradient;
2. the step after the inner gradient (momentum, Muon, add, renormalise), replayed from the kept
   directions, passes that gradient to the directions and to the segment's start state;
3. the inner gradient, a sum over the chunk's tokens, replayed block by block, passes the
   directions' gradient to the start state and to the tokens' k, v, lr.

The start state's gradient is the previous segment's end-state gradient (the recipe of the official
code's gradient-checkpointed chunks, done once in the op). Peak memory is one token block's graph
plus three state-sized tensors per update; the price is a second forward of the op. The maths is that
of the plain path (:func:`~lact_app.ops.swiglu.update_directions`, :func:`~lact_app.ops.swiglu.take_step`,
:func:`~lact_app.ops.swiglu.apply_fast_weights`), so the values are identical and the gradients equal
up to summation order.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, NamedTuple, Optional, Sequence

import torch
from torch.autograd.function import once_differentiable

from .schedule import Op
from .state import FastWeights
from .swiglu import (
    OpInputs,
    UpdateRule,
    apply_fast_weights,
    assemble,
    default_token_block,
    fast_weight_grads,
    take_step,
    update_directions,
)

#: Tensors of a state that change along the sequence (the row norms stay those of the initial weights).
MOVING = ("w02", "w1", "mom02", "mom1")
NORMS = ("norm02", "norm1")
Q, K, V, LR, MOMENTUM = range(5)  # positions in OpInputs


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


def _step(fw: FastWeights, d: Sequence[torch.Tensor], momentum: Optional[torch.Tensor], rule: UpdateRule):
    """:func:`take_step` from the directions d = (d02, d1) with the chunk's momentum: [B, n, 1] or None."""
    return take_step(fw, *d, momentum, rule)


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

    def spans(self, op: Op) -> Iterator[slice]:
        """The token blocks of an op's range the replay takes one at a time."""
        block = self.rule.token_block or default_token_block(self.x.q)
        return (slice(s, min(s + block, op.end)) for s in range(op.start, op.end, block))

    def tokens(self, i: int, span: slice) -> Optional[torch.Tensor]:
        """Input i of OpInputs on span, as a leaf that records its gradient when one is needed."""
        t = self.x[i]
        return None if t is None else _leaf(t[:, span], self.needs_x[i])

    @contextmanager
    def replaying(self):
        """Build a graph, rounding as the forward did (its autocast state)."""
        device, enabled, dtype = self.autocast
        with torch.enable_grad(), torch.autocast(device, dtype=dtype, enabled=enabled):
            yield


def _grad(pairs, wanted) -> dict[int, Optional[torch.Tensor]]:
    """Gradients of the (output, output gradient) pairs w.r.t. the tensors wanted, keyed by id.

    Run outside the replay's autocast, as autograd's own backward runs (autocast would recast the
    backward's matmuls)."""
    pairs = [(t, g) for t, g in pairs if t is not None and g is not None and t.requires_grad]
    wanted = [t for t in wanted if t is not None and t.requires_grad]
    if not pairs or not wanted:
        return {}
    outputs, grad_outputs = zip(*pairs)
    with torch.autocast(outputs[0].device.type, enabled=False):
        grads = torch.autograd.grad(outputs, wanted, grad_outputs, allow_unused=True)
    return dict(zip(map(id, wanted), grads))


class TokenGrads:
    """The per-token gradients of q, k, v, lr, momentum, each allocated when a replay first reaches it."""

    def __init__(self, x: OpInputs):
        self.x, self.buffers = x, [None] * 5

    def add(self, i: int, span: slice, g: Optional[torch.Tensor]) -> None:
        if g is None:
            return
        if self.buffers[i] is None:
            self.buffers[i] = torch.zeros_like(self.x[i])
        self.buffers[i][:, span] += g


class _RecomputedOps(torch.autograd.Function):
    """Inputs: plan, then q, k, v, lr, momentum and w02, w1, norm02, norm1, mom02, mom1 of the initial
    state. Outputs: o: [B, L, D] and the final w02, w1, mom02, mom1."""

    @staticmethod
    def forward(ctx, plan: Plan, *tensors):
        x, initial = OpInputs(*tensors[:5]), FastWeights(*tensors[5:])
        fw, pieces, kept = initial, [], []
        for seg in plan.segments:
            if seg.from_initial:
                fw = initial
            else:
                kept += moving(fw)
            head = seg.ops[0]
            if head.update:
                k, v, lr, momentum = (None if t is None else t[:, head.start : head.end] for t in x[K:])
                d = update_directions(fw, k, v, lr, plan.rule.token_block)
                kept += d
                fw = _step(fw, d, momentum, plan.rule)
            for op in seg.ops:
                if op.apply:
                    o = apply_fast_weights(fw, x.q[:, op.start : op.end], plan.rule.token_block)
                    pieces.append((op.start, op.end, o))
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
        token_grads = TokenGrads(saved.x)
        g_initial = dict.fromkeys(("w02", "w1", "norm02", "norm1", "mom02", "mom1"))
        for seg in reversed(ctx.plan.segments):
            d = start = None
            if seg.ops[0].update:
                d, kept = kept[-2:], kept[:-2]
            if not seg.from_initial:
                start, kept = kept[-4:], kept[:-4]
            g_start, g_norms = _replay(seg, (start, d), saved, (g_o, g_end), token_grads)
            # a segment that starts from the initial state ends the chain: the state before a reset is
            # read by no one
            g_end = (None,) * 4 if seg.from_initial else g_start
            for name, g in (*zip(MOVING, g_start if seg.from_initial else ()), *zip(NORMS, g_norms)):
                g_initial[name] = _add(g_initial[name], g)
        return (None, *token_grads.buffers, *g_initial.values())


def _replay(seg: Segment, kept, saved: Saved, g_out, token_grads: TokenGrads):
    """Backpropagate one segment's output gradient and its end state's to its start (module docstring).

    kept: (the (w02, w1, mom02, mom1) it started from, or None for the initial state; its update's
    directions (d02, d1), or None); g_out: (g_o: [B, L, D], the gradient of the moving tensors of the
    state it handed on). Returns the gradients of its start's moving tensors and of the two norms.
    """
    (start, d), (g_o, g_end) = kept, g_out
    init, needs = saved.initial, saved.needs_initial
    norms = [_leaf(getattr(init, n), getattr(needs, n)) for n in NORMS]
    if start is None:
        start = [_leaf(getattr(init, n), getattr(needs, n)) for n in MOVING]
    else:
        start = [_leaf(t, True) for t in start]  # a gradient for the previous segment
    fw = FastWeights(**dict(zip(MOVING + NORMS, start + norms)))
    head = seg.ops[0]
    if head.update:
        d = [_leaf(t, True) for t in d]
        momentum = saved.tokens(MOMENTUM, slice(head.start, head.end))
        with saved.replaying():
            end = _step(fw, d, momentum, saved.rule)
    else:
        end = fw
    g_end = _through_applies(seg, end, saved, (g_o, g_end), token_grads)
    if not head.update:
        return g_end, (None, None)
    found = _grad(zip(moving(end), g_end), [*start, *norms, *d, momentum])
    if momentum is not None:
        token_grads.add(MOMENTUM, slice(head.start, head.end), found.get(id(momentum)))
    g_start = [found.get(id(t)) for t in start]
    g_d = [found.get(id(t)) for t in d]
    if any(g is not None for g in g_d):
        g_w = _through_directions(head, fw, saved, g_d, token_grads)
        g_start[:2] = [_add(g, more) for g, more in zip(g_start[:2], g_w)]
    return g_start, tuple(found.get(id(t)) for t in norms)


def _through_applies(seg: Segment, end: FastWeights, saved: Saved, g_out, token_grads: TokenGrads):
    """Stage 1: the gradient of the segment's updated state, g_end plus what its applies read.

    Replays each apply block by block from a graph-free copy of the updated weights."""
    g_o, g_end = g_out
    g_end = list(g_end)
    w02, w1 = _leaf(end.w02, True), _leaf(end.w1, True)
    read = end.replace(w02=w02, w1=w1)
    for op in seg.ops:
        for span in saved.spans(op) if op.apply else ():
            q = saved.tokens(Q, span)
            with saved.replaying():
                out = apply_fast_weights(read, q, saved.rule.token_block)
            found = _grad([(out, g_o[:, span])], [w02, w1, q])
            g_end[0], g_end[1] = _add(g_end[0], found.get(id(w02))), _add(g_end[1], found.get(id(w1)))
            token_grads.add(Q, span, found.get(id(q)))
    return g_end


def _through_directions(head: Op, fw: FastWeights, saved: Saved, g_d, token_grads: TokenGrads):
    """Stage 3: pass the directions' gradient g_d = (g02, g1) through the inner gradient, a sum over
    the update's tokens, block by block, to the tokens' k, v, lr and to the start weights.

    Returns the start weights' part of the gradient (g_w02, g_w1)."""
    g_w = [None, None]
    for span in saved.spans(head):
        k, v, lr = (saved.tokens(i, span) for i in (K, V, LR))
        with saved.replaying():
            parts = fast_weight_grads(fw, k, v, lr, saved.rule.token_block)
        found = _grad([(p, g.to(p.dtype)) for p, g in zip(parts, g_d) if g is not None], [fw.w02, fw.w1, k, v, lr])
        g_w = [_add(g, found.get(id(t))) for g, t in zip(g_w, (fw.w02, fw.w1))]
        for i, t in zip((K, V, LR), (k, v, lr)):
            token_grads.add(i, span, found.get(id(t)))
    return g_w


def recomputed_lact_swiglu(
    fw: FastWeights, ops: Sequence[Op], x: OpInputs, rule: UpdateRule
) -> tuple[torch.Tensor, FastWeights]:
    """:func:`~lact_app.ops.lact_swiglu` on validated ops with the memory-saving backward.  -> (o, state)."""
    o, *ends = _RecomputedOps.apply(Plan(split_segments(ops), rule), *x, *fw._fields())
    return o, fw.replace(**dict(zip(MOVING, ends)))
