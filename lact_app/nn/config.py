"""`FastWeightConfig` and `BackboneConfig`: the knobs of the LaCT layer and of the trunk, declared once.

Each task takes one as its argument ``fast_weight`` (``--model.init_args.fast_weight.chunk 512`` on
the command line); its model passes it to :class:`~lact_app.nn.LaCTLayer`, which owns what
surrounds the functional op. The defaults below are the video reference's layer; each task's
reference preset (``LM_FAST_WEIGHT``, ``NVS_FAST_WEIGHT``, ``VIDEO_FAST_WEIGHT`` in its model
module) changes only the fields where its reference differs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from collections.abc import Callable, Sequence
from typing import Any, Optional, Union

#: Initialisation schemes of the initial fast weights (LACT_SPEC.md §1.2).
W_INITS = ("normal", "nvs", "low_rank")

#: Newton–Schulz coefficient schedules: the reference LM 5-step schedule, or the classic Muon
#: quintic repeated ``ns_steps`` times (NVS / video reference).
NS_SCHEDULES = ("lm", "classic")

#: Dtypes the Newton–Schulz iteration of Muon can run in: fp32 (this project's default), or bf16
#: as the official LaCT code does (it casts inside its ``zeropower_via_newtonschulz5`` even in fp32
#: runs; the released checkpoints' outputs need it).
NS_DTYPES = ("float32", "bfloat16")

#: What carries information across chunks / views in every task's mixer: the LaCT fast weights,
#: softmax attention over everything earlier (the Transformer baseline), or nothing.
MEMORIES = ("lact", "full_attention", "none")


Check = tuple[str, bool, str]


def reject_unless(config: Any, group: str, checks: Sequence[Check]) -> None:
    """A ValueError for the first (field, ok, allowed) check that fails, naming ``group.field``.

    A function, not a base class: jsonargparse treats a dataclass with a non-dataclass base as a
    subclass type (``class_path`` / ``init_args`` in configs)."""
    for field, ok, allowed in checks:
        if not ok:
            raise ValueError(f"{group}.{field} must be {allowed}, got {getattr(config, field)!r}")


@dataclass(frozen=True, kw_only=True)
class FastWeightConfig:
    """The fast-weight layer's knobs (LACT_SPEC.md §1).

    Args:
        chunk: tokens per fast-weight update of a causal (LM) layer: apply-then-update chunks
            aligned at 0. NVS (one update on the input views) and video (one update per clean
            frame chunk) take their schedule from their data layout and need it None.
        heads: fast-weight heads n_h; the head dim is D = width / n_h.
        inter_multi: fast-weight hidden width H = int(inter_multi · D) (2: "ttt2x", 4: "ttt4x").
        base_lr: per-token inner learning rate at zero logit (softplus-parameterised), > 0.
        use_momentum: momentum on the inner updates (per-token σ(Linear(x)), chunk mean).
        use_muon: orthogonalise every inner update with Newton–Schulz.
        ns_coeffs: Newton–Schulz schedule: ``"lm"`` (the reference LM 5-step schedule) or
            ``"classic"`` (the Muon quintic repeated ``ns_steps`` times).
        ns_steps: steps of the classic schedule.
        ns_dtype: dtype the Newton–Schulz iteration runs in: ``"float32"`` (default, for training
            here) or ``"bfloat16"`` (what the official code does; reproduces the released models).
        w_init: initial fast weights: ``"normal"`` (N(0, 1/D) for w0, w2; N(0, 1/H) for w1),
            ``"nvs"`` (the same × √2) or ``"low_rank"`` (w0, w2 = L·R + 0.5·I, LM reference).
        low_rank: rank r of the low-rank w0/w2.
        init_gain: gain of the low-rank factors (L ~ N(0, (g/√r)²), R ~ N(0, (g/√D)²)).
        weight_norm: rescale each fast-weight row to its initial norm after every update.
        recompute: the op's memory-saving backward: keep only the fast-weight state at each update
            and recompute the chunks' intermediates in the backward (same values and gradients,
            a fraction of the activation memory, one more forward of the op).
    """

    chunk: Optional[int] = None
    heads: int = 1
    inter_multi: float = 2.0
    base_lr: float = 1e-3
    use_momentum: bool = False
    use_muon: bool = False
    ns_coeffs: str = "lm"
    ns_steps: int = 5
    ns_dtype: str = "float32"
    w_init: str = "normal"
    low_rank: int = 32
    init_gain: float = 0.5
    weight_norm: bool = True
    recompute: bool = True

    def __post_init__(self) -> None:
        reject_unless(self, "fast_weight", (
            ("chunk", self.chunk is None or self.chunk >= 1, ">= 1 (or null)"),
            ("heads", self.heads >= 1, ">= 1"),
            ("inter_multi", self.inter_multi > 0, "> 0"),
            ("base_lr", self.base_lr > 0, "> 0"),
            ("ns_coeffs", self.ns_coeffs in NS_SCHEDULES, f"one of {NS_SCHEDULES}"),
            ("ns_steps", self.ns_steps >= 1, ">= 1"),
            ("ns_dtype", self.ns_dtype in NS_DTYPES, f"one of {NS_DTYPES}"),
            ("w_init", self.w_init in W_INITS, f"one of {W_INITS}"),
            ("low_rank", self.low_rank >= 1, ">= 1"),
            ("init_gain", self.init_gain > 0, "> 0"),
        ))  # fmt: skip

    @classmethod
    def coerce(cls, value: Union["FastWeightConfig", dict[str, Any]]) -> "FastWeightConfig":
        """A config from itself or from a dict of its fields (checkpoint hyperparameters)."""
        return value if isinstance(value, cls) else cls(**value)

    def to_dict(self) -> dict[str, Any]:
        """Plain fields (what checkpoints store, so they load without this class's pickle)."""
        return asdict(self)


@dataclass(frozen=True, kw_only=True)
class BackboneConfig:
    """The transformer trunk around the mixers, declared once for all tasks.

    Each task takes one as its argument ``backbone`` (``--model.init_args.backbone.dim 128``); the
    defaults are the video model's, each task's preset (``LM_BACKBONE``, ``NVS_BACKBONE``,
    ``VIDEO_BACKBONE`` in its model module) changes only what its reference does differently.

    Args:
        dim: model width d.
        depth: number of blocks.
        heads: attention heads per block (head dim d / heads, which is also the RoPE width).
        mlp_ratio: MLP hidden width / d (rounded to an integer width); None: the task's reference
            rule (LM: 256·⌈⌊8d/3⌋ / 256⌉).
        rope_theta: RoPE base (LM: attention and fast q/k; video: the 3-D RoPE); null for NVS,
            which has no positional encoding (its tokens carry their rays).
    """

    dim: int = 256
    depth: int = 4
    heads: int = 4
    mlp_ratio: Optional[float] = 4.0
    rope_theta: Optional[float] = 1e4

    def __post_init__(self) -> None:
        reject_unless(self, "backbone", (
            ("dim", self.dim >= 1, ">= 1"),
            ("depth", self.depth >= 1, ">= 1"),
            ("heads", self.heads >= 1 and self.dim % self.heads == 0, f"a divisor of dim={self.dim}"),
            ("mlp_ratio", self.mlp_ratio is None or self.mlp_ratio > 0, "> 0 (or null)"),
            ("rope_theta", self.rope_theta is None or self.rope_theta > 0, "> 0 (or null)"),
        ))  # fmt: skip

    coerce = FastWeightConfig.__dict__["coerce"]  # a config from itself or from a dict of its fields
    to_dict = FastWeightConfig.to_dict

    @property
    def head_dim(self) -> int:
        return self.dim // self.heads

    def mlp_hidden(self, reference: Optional[Callable[[int], int]] = None) -> int:
        """The MLP hidden width: round(mlp_ratio · dim), or ``reference(dim)`` when mlp_ratio is None."""
        if self.mlp_ratio is not None:
            return round(self.mlp_ratio * self.dim)
        if reference is None:
            raise ValueError("backbone.mlp_ratio must be set for this model (it has no reference rule)")
        return reference(self.dim)

    def needs_rope(self, task: str) -> float:
        """``rope_theta``, or a ValueError for a task whose model uses RoPE when it is null."""
        if self.rope_theta is None:
            raise ValueError(f"backbone.rope_theta must be > 0 for {task}, got None")
        return self.rope_theta


def check_memory(memory: str) -> str:
    """``memory`` if it is one of :data:`MEMORIES`, else a ValueError naming the field."""
    if memory not in MEMORIES:
        raise ValueError(f"memory must be one of {MEMORIES}, got {memory!r}")
    return memory
