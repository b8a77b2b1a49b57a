"""Modules built on the fast-weight core: the LaCT layer and its config, attention, RoPE, MLPs, norms."""

from .attention import Attention, QueryBlock, attend
from .cache import MixerCache
from .config import MEMORIES, BackboneConfig, FastWeightConfig, check_memory
from .fast_inputs import FastInputs, FastWeightInputs
from .fast_weight import FastWeightBranch, fold_heads, merge_heads, resolve_ns_coeffs, split_heads
from .lact_layer import LaCTLayer
from .layout import CLEAN, NOISY, Segment, interleaved_layout, interleaved_schedule, segment_bounds
from .masks import causal_window_blocks, causal_window_mask, merge_views, per_view, segment_blocks, segment_keys
from .mlp import GELUMLP, SwiGLUMLP
from .norms import HeadRMSNorm, build_norm
from .projections import LRProjection, MomentumProjection, OutputGate
from .qk import inverse_softplus, l2_normalize, lr_from_logits
from .rotary import Rotary3DEmbedding, RotaryEmbedding, grid_positions, rotate

__all__ = [
    "CLEAN",
    "MEMORIES",
    "NOISY",
    "Attention",
    "BackboneConfig",
    "FastInputs",
    "FastWeightBranch",
    "FastWeightConfig",
    "FastWeightInputs",
    "GELUMLP",
    "HeadRMSNorm",
    "LRProjection",
    "LaCTLayer",
    "MixerCache",
    "MomentumProjection",
    "OutputGate",
    "QueryBlock",
    "Rotary3DEmbedding",
    "RotaryEmbedding",
    "Segment",
    "SwiGLUMLP",
    "attend",
    "build_norm",
    "causal_window_blocks",
    "causal_window_mask",
    "check_memory",
    "fold_heads",
    "grid_positions",
    "interleaved_layout",
    "interleaved_schedule",
    "inverse_softplus",
    "l2_normalize",
    "lr_from_logits",
    "merge_heads",
    "merge_views",
    "per_view",
    "resolve_ns_coeffs",
    "rotate",
    "segment_blocks",
    "segment_bounds",
    "segment_keys",
    "split_heads",
]
