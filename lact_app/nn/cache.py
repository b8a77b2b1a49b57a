"""`MixerCache`: what a token mixer carries from one piece of a sequence to the next.

One protocol for every streaming use: LM decoding (token by token), video sampling (chunk by
chunk) and NVS rendering (input views once, then targets in groups). A mixer called with a cache
continues the sequence the cache describes and returns the advanced cache; called without one it
sees a whole sequence and returns None. Each mixer fills the fields it needs:

* ``fast``: the fast weights (and momentum buffers) after the last update (None: the learned
  initial weights);
* ``pending``: the fast-weight inputs of a causal layer's incomplete chunk (their queries were
  applied already; they update the fast weights once the chunk completes): a preallocated
  one-chunk buffer whose first ``pos % chunk`` tokens are valid;
* ``keys``, ``values``: ``[B, heads, Lk, Dh]`` attention context (the LM's preallocated window ring
  or growing full-attention buffer, see :mod:`~lact_app.nn.kv_buffer`; the clean chunks so far; or
  the input views' tokens);
* ``pos``: tokens consumed so far (positions of RoPE and of the causal window).

The dataclass is frozen, but the LM's buffers are written in place by the next step (decoding
allocates nothing per token), so a stream continues from its latest cache only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from ..ops import FastWeights
from .fast_inputs import FastInputs


@dataclass(frozen=True)
class MixerCache:
    """Streaming state of one mixer (see the module docstring)."""

    pos: int = 0
    fast: Optional[FastWeights] = None
    pending: Optional[FastInputs] = None
    keys: Optional[torch.Tensor] = None
    values: Optional[torch.Tensor] = None
