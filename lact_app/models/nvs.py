"""LVSM-style novel-view-synthesis model with a LaCT layer over all views (LACT_SPEC.md §2.1).

Each view becomes ``(H/p)·(W/p)`` tokens: per pixel 9 Plücker ray channels plus RGB in [−1, 1]
(input views) or zeros (target views), patchified p×p → Linear → LayerNorm. No positional
embedding: the rays carry position. Blocks mix within a view by attention and across views by the
LaCT layer (:mod:`lact_app.nn.nvs_block`); the decoder maps target tokens back to RGB.

Two ways to run it:

- ``model(input_images, input_intrinsics, input_c2w, target_intrinsics, target_c2w)``: one joint
  pass over input and target tokens (training).
- ``states = model.reconstruct(...)`` once, then ``model.render(states, ...)`` for any number of
  target views in chunks (inference, long camera paths): the same images with bounded memory.

Images are ``[B, V, 3, H, W]`` in [0, 1], intrinsics ``[B, V, 4]`` = (fx, fy, cx, cy) in pixels,
c2w ``[B, V, 4, 4]`` OpenCV camera-to-world.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from einops import rearrange
from torch import nn

from ..nn import BackboneConfig, FastWeightConfig, MixerCache
from ..nn.norms import build_norm
from ..nn.nvs_block import NVSBlock
from .cameras import plucker_rays

#: The reference NVS LaCT layer (LACT_SPEC.md §2.1, ``l24_d768_ttt2x``): one head over the whole
#: width, hidden 2·d, base lr 0.01, Muon with 5 classic Newton–Schulz steps, √2-scaled init.
NVS_FAST_WEIGHT = FastWeightConfig(base_lr=0.01, use_muon=True, ns_coeffs="classic", w_init="nvs")

#: The reference NVS trunk ``l24_d768``: 24 blocks of width 768, 64-dim attention heads, MLP 4·d,
#: no positional encoding.
NVS_BACKBONE = BackboneConfig(dim=768, depth=24, heads=12, rope_theta=None)

#: Ray channels per pixel (origin, direction, moment) and image channels.
RAY_CHANNELS, RGB_CHANNELS = 9, 3


def patchify(x: torch.Tensor, patch: int) -> torch.Tensor:
    """[B, V, C, H, W] -> [B, V * (H/p) * (W/p), p * p * C] (feature order: row, column, channel)."""
    return rearrange(x, "b v c (h p) (w q) -> b (v h w) (p q c)", p=patch, q=patch)


def unpatchify(x: torch.Tensor, num_views: int, height: int, width: int, patch: int) -> torch.Tensor:
    """[B, V * (H/p) * (W/p), p * p * C] -> [B, V, C, H, W], the inverse of :func:`patchify`."""
    return rearrange(x, "b (v h w) (p q c) -> b v c (h p) (w q)", v=num_views, h=height // patch,
                     w=width // patch, p=patch, q=patch)  # fmt: skip


class NVSModel(nn.Module):
    """Decoder-only NVS transformer with LaCT (or full attention) across views.

    Args:
        patch_size: p; image height and width must be multiples of it.
        backbone: width, blocks, attention heads, MLP ratio (default :data:`NVS_BACKBONE`;
            ``rope_theta`` must be null).
        memory: cross-view mixer: ``"lact"`` (the paper), ``"full_attention"`` (attention over
            all input views, LVSM-style; quadratic in the number of views) or ``"none"`` (no
            mixing across views: a camera-only baseline).
        fast_weight: the LaCT layers' knobs (default: the reference's, :data:`NVS_FAST_WEIGHT`;
            ``inter_multi`` 2 = "ttt2x", 4 = "ttt4x").
        qk_norm_eps: eps of the attention's q/k RMSNorms (None: the dtype's machine epsilon, as in
            the official code and its released checkpoints).
    """

    def __init__(
        self,
        *,
        patch_size: int = 8,
        backbone: BackboneConfig = NVS_BACKBONE,
        memory: str = "lact",
        fast_weight: FastWeightConfig = NVS_FAST_WEIGHT,
        qk_norm_eps: Optional[float] = 1e-6,
    ):
        super().__init__()
        if backbone.rope_theta is not None:
            raise ValueError(f"backbone.rope_theta must be null for NVS (no positional encoding), got {backbone.rope_theta}")
        self.patch_size, dim = patch_size, backbone.dim
        channels = (RAY_CHANNELS + RGB_CHANNELS) * patch_size**2
        self.tokenizer = nn.Sequential(nn.Linear(channels, dim, bias=False), build_norm("layer", dim))
        self.blocks = nn.ModuleList(
            NVSBlock(backbone, memory=memory, fast_weight=fast_weight, qk_norm_eps=qk_norm_eps)
            for _ in range(backbone.depth)
        )
        self.decoder = nn.Sequential(
            build_norm("layer", dim), nn.Linear(dim, RGB_CHANNELS * patch_size**2, bias=False), nn.Sigmoid()
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Linear layers N(0, 0.02) with zero bias; projections into the residual stream
        N(0, 0.02 / √(3·depth)) (LACT_SPEC.md §2.1). Fast weights keep their own init."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        residual_std = 0.02 / math.sqrt(3 * len(self.blocks))
        for block in self.blocks:
            for proj in block.output_projections():
                nn.init.normal_(proj.weight, std=residual_std)

    def tokenize(self, images: torch.Tensor | None, intrinsics: torch.Tensor, c2w: torch.Tensor,
                 size: tuple[int, int]) -> torch.Tensor:
        """Views -> tokens.

        Args:
            images: [B, V, 3, H, W] in [0, 1], or None for target views (zero image channels).
            intrinsics: [B, V, 4]; c2w: [B, V, 4, 4].
            size: (H, W).

        Returns:
            [B, V * (H/p) * (W/p), dim].
        """
        height, width = size
        if height % self.patch_size or width % self.patch_size:
            raise ValueError(f"image size {size} is not a multiple of the patch size {self.patch_size}")
        rays = plucker_rays(intrinsics, c2w, height, width)
        rgb = torch.zeros_like(rays[:, :, :RGB_CHANNELS]) if images is None else images.to(rays) * 2 - 1
        x = patchify(torch.cat([rays, rgb], dim=2), self.patch_size)
        return self.tokenizer(x.to(self.tokenizer[0].weight.dtype))

    def decode(self, x: torch.Tensor, num_views: int, size: tuple[int, int]) -> torch.Tensor:
        """Target tokens [B, V * l, dim] -> images [B, V, 3, H, W] in [0, 1]."""
        return unpatchify(self.decoder(x), num_views, *size, self.patch_size)

    def forward(
        self,
        input_images: torch.Tensor,
        input_intrinsics: torch.Tensor,
        input_c2w: torch.Tensor,
        target_intrinsics: torch.Tensor,
        target_c2w: torch.Tensor,
    ) -> torch.Tensor:
        """Renders the target views from the input views in one joint pass.

        Args:
            input_images: [B, V_in, 3, H, W] in [0, 1].
            input_intrinsics: [B, V_in, 4]; input_c2w: [B, V_in, 4, 4].
            target_intrinsics: [B, V_t, 4]; target_c2w: [B, V_t, 4, 4].

        Returns:
            [B, V_t, 3, H, W] in [0, 1].
        """
        size = tuple(input_images.shape[-2:])
        x_in = self.tokenize(input_images, input_intrinsics, input_c2w, size)
        x_t = self.tokenize(None, target_intrinsics, target_c2w, size)
        x = torch.cat([x_in, x_t], dim=1)
        num_views, num_inputs = input_c2w.size(1) + target_c2w.size(1), x_in.size(1)
        for block in self.blocks:
            x, _ = block(x, num_views, num_inputs)
        return self.decode(x[:, num_inputs:], target_c2w.size(1), size)

    def reconstruct(self, input_images: torch.Tensor, input_intrinsics: torch.Tensor,
                    input_c2w: torch.Tensor) -> list[MixerCache]:
        """Runs the input views through every block and keeps each block's mixer state.

        Args:
            input_images: [B, V_in, 3, H, W] in [0, 1].
            input_intrinsics: [B, V_in, 4]; input_c2w: [B, V_in, 4, 4].

        Returns:
            one cache per block (LaCT: the updated fast weights; attention: the inputs' keys and
            values), to pass to :meth:`render`.
        """
        size = tuple(input_images.shape[-2:])
        x = self.tokenize(input_images, input_intrinsics, input_c2w, size)
        states = []
        for block in self.blocks:
            x, state = block(x, input_c2w.size(1), x.size(1))
            states.append(state)
        return states

    def render(
        self,
        states: list[MixerCache],
        target_intrinsics: torch.Tensor,
        target_c2w: torch.Tensor,
        size: tuple[int, int],
        chunk_views: int | None = None,
    ) -> torch.Tensor:
        """Renders target views from :meth:`reconstruct`'s states, ``chunk_views`` views at a time.

        Args:
            states: the per-block states of :meth:`reconstruct`.
            target_intrinsics: [B, V_t, 4]; target_c2w: [B, V_t, 4, 4].
            size: (H, W) of the rendered images.
            chunk_views: target views per pass (None: all at once); memory grows with it, the
                images do not change.

        Returns:
            [B, V_t, 3, H, W] in [0, 1].
        """
        num_targets = target_c2w.size(1)
        step = chunk_views or num_targets
        chunks = [self._render_chunk(states, target_intrinsics[:, s:s + step], target_c2w[:, s:s + step], size)
                  for s in range(0, num_targets, step)]  # fmt: skip
        return torch.cat(chunks, dim=1)

    def _render_chunk(self, states: list[MixerCache], intrinsics: torch.Tensor, c2w: torch.Tensor,
                      size: tuple[int, int]) -> torch.Tensor:
        x = self.tokenize(None, intrinsics, c2w, size)
        for block, state in zip(self.blocks, states):
            x, _ = block(x, c2w.size(1), 0, cache=state)
        return self.decode(x, c2w.size(1), size)
