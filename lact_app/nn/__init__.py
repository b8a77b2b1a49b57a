"""Modules built on the fast-weight core: the LaCT layer and branch, attention, RoPE, MLPs, norms."""

from .attention import Attention, attend, chunk_local_attention
from .fast_inputs import FastWeightInputs
from .fast_weight import FastWeightBranch, fold_heads, merge_heads, resolve_ns_coeffs, split_heads
from .lact_layer import LaCTLayer
from .layout import CLEAN, NOISY, Segment, interleaved_layout, interleaved_schedule, segment_bounds
from .masks import (
    block_diagonal_mask,
    causal_window_mask,
    chunk_local_mask,
    full_mask,
    merge_views,
    per_view,
    segment_keys,
)
from .mlp import GELUMLP, SwiGLUMLP
from .norms import HeadRMSNorm, build_norm
from .projections import LRProjection, MomentumProjection, OutputGate
from .qk import inverse_softplus, l2_normalize, lr_from_logits
from .rotary import Rotary3DEmbedding, RotaryEmbedding, grid_positions, rotate

__all__ = [
    "CLEAN",
    "NOISY",
    "Attention",
    "FastWeightBranch",
    "FastWeightInputs",
    "GELUMLP",
    "HeadRMSNorm",
    "LRProjection",
    "LaCTLayer",
    "MomentumProjection",
    "OutputGate",
    "Rotary3DEmbedding",
    "RotaryEmbedding",
    "Segment",
    "SwiGLUMLP",
    "attend",
    "block_diagonal_mask",
    "build_norm",
    "causal_window_mask",
    "chunk_local_attention",
    "chunk_local_mask",
    "fold_heads",
    "full_mask",
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
    "segment_bounds",
    "segment_keys",
    "split_heads",
]
