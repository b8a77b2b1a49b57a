"""Boolean attention masks, ``[Lq, Lk]`` with True = may attend (``scaled_dot_product_attention``'s
convention), and the per-view reshape that replaces a block-diagonal mask.

Dense masks cost Lq·Lk bytes: fine for tests and short sequences; for long interleaved video
sequences prefer :func:`lact_app.nn.chunk_local_attention`, which never builds one.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from einops import rearrange

from .layout import NOISY, Segment, preceding_clean, segment_bounds


def full_mask(
    num_queries: int, num_keys: Optional[int] = None, device: Optional[torch.device] = None
) -> torch.Tensor:
    """Every query sees every key.  -> [Lq, Lk] (Lk defaults to Lq)."""
    return torch.ones(num_queries, num_queries if num_keys is None else num_keys, dtype=torch.bool, device=device)


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


def block_diagonal_mask(view_len: int, num_views: int, device: Optional[torch.device] = None) -> torch.Tensor:
    """Each of ``num_views`` consecutive views of ``view_len`` tokens attends within itself.

    Returns:
        [V * l, V * l] bool. Same result as :func:`per_view` + full attention, which is faster.
    """
    view = torch.arange(num_views * view_len, device=device) // view_len
    return view[:, None] == view[None, :]


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


def chunk_local_mask(
    segments: Sequence[Segment], clean_context: Optional[int] = None, device: Optional[torch.device] = None
) -> torch.Tensor:
    """Chunk-local attention over an interleaved layout (see :func:`segment_keys`).

    Args:
        segments: the layout, e.g. ``interleaved_layout(3, 2)`` = N0 | C0 N1 | C1 N2.
        clean_context: how many trailing tokens of the preceding clean segment a noisy one sees
            (the reference's ``kv_cache_size``); None for all of them.

    Returns:
        [L, L] bool, L the total length.
    """
    bounds = segment_bounds(segments)
    length = bounds[-1][1] if bounds else 0
    mask = torch.zeros(length, length, dtype=torch.bool, device=device)
    for (start, end), ranges in zip(bounds, segment_keys(segments, clean_context)):
        for k_start, k_end in ranges:
            mask[start:end, k_start:k_end] = True
    return mask

