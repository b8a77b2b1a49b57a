"""The interleaved noisy/clean chunk layout of autoregressive video training (LACT_SPEC.md §4.2).

A sequence is a list of :class:`Segment` s, each a run of tokens of one kind:

    N0 | C0 N1 | C1 N2 | …        (N_i noisy chunk i, C_i its clean twin)

With ``repeats`` R > 1 each noisy chunk appears R times (independent noise draws) after its clean
predecessor. The same segment list drives the chunk-local attention mask
(:func:`lact_app.nn.segment_keys`, run by :func:`lact_app.nn.attend`) and the
fast-weight schedule (:func:`interleaved_schedule`), so both always agree.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

from ..ops import Op

NOISY = "noisy"
CLEAN = "clean"
SEGMENT_KINDS = (NOISY, CLEAN)


class Segment(NamedTuple):
    """A run of ``length`` tokens of one kind (``"noisy"`` or ``"clean"``)."""

    kind: str
    length: int


def interleaved_layout(
    num_chunks: int, chunk_len: int, repeats: int = 1, last_clean: bool = False
) -> list[Segment]:
    """``N0^R | C0 N1^R | … | C_{n−2} N_{n−1}^R`` (+ ``C_{n−1}`` if ``last_clean``).

    Training drops the last clean chunk (nothing reads it); generation appends it to update the
    fast weights and fill the KV cache for the next chunk.
    """
    if num_chunks < 1 or chunk_len < 1 or repeats < 1:
        raise ValueError(f"need num_chunks, chunk_len, repeats >= 1, got {num_chunks}, {chunk_len}, {repeats}")
    segments = [Segment(NOISY, chunk_len)] * repeats
    for _ in range(num_chunks - 1):
        segments += [Segment(CLEAN, chunk_len)] + [Segment(NOISY, chunk_len)] * repeats
    if last_clean:
        segments.append(Segment(CLEAN, chunk_len))
    return segments


def segment_bounds(segments: Sequence[Segment]) -> list[tuple[int, int]]:
    """Token ranges ``[start, end)`` of the segments, in order."""
    bounds, pos = [], 0
    for seg in segments:
        if seg.kind not in SEGMENT_KINDS or seg.length < 1:
            raise ValueError(f"bad segment {seg}: kind must be one of {SEGMENT_KINDS}, length >= 1")
        bounds.append((pos, pos + seg.length))
        pos += seg.length
    return bounds


def preceding_clean(segments: Sequence[Segment]) -> list[int | None]:
    """For each segment, the index of the nearest clean segment before it (None if there is none)."""
    out, last = [], None
    for i, seg in enumerate(segments):
        out.append(last)
        if seg.kind == CLEAN:
            last = i
    return out


def interleaved_schedule(segments: Sequence[Segment]) -> list[Op]:
    """Fast-weight schedule of the interleaved layout (LACT_SPEC.md §1.9(d), §4.3).

    Noisy segments before the first clean one read the initial weights; each clean segment updates
    the weights, which are then applied to it and to the noisy segments up to the next clean one
    (update-then-apply). Momentum-free by construction of the reference; the op list does not care.
    """
    bounds = segment_bounds(segments)
    ops: list[Op] = []
    run_start = 0  # start of the tokens reading the current weights
    for seg, (start, end) in zip(segments, bounds):
        if seg.kind == CLEAN:
            if start > run_start:
                ops.append(Op(run_start, start, update=False, apply=True))
            ops.append(Op(start, end, update=True, apply=False))
            run_start = start
    if bounds and bounds[-1][1] > run_start:
        ops.append(Op(run_start, bounds[-1][1], update=False, apply=True))
    return ops
