"""Preallocated key/value buffers of a causal attention stream (LM decoding).

The keys and values a :class:`~lact_app.nn.MixerCache` holds for a causal layer are one buffer
each, ``[B, heads, capacity, Dh]``, written in place, so a decoding step allocates and copies
nothing that grows with the context:

* sliding window ``w``: a ring of ``w`` slots, position t in slot ``t % w``. One slot more than the
  ``w − 1`` earlier keys a query needs, so a step writes its own key first and then attends over
  the whole buffer, with no mask and no concatenation: once the ring is full it holds exactly the
  window ``t − w + 1 … t``. The order of the slots does not matter to softmax attention, and the
  keys carry their RoPE rotation already.
* full attention (``window`` None): position t in slot t; the capacity doubles when it runs out
  (amortised O(1) per token).

The buffers are shared by the successive caches of a stream (the frozen ``MixerCache`` holds the
same tensors, written in place), so an older cache of the same stream must not be resumed.
"""

from __future__ import annotations

from typing import Optional

import torch

KV = tuple[torch.Tensor, torch.Tensor]


def reserve(kv: Optional[KV], pos: int, new: KV, window: Optional[int]) -> KV:
    """Buffers with a slot for the ``new`` tokens at positions ``pos ..``: the cached ``kv``
    ([B, heads, capacity, Dh], None at the start), allocated or grown (full attention) as needed.

    new: the new keys and values [B, heads, L, Dh] (their batch, heads, dtype and device).
    """
    needed = pos + new[0].size(2)
    if kv is not None and (window is not None or kv[0].size(2) >= needed):
        return kv
    capacity = window if window is not None else max(needed, 2 * (0 if kv is None else kv[0].size(2)))
    buffers = tuple(t.new_empty(t.size(0), t.size(1), capacity, t.size(3)) for t in new)
    if kv is not None:  # full attention outgrew its buffer: keep the pos tokens so far
        for buffer, old in zip(buffers, kv):
            buffer[:, :, :pos] = old[:, :, :pos]
    return buffers


def write(kv: KV, pos: int, new: KV, window: Optional[int]) -> None:
    """Store the new keys and values ([B, heads, L, Dh], positions ``pos ..``) in their slots of ``kv``
    (from :func:`reserve`). Of more than ``window`` new tokens only the last ``window`` are kept."""
    L = new[0].size(2)
    if window is None:
        for buffer, t in zip(kv, new):
            buffer[:, :, pos : pos + L] = t
        return
    keep = min(L, window)
    first = (pos + L - keep) % window  # slot of the oldest kept token; the rest wrap around to 0
    head = min(keep, window - first)
    for buffer, t in zip(kv, new):
        t = t[:, :, L - keep :]
        buffer[:, :, first : first + head] = t[:, :, :head]
        if keep > head:
            buffer[:, :, : keep - head] = t[:, :, head:]


def valid(kv: KV, count: int, window: Optional[int]) -> KV:
    """The slots that hold the first ``count`` tokens' (or, for a full ring, the window's) keys and
    values, in slot order: [B, heads, min(count, capacity), Dh] views."""
    n = count if window is None else min(count, window)
    return kv[0][:, :, :n], kv[1][:, :, :n]


def in_order(kv: KV, pos: int, window: Optional[int]) -> tuple[KV, int]:
    """The cached keys and values in position order, and the position of the first.

    -> ([B, heads, n, Dh] each, pos − n): n = pos for full attention, min(pos, window) for a ring.
    """
    if window is None or pos <= window:
        n = pos if window is None else min(pos, window)
        return valid(kv, n, window), pos - n
    start = pos % window  # the slot of the oldest cached position, pos − window
    return tuple(torch.cat([t[:, :, start:], t[:, :, :start]], dim=2) for t in kv), pos - window
