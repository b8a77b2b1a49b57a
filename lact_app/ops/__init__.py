"""Functional fast-weight core of LaCT (DESIGN.md §3)."""

from .newton_schulz import LM_NS_COEFFS, classic_ns_coeffs, newton_schulz
from .reference import naive_lact_swiglu
from .schedule import Op, bidirectional_schedule, causal_schedule, packed_causal_schedule, validate_schedule
from .state import FastWeights
from .swiglu import apply_fast_weights, fast_weight_grads, lact_swiglu, update_fast_weights

__all__ = [
    "FastWeights",
    "LM_NS_COEFFS",
    "Op",
    "apply_fast_weights",
    "bidirectional_schedule",
    "causal_schedule",
    "classic_ns_coeffs",
    "fast_weight_grads",
    "lact_swiglu",
    "naive_lact_swiglu",
    "newton_schulz",
    "packed_causal_schedule",
    "update_fast_weights",
    "validate_schedule",
]
