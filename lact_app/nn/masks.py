"""Attention patterns for :func:`lact_app.nn.attend`: boolean masks ``[Lq, Lk]`` (True = may attend,
``scaled_dot_product_attention``'s convention), query blocks with their key ranges (so long
sequences never build a dense [L, L] mask), and the per-view reshape that replaces a
block-diagonal mask.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Optional, Sequence

import torch
from einops import rearrange

from .attention import QueryBlock
from .layout import NOISY, Segment, preceding_clean, segment_bounds


def causal_window_mask(
    num_queries: int,
    window: Optional[int] = None,
    offset: int = 0,
    num_keys: Optional[int] = None,
    key_offset: int = 0,
    device: Optional[torch.device] = None,
) -> torch.Tensor:
    """Causal sliding window: the token at position t sees positions t − window + 1 … t.

    Queries sit at absolute positions ``offset .. offset + Lq − 1`` and keys at ``key_offset ..
    key_offset + Lk − 1``, so the same builder serves training (offsets 0) and decoding against a
    rolling KV cache (``offset`` = position of the first new token, ``key_offset`` = position of the
    oldest cached key).

    Args:
        num_queries: Lq.
        window: keys per query including itself; None for plain causal attention.
        offset: absolute position of the first query.
        num_keys: Lk; defaults to ``offset + Lq − key_offset`` (keys up to the last query).
        key_offset: absolute position of the first key.

    Returns:
        [Lq, Lk] bool.
    """
    if window is not None and window < 1:
        raise ValueError(f"window must be >= 1 or None, got {window}")
    num_keys = offset + num_queries - key_offset if num_keys is None else num_keys
    q_pos = torch.arange(offset, offset + num_queries, device=device)
    k_pos = torch.arange(key_offset, key_offset + num_keys, device=device)
    lag = q_pos[:, None] - k_pos[None, :]
    mask = lag >= 0
    return mask if window is None else mask & (lag < window)


def per_view(x: torch.Tensor, num_views: int) -> torch.Tensor:
    """[b, V * l, ...] -> [b * V, l, ...]: views become batch items (per-view attention, no mask)."""
    return rearrange(x, "b (v l) ... -> (b v) l ...", v=num_views)


def merge_views(x: torch.Tensor, num_views: int) -> torch.Tensor:
    """[b * V, l, ...] -> [b, V * l, ...], the inverse of :func:`per_view`."""
    return rearrange(x, "(b v) l ... -> b (v l) ...", v=num_views)


def segment_keys(segments: Sequence[Segment], clean_context: Optional[int] = None) -> list[list[tuple[int, int]]]:
    """Key ranges of every segment under chunk-local attention, in key order.

    A clean segment sees itself; a noisy one sees the last ``clean_context`` tokens (all if None) of
    the nearest preceding clean segment, then itself. Noisy segments before any clean one, and each
    repeat of a noisy chunk, see only themselves (LACT_SPEC.md §4.3).
    """
    bounds = segment_bounds(segments)
    keys = []
    for seg, own, prev in zip(segments, bounds, preceding_clean(segments)):
        ranges = [own]
        if seg.kind == NOISY and prev is not None:
            c_start, c_end = bounds[prev]
            if clean_context is not None:
                c_start = max(c_start, c_end - clean_context)
            ranges.insert(0, (c_start, c_end))
        keys.append(ranges)
    return keys


@lru_cache(maxsize=32)
def causal_window_blocks(
    num_queries: int, window: Optional[int], q_offset: int = 0, k_offset: int = 0, device: Optional[torch.device] = None
) -> tuple[QueryBlock, ...]:
    """Causal sliding-window attention of queries at absolute positions ``q_offset ..`` over keys
    at ``k_offset ..``, in query blocks of ``window`` (one block when ``window`` is None).

    The keys must cover every position a query may see (``k_offset <= q_offset − window + 1`` or
    0, up to the last query). Each block sees at most 2·window keys, so memory stays linear.
    Blocks with the same pattern share one mask tensor, and every layer of a model gets the same
    blocks (cached), so the backward keeps one copy of each mask (see :func:`~lact_app.nn.attention.additive_mask`).
    """
    block = num_queries if window is None else window
    blocks, masks = [], {}
    for s in range(0, num_queries, block):
        e = min(s + block, num_queries)
        first = q_offset + s
        lo = 0 if window is None else max(0, first - window + 1 - k_offset)
        hi = q_offset + e - k_offset
        pattern = (e - s, hi - lo, first - k_offset - lo)  # the mask depends on positions relative to its first key
        if pattern not in masks:
            with torch.inference_mode(False):  # cached: made during validation, it may serve a training step
                masks[pattern] = causal_window_mask(e - s, window, first, hi - lo, k_offset + lo, device=device)
        blocks.append(QueryBlock(s, e, ((lo, hi),), mask=masks[pattern]))
    return tuple(blocks)


def segment_blocks(segments: Sequence[Segment], ranges: Sequence[Sequence[tuple[int, int]]], first: int = 0) -> list[QueryBlock]:
    """One query block per segment from index ``first`` on, over its key ``ranges`` (e.g. of
    :func:`segment_keys`); query positions count from the start of segment ``first``."""
    bounds = segment_bounds(segments)
    offset = bounds[first][0] if bounds[first:] else 0
    return [QueryBlock(s - offset, e - offset, tuple(keys)) for (s, e), keys in zip(bounds[first:], ranges[first:])]
