"""Chunk schedules: which tokens update the fast weights and which read them, in what order.

A schedule is a sequence of :class:`Op`. Each op covers the token range ``[start, end)``; when
``update`` is set the fast weights take one step on those tokens' keys/values, when ``apply`` is set
the (possibly just updated) fast weights are applied to those tokens' queries. An op with both flags
updates first, then applies ("update-then-apply", LACT_SPEC.md §1.9(c)). An op with ``reset`` first
returns the state to the one the call started from (fresh fast weights, no momentum, for a new packed
document).
"""

from __future__ import annotations

from typing import NamedTuple, Sequence


class Op(NamedTuple):
    """One step of a schedule over the token range ``[start, end)``."""

    start: int
    end: int
    update: bool
    apply: bool
    reset: bool = False


def causal_schedule(L: int, chunk: int, update_last: bool = True) -> list[Op]:
    """Shifted block-causal schedule (LM, LACT_SPEC.md §1.9(a)): per chunk aligned at 0, apply then update.

    A chunk's tokens read the weights that have seen only earlier chunks. Partial chunks never
    update. With ``update_last`` every complete chunk updates, so the returned state continues the
    sequence (streaming / generation); without it the final chunk, which no later token reads, is
    skipped as the reference does in training.
    """
    if L < 0 or chunk <= 0:
        raise ValueError(f"causal_schedule needs L >= 0 and chunk > 0, got L={L}, chunk={chunk}")
    ops: list[Op] = []
    for start in range(0, L, chunk):
        end = min(start + chunk, L)
        ops.append(Op(start, end, update=False, apply=True))
        complete = end - start == chunk
        if complete and (update_last or end < L):
            ops.append(Op(start, end, update=True, apply=False))
    return ops


def packed_causal_schedule(cu_seqlens: Sequence[int], chunk: int, update_last: bool = False) -> list[Op]:
    """The causal schedule of packed documents (the fla / flash-attention ``cu_seqlens`` convention).

    Document i covers ``[cu_seqlens[i], cu_seqlens[i + 1])``; each gets :func:`causal_schedule`
    with chunks aligned at its own start (a last partial chunk per document), its first op resetting
    the state, so every document runs as if alone.
    """
    ops: list[Op] = []
    for start, end in zip(cu_seqlens[:-1], cu_seqlens[1:]):
        doc = causal_schedule(end - start, chunk, update_last)
        ops += [op._replace(start=op.start + start, end=op.end + start, reset=i == 0) for i, op in enumerate(doc)]
    return ops


def bidirectional_schedule(L: int) -> list[Op]:
    """Set schedule (LACT_SPEC.md §1.9(b)): one update over all ``L`` tokens, then apply to all."""
    if L <= 0:
        raise ValueError(f"bidirectional_schedule needs L > 0, got L={L}")
    return [Op(0, L, update=True, apply=True)]


def validate_schedule(schedule: Sequence[Op], L: int) -> list[Op]:
    """Check every op lies in ``[0, L)``, is non-empty, and that no token is applied twice."""
    ops = [Op(*op) for op in schedule]
    applied: list[tuple[int, int]] = []
    for op in ops:
        if not 0 <= op.start < op.end <= L:
            raise ValueError(f"schedule op {op} is outside the sequence of length {L} or empty")
        if op.apply:
            applied.append((op.start, op.end))
    applied.sort()
    for (s0, e0), (s1, e1) in zip(applied, applied[1:]):
        if s1 < e0:
            raise ValueError(f"schedule applies tokens [{s1}, {min(e0, e1)}) twice")
    return ops
