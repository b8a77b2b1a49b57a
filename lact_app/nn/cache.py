"""`MixerCache`: what a token mixer carries from one piece of a sequence to the next.

One protocol for every streaming use: LM decoding (token by token), video sampling (chunk by
chunk) and NVS rendering (input views once, then targets in groups). A mixer called with a cache
continues the sequence the cache describes and returns the advanced cache; called without one it
sees a whole sequence and returns None. Each mixer fills the fields it needs:

* ``fast``: the fast weights (and momentum buffers) after the last update (None: the learned
  initial weights);
* ``pending``: a causal layer's incomplete chunk (:class:`PendingChunk`: its queries were applied
  already; it updates the fast weights once the chunk completes): a preallocated one-chunk buffer
  whose first ``pos % chunk`` tokens are valid;
* ``keys``, ``values``: ``[B, heads, Lk, Dh]`` attention context (the LM's preallocated window ring
  or growing full-attention buffer, see :mod:`~lact_app.nn.kv_buffer`; the clean chunks so far; or
  the input views' tokens);
* ``pos``: tokens consumed so far (positions of RoPE and of the causal window).

The dataclass is frozen, but the LM's buffers are written in place by the next step (decoding
allocates nothing per token), so a stream continues from its latest cache only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Optional

import torch

from ..ops import FastWeights


class PendingChunk(NamedTuple):
    """Tokens of a causal stream's incomplete chunk, kept to update the fast weights once it completes.

    k, v: [B, n, n_h * D] the fast-weight keys and values; x: [B, n, dim] the layer input, from
    which the lr and momentum heads compute the chunk's step sizes at completion, all tokens at
    once (a decoding step does not run them, and the values are the ones a prefill computes).
    """

    k: torch.Tensor
    v: torch.Tensor
    x: torch.Tensor

    def buffer(self, size: int) -> "PendingChunk":
        """Uninitialised storage for ``size`` tokens like these (batch, widths, dtypes): the
        preallocated incomplete chunk, filled in place by :meth:`write`."""
        return PendingChunk(*(t.new_empty(t.size(0), size, t.size(2)) for t in self))

    def write(self, new: "PendingChunk", start: int) -> None:
        """Copy ``new``'s tokens into these buffers at [start, start + n) in place."""
        n = new.k.size(1)
        for buffer, t in zip(self, new):
            buffer.narrow(1, start, n).copy_(t)

    def head(self, n: int) -> "PendingChunk":
        """The first ``n`` tokens (views)."""
        return PendingChunk(*(t[:, :n] for t in self))

    def tail(self, n: int) -> "PendingChunk":
        """The last ``n`` tokens (views)."""
        return PendingChunk(*(t[:, t.size(1) - n :] for t in self))

    def extend(self, other: "PendingChunk") -> "PendingChunk":
        """These tokens followed by ``other``'s."""
        return PendingChunk(*(torch.cat([a, b], dim=1) for a, b in zip(self, other)))


@dataclass(frozen=True)
class MixerCache:
    """Streaming state of one mixer (see the module docstring)."""

    pos: int = 0
    fast: Optional[FastWeights] = None
    pending: Optional[PendingChunk] = None
    keys: Optional[torch.Tensor] = None
    values: Optional[torch.Tensor] = None
