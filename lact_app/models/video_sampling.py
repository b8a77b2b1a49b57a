"""Chunk-by-chunk sampling of the video diffusion model (LACT_SPEC.md §4.7).

Each chunk starts from noise and is denoised with an Euler solver of the flow ODE on a shifted time
grid; only the noisy chunk runs, reading the per-block caches (fast weights after the clean chunks so
far, KV cache of the clean context). When a chunk is done, its clean latents run once more at t = 0
as a clean segment: each block updates its fast weights with them and refills its KV cache (the
"commit"), then the next chunk starts. Real ``context`` frames are committed the same way first, so a
video can be continued, and generation can run past the training clip length.

With classifier-free guidance the batch is doubled (conditional | null condition); the two halves
keep separate caches because every cache is per batch row.
"""

from __future__ import annotations

import torch

from ..nn.layout import CLEAN, NOISY, Segment
from ..nn import MixerCache
from .flow_matching import euler_timesteps


class VideoSampler:
    """Sampling methods of :class:`~lact_app.models.video.VideoDiffusionModel` (a mixin)."""

    def start_caches(self) -> list[MixerCache]:
        """Empty caches, one per block (the start of a video)."""
        return [MixerCache() for _ in self.blocks]

    def run_chunk(
        self,
        latents: torch.Tensor,
        t: torch.Tensor,
        index: int,
        kind: str,
        caches: list[MixerCache],
        cond: torch.Tensor | None = None,
        drop: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, list[Segment], list[MixerCache]]:
        """One chunk as a single segment through all blocks.

        Args:
            latents: [B, k, C, h, w], chunk ``index`` of the video.
            t: [B] its timestep (0 for a clean chunk).
            kind: ``"noisy"`` (read the caches) or ``"clean"`` (also update them).

        Returns:
            hidden states [B, Lc, d], the embedding [B, 1, d], the segment list and the new caches.
        """
        tokens = self.patch_embed(self.chunk_tokens(latents)[:, 0])
        segments = [Segment(kind, tokens.size(1))]
        emb = self.embedding(t[:, None], cond, drop)
        positions = self.chunk_positions(index, *latents.shape[-2:], device=latents.device)
        x, caches = self.run_blocks(tokens, emb, segments, positions, caches)
        return x, emb, segments, caches

    def chunk_velocity(
        self,
        latents: torch.Tensor,
        t: torch.Tensor,
        index: int,
        caches: list[MixerCache],
        cond: torch.Tensor | None = None,
        drop: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Velocity of noisy chunk ``index`` given the caches of clean chunks < index.  -> [B, k, C, h, w]."""
        x, emb, segments, _ = self.run_chunk(latents, t, index, NOISY, caches, cond=cond, drop=drop)
        out = self.final(x, emb, segments)
        return self.unchunk_tokens(out[:, None], *latents.shape[-2:])

    def commit_chunk(
        self,
        latents: torch.Tensor,
        index: int,
        caches: list[MixerCache],
        cond: torch.Tensor | None = None,
        cfg_scale: float = 1.0,
    ) -> list[MixerCache]:
        """Runs clean chunk ``index`` at t = 0: fast weights update once, KV caches refill.

        With guidance (``cfg_scale`` ≠ 1 and a condition) both halves of the doubled batch commit.
        """
        x, cond, drop = self.guided(latents, cond, cfg_scale)
        t = torch.zeros(x.size(0), device=x.device)
        return self.run_chunk(x, t, index, CLEAN, caches, cond=cond, drop=drop)[3]

    @torch.no_grad()
    def generate(
        self,
        num_frames: int,
        batch_size: int = 1,
        context: torch.Tensor | None = None,
        cond: torch.Tensor | None = None,
        num_steps: int = 20,
        cfg_scale: float = 1.0,
        seed: int | None = None,
        frame_size: tuple[int, int] | None = None,
        sample_shift: float | None = None,
    ) -> torch.Tensor:
        """Generates (or continues) videos chunk by chunk.

        Args:
            num_frames: frames of the returned video, context included (rounded up to whole chunks
                internally, then trimmed).
            batch_size: videos to generate (ignored when ``context`` is given).
            context: [B, c, 3, H, W] real frames in [0, 1] to continue; whole chunks of it are used.
            cond: condition per video ([B] labels / [B, cond_dim]), or None (null condition).
            num_steps: Euler steps per chunk.
            cfg_scale: classifier-free guidance scale (1: no guidance; needs a conditional model).
            seed: seed of the noise (None: the global RNG).
            frame_size: (H, W) of the frames when there is no context.
            sample_shift: timestep shift of the sampling grid (None: the model's ``sample_shift``).

        Returns:
            [B, num_frames, 3, H, W] in [0, 1]; the first frames reproduce the context (through the codec).
        """
        caches, done, start = self.start_caches(), [], 0
        if context is not None:
            done, caches = self.commit_context(context, caches, cond, cfg_scale)
            batch_size, start = context.size(0), len(done)
        elif frame_size is None:
            raise ValueError("generate() needs frame_size=(H, W) when no context is given")
        shape = done[0].shape[1:] if done else self.latent_chunk_shape(frame_size)
        device = self.patch_embed.weight.device
        generator = None if seed is None else torch.Generator(device).manual_seed(seed)
        total = -(-self.latent_frames(num_frames) // self.chunk_frames)
        for index in range(start, total):
            noise = torch.randn((batch_size, *shape), generator=generator, device=device)
            chunk = self.denoise_chunk(noise, index, caches, cond=cond, num_steps=num_steps, cfg_scale=cfg_scale,
                                       sample_shift=sample_shift)  # fmt: skip
            done.append(chunk)
            if index + 1 < total:
                caches = self.commit_chunk(chunk, index, caches, cond, cfg_scale)
        return self.codec.decode(torch.cat(done, dim=1))[:, :num_frames].float()

    def denoise_chunk(
        self,
        noise: torch.Tensor,
        index: int,
        caches: list[MixerCache],
        *,
        cond: torch.Tensor | None,
        num_steps: int,
        cfg_scale: float,
        sample_shift: float | None,
    ) -> torch.Tensor:
        """Euler integration of chunk ``index`` from t = 1 (noise) to t = 0.  noise: [B, k, C, h, w]."""
        shift = self.sample_shift if sample_shift is None else sample_shift
        ts = euler_timesteps(num_steps, shift, device=noise.device)
        x = noise
        for t_now, t_next in zip(ts[:-1], ts[1:]):
            xs, c, drop = self.guided(x, cond, cfg_scale)
            v = self.chunk_velocity(xs, t_now.expand(xs.size(0)), index, caches, cond=c, drop=drop)
            if drop is not None:  # conditional | unconditional halves
                v_cond, v_null = v.chunk(2)
                v = v_null + cfg_scale * (v_cond - v_null)
            x = x + (t_next - t_now) * v
        return x

    def commit_context(
        self, context: torch.Tensor, caches: list[MixerCache], cond: torch.Tensor | None, cfg_scale: float
    ) -> tuple[list[torch.Tensor], list[MixerCache]]:
        """Encodes the context frames and commits its whole chunks.  -> (latent chunks, caches)."""
        latents = self.codec.encode(context)
        n = latents.size(1) // self.chunk_frames
        if n == 0:
            raise ValueError(f"context of {context.size(1)} frames is shorter than one chunk ({self.chunk_frames})")
        chunks = list(latents[:, : n * self.chunk_frames].split(self.chunk_frames, dim=1))
        for index, chunk in enumerate(chunks):
            caches = self.commit_chunk(chunk, index, caches, cond, cfg_scale)
        return chunks, caches

    def guided(
        self, x: torch.Tensor, cond: torch.Tensor | None, cfg_scale: float
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """(x, cond, drop) for a forward: doubled as conditional | null when guidance is on."""
        if cfg_scale == 1.0 or self.cond_embed is None or cond is None:
            return x, cond, None
        drop = torch.arange(2 * x.size(0), device=x.device) >= x.size(0)
        return torch.cat([x, x]), torch.cat([cond, cond]), drop

    def latent_frames(self, num_frames: int) -> int:
        """Latent frames holding ``num_frames`` RGB frames."""
        return -(-num_frames // self.codec.temporal_stride)

    def latent_chunk_shape(self, frame_size: tuple[int, int]) -> tuple[int, int, int, int]:
        """(k, C, h, w) of one latent chunk for RGB frames of ``frame_size`` (H, W)."""
        s = self.codec.spatial_stride
        return self.chunk_frames, self.codec.channels, frame_size[0] // s, frame_size[1] // s
