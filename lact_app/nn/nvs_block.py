"""The novel-view-synthesis block (LACT_SPEC.md §2.1): per-view attention → cross-view mixer → MLP.

Token layout: ``x: [B, V * l, dim]`` with the views' tokens one after the other, input views first
(``num_inputs`` tokens), then target views. Information crosses views only in the mixer, which
reads the input-view tokens and writes to every token:

- ``memory="lact"``, :class:`CrossViewLaCT`: one fast-weight update over the input tokens, then
  apply to all tokens (the op list of §1.9(c)); its cache holds the updated fast weights.
- ``memory="full_attention"``, :class:`CrossViewAttention`: softmax attention in which every
  token sees all input tokens and the tokens of its own view (LVSM-style, for ablations and the
  benchmark); its cache holds the input tokens' keys and values.
- ``memory="none"``: no mixing across views — targets see only their own rays (a camera-only
  baseline that shows how much the inputs are used).

Either mixer can continue from its cache (``reconstruct`` then ``render`` in
:mod:`lact_app.models.nvs`): target tokens never influence input tokens, so rendering targets in
any grouping gives the same images as the joint forward.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from ..ops import Op
from .attention import Attention, attend
from .cache import MixerCache
from .config import BackboneConfig, FastWeightConfig, check_memory
from .lact_layer import LaCTLayer
from .masks import merge_views, per_view
from .mlp import GELUMLP
from .norms import build_norm


def nvs_schedule(length: int, num_inputs: int, rendering: bool) -> list[Op]:
    """Ops over ``length`` tokens whose first ``num_inputs`` are input-view tokens (LACT_SPEC.md
    §1.9(c)): update on the inputs, then apply to every token; apply only when ``rendering``
    targets from a cached state."""
    if rendering:
        return [Op(0, length, update=False, apply=True)]
    if num_inputs == length:
        return [Op(0, length, update=True, apply=True)]
    return [Op(0, num_inputs, update=True, apply=False), Op(0, length, update=False, apply=True)]


class CrossViewLaCT(nn.Module):
    """A LaCT layer over all views with its own projections (NVS reference, LACT_SPEC.md §2.1).

    Args:
        dim: model width (= heads · fast-weight head dim; the reference has one head).
        fast_weight: the fast-weight knobs (``chunk`` must be None: the input views are one chunk).
    """

    def __init__(self, dim: int, fast_weight: FastWeightConfig):
        super().__init__()
        if fast_weight.chunk is not None:
            raise ValueError("fast_weight.chunk must be null for NVS: the input views are one update chunk")
        self.layer = LaCTLayer(dim, fast_weight, detach_norms=True)

    def forward(
        self, x: torch.Tensor, num_inputs: int, view_len: int, cache: Optional[MixerCache] = None
    ) -> tuple[torch.Tensor, MixerCache]:
        """x: [B, L, dim] -> ([B, L, dim], the fast weights after the update on the input tokens).

        With ``cache`` (from a call on the input views) every token of x is a target: apply only.
        """
        schedule = nvs_schedule(x.size(1), num_inputs, rendering=cache is not None)
        y, fast = self.layer(x, schedule, state=None if cache is None else cache.fast)
        return y, MixerCache(fast=fast)

    def output_projection(self) -> nn.Linear:
        return self.layer.out_proj


class CrossViewAttention(Attention):
    """Attention across views: each token sees every input token and its own view's tokens.

    Args:
        dim: model width.
        num_heads: attention heads.
    """

    def __init__(self, dim: int, num_heads: int):
        super().__init__(dim, num_heads, qk_norm=True)

    def forward(
        self, x: torch.Tensor, num_inputs: int, view_len: int, cache: Optional[MixerCache] = None
    ) -> tuple[torch.Tensor, MixerCache]:
        """x: [B, L, dim] -> ([B, L, dim], the input tokens' keys/values [B, heads, N_in, Dh]).

        With ``cache`` every token of x is a target and the inputs' keys/values come from it.
        """
        q, k, v = self.project(x)
        if cache is None:
            cache = MixerCache(keys=k[:, :, :num_inputs], values=v[:, :, :num_inputs])
            inputs_out = attend(q[:, :, :num_inputs], cache.keys, cache.values)
            q, k, v = q[:, :, num_inputs:], k[:, :, num_inputs:], v[:, :, num_inputs:]
        else:
            inputs_out = q[:, :, :0]
        targets_out = self._attend_targets(q, k, v, cache, view_len) if q.size(2) else q
        return self.output(torch.cat([inputs_out, targets_out], dim=2)), cache

    @staticmethod
    def _attend_targets(q, k, v, cache: MixerCache, view_len: int) -> torch.Tensor:
        """Target queries [B, h, Nt, Dh] over the input keys and their own view's keys."""
        n_in, n_t = cache.keys.size(2), q.size(2)
        view = torch.arange(n_t, device=q.device) // view_len
        mask = torch.cat([q.new_ones(n_t, n_in, dtype=torch.bool), view[:, None] == view[None, :]], dim=1)
        return attend(q, torch.cat([cache.keys, k], 2), torch.cat([cache.values, v], 2), mask)

    def output_projection(self) -> nn.Linear:
        return self.out_proj


def build_mixer(memory: str, dim: int, attn_heads: int, fast_weight: FastWeightConfig) -> Optional[nn.Module]:
    """The cross-view mixer of ``memory`` (None for ``"none"``)."""
    if check_memory(memory) == "lact":
        return CrossViewLaCT(dim, fast_weight)
    return CrossViewAttention(dim, attn_heads) if memory == "full_attention" else None


class NVSBlock(nn.Module):
    """Pre-LN block: x += attn(LN x) per view; x += mixer(LN x) across views; x += mlp(LN x).

    Args:
        backbone: width, attention heads (64-dim heads in the reference) and the GELU MLP's ratio.
        memory: cross-view mixer, ``"lact"``, ``"full_attention"`` or ``"none"``.
        fast_weight: the LaCT layer's knobs.
        qk_norm_eps: eps of the per-view attention's q/k RMSNorms (None: the dtype's machine
            epsilon, the official code's).
    """

    def __init__(
        self,
        backbone: BackboneConfig,
        *,
        memory: str,
        fast_weight: FastWeightConfig,
        qk_norm_eps: Optional[float] = 1e-6,
    ):
        super().__init__()
        dim, heads = backbone.dim, backbone.heads
        self.attn_norm, self.mixer_norm, self.mlp_norm = (build_norm("layer", dim) for _ in range(3))
        self.attn = Attention(dim, heads, qk_norm=True, norm_eps=qk_norm_eps)
        self.mixer = build_mixer(memory, dim, heads, fast_weight)
        self.mlp = GELUMLP(dim, backbone.mlp_hidden(), bias=False)

    def forward(
        self, x: torch.Tensor, num_views: int, num_inputs: int, cache: Optional[MixerCache] = None
    ) -> tuple[torch.Tensor, MixerCache]:
        """x: [B, V * l, dim] (``num_inputs`` input tokens first) -> ([B, V * l, dim], mixer cache).

        Args:
            x: tokens of ``num_views`` views.
            num_views: V.
            num_inputs: input-view tokens at the front of x (0 when ``cache`` is given).
            cache: the mixer's cache of the input views (render targets only), or None.
        """
        x = x + merge_views(self.attn(per_view(self.attn_norm(x), num_views)), num_views)
        if self.mixer is not None:
            mixed, cache = self.mixer(self.mixer_norm(x), num_inputs, x.size(1) // num_views, cache)
            x = x + mixed
        return x + self.mlp(self.mlp_norm(x)), cache or MixerCache()

    def output_projections(self) -> list[nn.Linear]:
        """The projections writing into the residual stream (re-initialised smaller, §2.1)."""
        mixer = [] if self.mixer is None else [self.mixer.output_projection()]
        return [self.attn.out_proj, *mixer, self.mlp.fc2]
