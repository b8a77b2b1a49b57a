"""Autoregressive video diffusion with LaCT memory (LACT_SPEC.md §4), as a plain nn.Module.

Frames go through a :class:`~lact_app.models.codec.FrameCodec` (pixels by default), are cut into
p×p patch tokens, and grouped into chunks of ``chunk_frames`` frames. Training sees the teacher-forced
interleaved sequence ``N0 | C0 N1 | C1 N2 | …`` (noisy chunk i, its clean twin), each noisy chunk with
its own flow-matching timestep and clean chunks at t = 0; the loss is taken on noisy chunks only.
Sampling (:mod:`lact_app.models.video_sampling`) runs the same blocks chunk by chunk with caches.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from ..nn import NOISY, BackboneConfig, FastWeightConfig, MixerCache, check_memory, grid_positions
from ..nn.layout import Segment, interleaved_layout
from ..nn.video_block import VideoBlock, group_segment_params, group_tokens, modulate
from .codec import FrameCodec, PixelCodec
from .flow_matching import (
    add_noise,
    logit_normal_weight,
    sample_timesteps,
    velocity_target,
)
from .video_sampling import VideoSampler

CONDITIONS = ("none", "class", "embedding")

#: The video reference's LaCT layer (LACT_SPEC.md §4.3): hidden 2·D, base lr 1e-3, no momentum,
#: no Muon, normal init — :class:`~lact_app.nn.FastWeightConfig`'s defaults; the reference model
#: (d = 1536) has 2 heads.
VIDEO_FAST_WEIGHT = FastWeightConfig()

#: The video trunk at this project's CPU scale (the reference: Wan 1.3B, d = 1536, 30 blocks, 12
#: heads, FFN 8960): :class:`~lact_app.nn.BackboneConfig`'s defaults.
VIDEO_BACKBONE = BackboneConfig()

#: Timesteps t in [0, 1] enter the embedding as 1000·t (the reference's scale).
TIME_SCALE = 1000.0


def timestep_features(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal features of 1000·t (DiT/Wan).  t: [...] -> [..., dim] fp32."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = (t.float() * TIME_SCALE)[..., None] * freqs
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class TimestepEmbedding(nn.Module):
    """t -> sinusoidal features -> Linear -> SiLU -> Linear.

    Args:
        dim: output width.
        freq_dim: width of the sinusoidal features.
    """

    def __init__(self, dim: int, freq_dim: int = 256):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        """t: [...] in [0, 1] -> [..., dim]."""
        return self.mlp(timestep_features(t, self.freq_dim).to(self.mlp[0].weight.dtype))


class ConditionEmbedding(nn.Module):
    """Optional conditioning: a class label or a precomputed (e.g. text) embedding, with a learned null.

    The null condition (used for classifier-free guidance, and for samples whose condition was
    dropped in training) is the extra class ``num_classes`` or a learned vector.

    Args:
        dim: output width.
        kind: ``"class"`` or ``"embedding"``.
        num_classes: classes of ``"class"`` conditioning.
        cond_dim: width of ``"embedding"`` conditions.
    """

    def __init__(self, dim: int, kind: str, num_classes: int = 0, cond_dim: int = 0):
        super().__init__()
        if kind == "class" and num_classes < 1 or kind == "embedding" and cond_dim < 1:
            raise ValueError(f"cond={kind!r} needs num_classes >= 1 (class) or cond_dim >= 1 (embedding)")
        self.kind, self.num_classes = kind, num_classes
        if kind == "class":
            self.table = nn.Embedding(num_classes + 1, dim)
        else:
            self.proj = nn.Linear(cond_dim, dim)
            self.null = nn.Parameter(torch.zeros(dim))

    def forward(self, cond: torch.Tensor | None, drop: torch.Tensor | None, batch_size: int) -> torch.Tensor:
        """cond: [B] int labels / [B, cond_dim] embeddings, or None (all null); drop: [B] bool -> [B, dim]."""
        if self.kind == "class":
            labels = torch.full((batch_size,), self.num_classes, device=self.table.weight.device) if cond is None \
                else cond.long()
            if drop is not None:
                labels = torch.where(drop, torch.full_like(labels, self.num_classes), labels)
            return self.table(labels)
        null = self.null.expand(batch_size, -1)
        if cond is None:
            return null
        emb = self.proj(cond.to(self.proj.weight.dtype))
        return emb if drop is None else torch.where(drop[:, None], null, emb)


class FinalLayer(nn.Module):
    """adaLN-modulated LayerNorm then a zero-initialised Linear to patch values (DiT).

    Args:
        dim: model width.
        out_dim: values per token, C·p·p.
    """

    def __init__(self, dim: int, out_dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.modulation = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, out_dim)
        for layer in (self.modulation, self.proj):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x: torch.Tensor, emb: torch.Tensor, segments: list[Segment]) -> torch.Tensor:
        """x: [B, L, d]; emb: [B, S, d] -> [B, L, out_dim]."""
        shift, scale = group_segment_params(self.modulation(F.silu(emb)), segments).chunk(2, dim=-1)
        return self.proj(modulate(self.norm(group_tokens(x, segments)), shift, scale)).flatten(1, 2)


class VideoDiffusionModel(VideoSampler, nn.Module):
    """Chunk-autoregressive flow-matching video model with LaCT (or full-attention) memory.

    Args:
        backbone: width, blocks, attention heads, MLP ratio, 3-D RoPE base (default :data:`VIDEO_BACKBONE`).
        patch_size: p, tokens are p×p patches of each (latent) frame.
        chunk_frames: k, (latent) frames per autoregressive chunk.
        memory: ``"lact"`` (fast weights + chunk-local attention), ``"full_attention"`` (causal
            attention over all previous chunks, a growing KV cache) or ``"none"`` (chunk-local only).
        fast_weight: the LaCT layers' knobs (default :data:`VIDEO_FAST_WEIGHT`).
        clean_context: keys of the preceding clean chunk a noisy chunk attends to; None: the whole
            chunk (the reference's window = chunk tokens).
        codec: frame codec; None: pixels in [−1, 1].
        cond: ``"none"`` (unconditional), ``"class"`` or ``"embedding"``.
        num_classes: classes for ``cond="class"``.
        cond_dim: embedding width for ``cond="embedding"``.
        cond_dropout: training probability of replacing the condition by the null one (for CFG).
        shift: timestep shift of training (LACT_SPEC.md §4.5).
        sample_shift: timestep shift of sampling; None: ``shift``.
        logit_normal_weighting: weight the loss by the logit-normal density of the unshifted draw.
    """

    def __init__(
        self,
        *,
        backbone: BackboneConfig = VIDEO_BACKBONE,
        patch_size: int = 4,
        chunk_frames: int = 4,
        memory: str = "lact",
        fast_weight: FastWeightConfig = VIDEO_FAST_WEIGHT,
        clean_context: int | None = None,
        codec: FrameCodec | None = None,
        cond: str = "none",
        num_classes: int = 0,
        cond_dim: int = 0,
        cond_dropout: float = 0.1,
        shift: float = 2.0,
        sample_shift: float | None = None,
        logit_normal_weighting: bool = True,
    ):
        super().__init__()
        check_memory(memory)
        if cond not in CONDITIONS:
            raise ValueError(f"cond must be one of {CONDITIONS}, got {cond!r}")
        self.codec = codec if codec is not None else PixelCodec()
        self.patch_size, self.chunk_frames, self.cond_dropout = patch_size, chunk_frames, cond_dropout
        self.shift, self.sample_shift = shift, shift if sample_shift is None else sample_shift
        self.logit_normal_weighting = logit_normal_weighting
        patch_dim, dim = self.codec.channels * patch_size**2, backbone.dim
        self.patch_embed = nn.Linear(patch_dim, dim)
        self.time_embed = TimestepEmbedding(dim)
        self.cond_embed = None
        if cond != "none":
            self.cond_embed = ConditionEmbedding(dim, cond, num_classes=num_classes, cond_dim=cond_dim)
        self.blocks = nn.ModuleList(
            VideoBlock(backbone, memory=memory, fast_weight=fast_weight, clean_context=clean_context)
            for _ in range(backbone.depth)
        )
        self.final = FinalLayer(dim, patch_dim)

    # -- tokens -----------------------------------------------------------------------------------

    def chunk_tokens(self, latents: torch.Tensor) -> torch.Tensor:
        """[B, F, C, h, w] -> [B, n, k·(h/p)·(w/p), C·p·p], frame-major then row-major within a chunk."""
        self.check_latents(latents)
        p = self.patch_size
        return rearrange(latents, "b (n k) c (y p) (x q) -> b n (k y x) (c p q)", k=self.chunk_frames, p=p, q=p)

    def check_latents(self, latents: torch.Tensor) -> None:
        """Fails clearly unless latents [B, F, C, h, w] split into whole chunks of whole patches."""
        frames, (h, w) = latents.size(1), latents.shape[-2:]
        if frames % self.chunk_frames or h % self.patch_size or w % self.patch_size:
            raise ValueError(
                f"latent video {tuple(latents.shape)} must have a multiple of chunk_frames={self.chunk_frames} "
                f"frames and sides divisible by patch_size={self.patch_size}"
            )

    def unchunk_tokens(self, tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """[B, n, Lc, C·p·p] -> [B, n·k, C, h, w] (inverse of :meth:`chunk_tokens`)."""
        p = self.patch_size
        return rearrange(tokens, "b n (k y x) (c p q) -> b (n k) c (y p) (x q)",
                         k=self.chunk_frames, y=height // p, x=width // p, p=p, q=p)

    def chunk_positions(self, chunk_index: int, height: int, width: int, device=None) -> torch.Tensor:
        """(t, h, w) RoPE positions of chunk ``chunk_index``: true frame indices.  -> [Lc, 3]."""
        k, p = self.chunk_frames, self.patch_size
        return grid_positions(k, height // p, width // p, t_start=chunk_index * k, device=device)

    def interleaved_positions(self, num_chunks: int, height: int, width: int, device=None) -> torch.Tensor:
        """Positions of ``N0 | C0 N1 | … | N_{n−1}``: N_i and C_i share chunk i's.  -> [(2n − 1)·Lc, 3]."""
        return torch.cat([self.chunk_positions(i, height, width, device)
                          for i in range(num_chunks) for _ in range(2 if i < num_chunks - 1 else 1)])

    # -- embeddings -------------------------------------------------------------------------------

    def embedding(
        self, t: torch.Tensor, cond: torch.Tensor | None = None, drop: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Per-segment conditioning: timestep (+ condition).  t: [B, S] -> [B, S, d]."""
        emb = self.time_embed(t)
        if self.cond_embed is not None:
            emb = emb + self.cond_embed(cond, drop, t.size(0))[:, None]
        return emb

    def run_blocks(
        self,
        x: torch.Tensor,
        emb: torch.Tensor,
        segments: list[Segment],
        positions: torch.Tensor,
        caches: list[MixerCache] | None = None,
    ) -> tuple[torch.Tensor, list[MixerCache] | None]:
        """All blocks over one sequence piece (``caches``: one per block while sampling, else None)."""
        new_caches = []
        for i, block in enumerate(self.blocks):
            x, cache = block(x, emb, segments, positions, None if caches is None else caches[i])
            new_caches.append(cache)
        return x, None if caches is None else new_caches

    # -- training ---------------------------------------------------------------------------------

    def forward(
        self,
        noisy: torch.Tensor,
        clean: torch.Tensor,
        t: torch.Tensor,
        cond: torch.Tensor | None = None,
        drop: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Teacher-forced velocity of every noisy chunk over the layout ``N0 | C0 N1 | … | C_{n−2} N_{n−1}``.

        Args:
            noisy: [B, F, C, h, w] latents x_t (each chunk noised at its own t).
            clean: [B, F, C, h, w] clean latents x0.
            t: [B, n] timesteps of the noisy chunks, n = F / chunk_frames.
            cond: condition (see :class:`ConditionEmbedding`) or None.
            drop: [B] bool, use the null condition for these samples.

        Returns:
            v̂: [B, F, C, h, w], the predicted velocity ε − x0.
        """
        h, w = noisy.shape[-2:]
        noisy_tok, clean_tok = self.chunk_tokens(noisy), self.chunk_tokens(clean)
        B, n, Lc, _ = noisy_tok.shape
        segments = interleaved_layout(n, Lc)
        tokens = self.patch_embed(interleave(noisy_tok, clean_tok))
        seg_t = interleave(t[..., None], torch.zeros_like(t[..., None]))[..., 0]  # clean twins at t = 0
        positions = self.interleaved_positions(n, h, w, noisy.device)
        emb = self.embedding(seg_t, cond, drop)
        x, _ = self.run_blocks(tokens.flatten(1, 2), emb, segments, positions)
        noisy_x = x.view(B, 2 * n - 1, Lc, -1)[:, 0::2]  # N_i sits at segment 2i
        out = self.final(noisy_x.flatten(1, 2), emb[:, 0::2], [Segment(NOISY, Lc)] * n)
        return self.unchunk_tokens(out.view(B, n, Lc, -1), h, w)

    def flow_matching_loss(
        self,
        x0: torch.Tensor,
        t: torch.Tensor,
        noise: torch.Tensor,
        cond: torch.Tensor | None = None,
        weight: torch.Tensor | None = None,
        drop: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Mean over chunks of ``weight · mean((v̂ − (ε − x0))²)``.

        Args:
            x0: [B, F, C, h, w] clean latents.
            t: [B, n] per-chunk timesteps; noise: like x0.
            weight: [B, n] loss weights, or None.

        Returns:
            scalar fp32 loss.
        """
        k = self.chunk_frames
        v = self(add_noise(x0, noise, t.repeat_interleave(k, dim=1)), x0, t, cond, drop)
        err = (v.float() - velocity_target(x0, noise).float()).pow(2).mean(dim=(2, 3, 4))  # [B, F]
        err = err.view(err.size(0), -1, k).mean(-1)  # [B, n]
        return (err if weight is None else err * weight).mean()

    def training_loss(
        self, frames: torch.Tensor, cond: torch.Tensor | None = None, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """The training objective on RGB frames [B, F, 3, H, W] in [0, 1] (LACT_SPEC.md §4.5).

        Per chunk t from the shifted-uniform law, ε ~ N(0, I), optional logit-normal weights, and the
        condition dropped with probability ``cond_dropout``.
        """
        x0 = self.codec.encode(frames)
        self.check_latents(x0)
        B, n = x0.size(0), x0.size(1) // self.chunk_frames
        t, u = sample_timesteps((B, n), self.shift, generator, x0.device)
        noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        weight = logit_normal_weight(u) if self.logit_normal_weighting else None
        drop = None
        if self.cond_embed is not None and self.cond_dropout > 0:
            drop = torch.rand(B, generator=generator, device=x0.device) < self.cond_dropout
        return self.flow_matching_loss(x0, t, noise, cond=cond, weight=weight, drop=drop)


def interleave(noisy: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
    """[B, n, ...] noisy and clean chunks -> [B, 2n − 1, ...] in the order N0, C0, N1, …, C_{n−2}, N_{n−1}."""
    pairs = torch.stack([noisy[:, :-1], clean[:, :-1]], dim=2).flatten(1, 2)
    return torch.cat([pairs, noisy[:, -1:]], dim=1)
