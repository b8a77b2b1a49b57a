"""`Packing`: variable-length documents packed into one row (the fla / flash-attention
``cu_seqlens`` convention), so a long row carries no padding yet every document runs as if alone.

Document i covers tokens ``[cu_seqlens[i], cu_seqlens[i + 1])``. A packed layer reads three
things from this object: each token's RoPE position (restarting at 0 at its document's start),
attention query blocks whose masks stop at document starts, and the document bounds (the LaCT
schedule resets the fast weights at each start, :func:`~lact_app.ops.packed_causal_schedule`).
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

import torch

from .attention import QueryBlock
from .masks import causal_window_mask

#: Query block of packed full (unwindowed) causal attention: its masks are [block, keys back to
#: the block's first document start], so memory stays linear in the row length.
FULL_ATTENTION_BLOCK = 1024


def check_cu_seqlens(cu_seqlens: Sequence[int], length: int) -> list[int]:
    """``cu_seqlens`` as a list, checked: 0 first, ``length`` last, strictly increasing."""
    bounds = [int(b) for b in cu_seqlens]
    if len(bounds) < 2 or bounds[0] != 0 or bounds[-1] != length:
        raise ValueError(f"cu_seqlens must run from 0 to the row length {length}, got {bounds[:3]} … {bounds[-1:]}")
    if any(e <= s for s, e in zip(bounds, bounds[1:])):
        raise ValueError("cu_seqlens must be strictly increasing (no empty documents)")
    return bounds


class Packing:
    """Documents packed into one row of ``length`` tokens.

    Args:
        cu_seqlens: [N + 1] document starts then the row length (int tensor or sequence).
        length: T, the row length.
        device: where the positions and masks live.
    """

    def __init__(self, cu_seqlens: Union[torch.Tensor, Sequence[int]], length: int, device: Optional[torch.device] = None):
        if isinstance(cu_seqlens, torch.Tensor):
            cu_seqlens = cu_seqlens.tolist()
        self.cu_seqlens = check_cu_seqlens(cu_seqlens, length)
        starts = torch.tensor(self.cu_seqlens[:-1], device=device)
        lengths = torch.tensor([e - s for s, e in zip(self.cu_seqlens, self.cu_seqlens[1:])], device=device)
        self.doc_start = starts.repeat_interleave(lengths)  # [T]: the first token of each token's document
        self.positions = torch.arange(length, device=device) - self.doc_start  # [T]
        self._blocks: dict[Optional[int], list[QueryBlock]] = {}

    @property
    def uniform_length(self) -> Optional[int]:
        """L when every document is L tokens long (the row is N windows of one length), else None."""
        lengths = {e - s for s, e in zip(self.cu_seqlens, self.cu_seqlens[1:])}
        return lengths.pop() if len(lengths) == 1 else None

    def attention_blocks(self, window: Optional[int]) -> list[QueryBlock]:
        """Causal (sliding-window) attention inside each document, as query blocks of ``window``
        (``FULL_ATTENTION_BLOCK`` when None) over keys back to the earliest one a query may see.

        One sdpa per block whatever the number of documents; the mask adds "same document" to the
        causal window. Built once per window and shared by every layer.
        """
        if window not in self._blocks:
            self._blocks[window] = self._build_blocks(window)
        return self._blocks[window]

    def _build_blocks(self, window: Optional[int]) -> list[QueryBlock]:
        T, device = self.doc_start.numel(), self.doc_start.device
        block = window or FULL_ATTENTION_BLOCK
        blocks = []
        for s in range(0, T, block):
            e = min(s + block, T)
            first = int(self.doc_start[s])  # queries are in order: the block's earliest visible key
            lo = first if window is None else max(first, s - window + 1)
            keys = torch.arange(lo, e, device=device)
            mask = causal_window_mask(e - s, window, s, e - lo, lo, device=device)
            mask &= keys[None, :] >= self.doc_start[s:e, None]
            blocks.append(QueryBlock(s, e, ((lo, e),), mask=mask))
        return blocks
