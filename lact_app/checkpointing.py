"""Activation checkpointing of a module in place, through ``torch.utils.checkpoint`` (public API).

The module keeps its class, its parameter names and its place in the model (no wrapper module, so
checkpoints and ``fully_shard`` see the same tree): only its ``forward`` is replaced on the
instance. FSDP2's ``fully_shard`` may be applied afterwards: its hooks run around ``__call__``,
which still gathers the parameters before the checkpointed forward, and its pre-backward hook
gathers them again before the recomputation.
"""

from __future__ import annotations

import types
from typing import Any

from torch import nn
from torch.utils.checkpoint import checkpoint


def _checkpointed_forward(self: nn.Module, *args: Any, **kwargs: Any) -> Any:
    # The class's forward, not a saved bound method: a deep copy of the module then checkpoints
    # its own forward. Non-reentrant: works with keyword arguments, inputs without gradients and
    # FSDP2, and is the variant PyTorch recommends.
    return checkpoint(type(self).forward, self, *args, use_reentrant=False, **kwargs)


def checkpoint_activations(module: nn.Module) -> None:
    """Makes ``module`` recompute its activations in backward instead of keeping them."""
    module.forward = types.MethodType(_checkpointed_forward, module)
