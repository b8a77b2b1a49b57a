"""The novel-view-synthesis block (LACT_SPEC.md §2.1): per-view attention → cross-view mixer → MLP.

Token layout: ``x: [B, V * l, dim]`` with the views' tokens one after the other, input views first
(``num_inputs`` tokens), then target views. Information crosses views only in the mixer, which
reads the input-view tokens and writes to every token:

- :class:`LaCTMixer`: one fast-weight update over the input tokens, then apply to all tokens (the
  op list of §1.9(c)); its state is the updated fast weights.
- :class:`CrossViewAttention`: softmax attention in which every token sees all input tokens and
  the tokens of its own view (LVSM-style, for ablations and the benchmark); its state is the input
  tokens' keys and values.

Either mixer can continue from its state (``reconstruct`` then ``render`` in :mod:`lact_app.models.nvs`):
target tokens never influence input tokens, so rendering targets in any grouping gives the same
images as the joint forward.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..ops import Op
from .attention import Attention
from .lact_layer import LaCTLayer
from .masks import merge_views, per_view
from .mlp import GELUMLP
from .norms import build_norm

#: Cross-view mixers selectable by name.
MIXERS = ("lact", "attention")


class LaCTMixer(nn.Module):
    """A single-head LaCT layer over all views (NVS reference settings, LACT_SPEC.md §2.1).

    Args:
        dim: model width (= the fast-weight head dim: one head).
        inter_multi: fast-weight hidden width multiplier (2 = "ttt2x", 4 = "ttt4x").
        base_lr: per-token lr at zero logit.
        muon_steps: Newton–Schulz steps of the classic Muon quintic (0: no Muon).
    """

    def __init__(self, dim: int, inter_multi: float = 2.0, base_lr: float = 0.01, muon_steps: int = 5):
        super().__init__()
        self.layer = LaCTLayer(
            dim, num_heads=1, inter_multi=inter_multi, base_lr=base_lr, use_muon=muon_steps > 0,
            ns_coeffs="classic", ns_steps=max(muon_steps, 1), detach_norms=True, w_init="nvs",
        )  # fmt: skip

    def forward(
        self, x: torch.Tensor, num_inputs: int, view_len: int, state: Any | None = None
    ) -> tuple[torch.Tensor, Any]:
        """x: [B, L, dim] -> ([B, L, dim], fast weights after the update on the input tokens).

        With ``state`` (from a call on the input views) every token of x is a target: apply only.
        """
        L = x.size(1)
        if state is not None:
            schedule = [Op(0, L, update=False, apply=True)]
        elif num_inputs == L:
            schedule = [Op(0, L, update=True, apply=True)]
        else:
            schedule = [Op(0, num_inputs, update=True, apply=False), Op(0, L, update=False, apply=True)]
        return self.layer(x, schedule, state)


class CrossViewAttention(Attention):
    """Attention across views: each token sees every input token and its own view's tokens.

    Args:
        dim: model width.
        num_heads: attention heads.
    """

    def __init__(self, dim: int, num_heads: int):
        super().__init__(dim, num_heads, qk_norm=True)

    def forward(
        self, x: torch.Tensor, num_inputs: int, view_len: int, state: Any | None = None
    ) -> tuple[torch.Tensor, Any]:
        """x: [B, L, dim] -> ([B, L, dim], (k, v) of the input tokens: [B, heads, N_in, Dh] each).

        With ``state`` every token of x is a target and the inputs' keys/values come from it.
        """
        q, k, v = self.project(x)
        if state is None:
            state = (k[:, :, :num_inputs], v[:, :, :num_inputs])
            inputs_out = F.scaled_dot_product_attention(q[:, :, :num_inputs], *state)
            q, k, v = q[:, :, num_inputs:], k[:, :, num_inputs:], v[:, :, num_inputs:]
        else:
            inputs_out = q[:, :, :0]
        targets_out = self._attend_targets(q, k, v, state, view_len) if q.size(2) else q
        return self.output(torch.cat([inputs_out, targets_out], dim=2)), state

    @staticmethod
    def _attend_targets(q, k, v, state, view_len: int) -> torch.Tensor:
        """Target queries [B, h, Nt, Dh] over the input keys and their own view's keys."""
        k_in, v_in = state
        n_in, n_t = k_in.size(2), q.size(2)
        view = torch.arange(n_t, device=q.device) // view_len
        mask = torch.cat([q.new_ones(n_t, n_in, dtype=torch.bool), view[:, None] == view[None, :]], dim=1)
        return F.scaled_dot_product_attention(q, torch.cat([k_in, k], 2), torch.cat([v_in, v], 2), attn_mask=mask)


def build_mixer(kind: str, dim: int, attn_heads: int, inter_multi: float, base_lr: float, muon_steps: int):
    """The cross-view mixer named ``kind`` (one of :data:`MIXERS`)."""
    if kind == "lact":
        return LaCTMixer(dim, inter_multi, base_lr, muon_steps)
    if kind == "attention":
        return CrossViewAttention(dim, attn_heads)
    raise ValueError(f"mixer must be one of {MIXERS}, got {kind!r}")


class NVSBlock(nn.Module):
    """Pre-LN block: x += attn(LN x) per view; x += mixer(LN x) across views; x += mlp(LN x).

    Args:
        dim: model width.
        attn_head_dim: head dim of the attention sub-layers (64 in the reference).
        mlp_ratio: hidden width of the GELU MLP as a multiple of ``dim``.
        mixer: cross-view mixer, ``"lact"`` or ``"attention"``.
        inter_multi: LaCT fast-weight hidden multiplier.
        base_lr: LaCT per-token lr at zero logit.
        muon_steps: LaCT Newton–Schulz steps (0: no Muon).
    """

    def __init__(
        self,
        dim: int,
        attn_head_dim: int = 64,
        mlp_ratio: float = 4.0,
        mixer: str = "lact",
        inter_multi: float = 2.0,
        base_lr: float = 0.01,
        muon_steps: int = 5,
    ):
        super().__init__()
        if dim % attn_head_dim:
            raise ValueError(f"dim {dim} is not divisible by attn_head_dim {attn_head_dim}")
        heads = dim // attn_head_dim
        self.attn_norm, self.mixer_norm, self.mlp_norm = (build_norm("layer", dim) for _ in range(3))
        self.attn = Attention(dim, heads, qk_norm=True)
        self.mixer = build_mixer(mixer, dim, heads, inter_multi, base_lr, muon_steps)
        self.mlp = GELUMLP(dim, int(mlp_ratio * dim), bias=False)

    def forward(
        self, x: torch.Tensor, num_views: int, num_inputs: int, state: Any | None = None
    ) -> tuple[torch.Tensor, Any]:
        """x: [B, V * l, dim] (``num_inputs`` input tokens first) -> ([B, V * l, dim], mixer state).

        Args:
            x: tokens of ``num_views`` views.
            num_views: V.
            num_inputs: input-view tokens at the front of x (0 when ``state`` is given).
            state: mixer state of the input views (render targets only), or None.
        """
        x = x + merge_views(self.attn(per_view(self.attn_norm(x), num_views)), num_views)
        mixed, state = self.mixer(self.mixer_norm(x), num_inputs, x.size(1) // num_views, state)
        x = x + mixed
        return x + self.mlp(self.mlp_norm(x)), state

    def output_projections(self) -> list[nn.Linear]:
        """The projections writing into the residual stream (re-initialised smaller, §2.1)."""
        mixer_out = self.mixer.layer.out_proj if isinstance(self.mixer, LaCTMixer) else self.mixer.out_proj
        return [self.attn.out_proj, mixer_out, self.mlp.fc2]
