"""Frame codecs: where the video diffusion model runs (pixels by default, or a latent space).

A codec maps RGB frames ``[B, F, 3, H, W]`` in [0, 1] to the representation the model diffuses,
``[B, F', C, h, w]``, and back. The model only reads ``channels``, ``temporal_stride`` and
``spatial_stride``, so a pretrained latent autoencoder (e.g. a frozen VAE with stride 4×8×8) plugs in
by subclassing :class:`FrameCodec` and naming it in the config (``codec: {class_path: ...}``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import nn


class FrameCodec(nn.Module, ABC):
    """Interface of a frame codec (subclass it; parameters of a pretrained codec should be frozen)."""

    channels: int = 3
    temporal_stride: int = 1
    spatial_stride: int = 1

    @abstractmethod
    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        """frames: [B, F, 3, H, W] in [0, 1] -> latents [B, F / temporal_stride, C, H / s, W / s]."""

    @abstractmethod
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """latents: [B, F', C, h, w] -> frames [B, F' * temporal_stride, 3, h * s, w * s] in [0, 1]."""


class PixelCodec(FrameCodec):
    """Pixel space: the identity up to the affine map [0, 1] -> [−1, 1] (the reference's ``2·rgb − 1``)."""

    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        return frames * 2 - 1

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return ((latents + 1) / 2).clamp(0, 1)
