"""Parameter names of checkpoints written before the one-model-interface change (see README).

The LaCT branches of the LM and video mixers became one :class:`~lact_app.nn.LaCTLayer` named
``lact``; these tables rename the old state-dict keys (substring → substring, applied in order).
NVS names did not change.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

Renames = Sequence[tuple[str, str]]

LM_RENAMES: Renames = (
    (".mixer.fast_inputs.", ".mixer.lact.inputs."),
    (".mixer.lr_proj.", ".mixer.lact.lr_proj."),
    (".mixer.momentum_proj.", ".mixer.lact.momentum_proj."),
    (".mixer.fast.", ".mixer.lact.branch."),
    (".mixer.fast_norm.", ".mixer.lact.output_norm."),
    (".mixer.gate.", ".mixer.lact.gate."),
)

VIDEO_RENAMES: Renames = ((".mixer.fast.", ".mixer.lact."),)


def rename_keys(state: Mapping[str, Any], renames: Renames) -> dict[str, Any]:
    """``state`` with every key's first matching old substring replaced by its new one."""
    out = {}
    for key, value in state.items():
        for old, new in renames:
            if old in key:
                key = key.replace(old, new, 1)
                break
        out[key] = value
    return out
