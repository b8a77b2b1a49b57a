"""Dense [Lq, Lk] reference masks (True = may attend) for the tests: the block descriptions the
models use (:class:`lact_app.nn.QueryBlock`) must attend exactly like these."""

from __future__ import annotations

from typing import Optional, Sequence

import torch

from lact_app.nn import QueryBlock, Segment, segment_blocks, segment_bounds, segment_keys


def block_diagonal_mask(view_len: int, num_views: int) -> torch.Tensor:
    """Each of ``num_views`` consecutive views of ``view_len`` tokens attends within itself.  -> [V·l, V·l]."""
    view = torch.arange(num_views * view_len) // view_len
    return view[:, None] == view[None, :]


def dense_mask(blocks: Sequence[QueryBlock], num_keys: int) -> torch.Tensor:
    """The [Lq, num_keys] mask that query blocks describe."""
    mask = torch.zeros(blocks[-1].end, num_keys, dtype=torch.bool)
    for block in blocks:
        cols = torch.cat([torch.arange(s, e) for s, e in block.keys])
        allowed = torch.ones(block.end - block.start, cols.numel(), dtype=torch.bool)
        if block.mask is not None:
            allowed = block.mask
        mask[block.start:block.end, cols] = allowed
    return mask


def chunk_local_mask(segments: Sequence[Segment], clean_context: Optional[int] = None) -> torch.Tensor:
    """Chunk-local attention over an interleaved layout (:func:`lact_app.nn.segment_keys`).  -> [L, L]."""
    length = segment_bounds(segments)[-1][1]
    return dense_mask(segment_blocks(segments, segment_keys(segments, clean_context)), length)
