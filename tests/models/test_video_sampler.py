"""The sampler alone, on velocities known in closed form: a sampler bug (time grid, step sign, chunk
bookkeeping, decoding) cannot hide behind training. The network's velocity is stubbed; the sampler
(``generate``, ``denoise_chunk``, commits of the real network) runs unchanged."""

import pytest
import torch

from lact_app.models.video import VideoDiffusionModel
from lact_app.nn import BackboneConfig


def tiny_model() -> VideoDiffusionModel:
    torch.manual_seed(0)
    return VideoDiffusionModel(backbone=BackboneConfig(dim=16, depth=1, heads=2), patch_size=2, chunk_frames=2).eval()


def constant_data_velocity(levels: list[float]):
    """The exact flow-matching velocity of data whose chunk i is the constant latent ``levels[i]``:
    x0 = c is certain, so ε = (x_t − (1 − t)·c)/t and E[ε − x0 | x_t] = (x_t − c)/t."""

    def velocity(latents, t, index, caches, cond=None, drop=None):
        return (latents - levels[index]) / t.view(-1, 1, 1, 1, 1)

    return velocity


def gaussian_data_velocity(mean: float, std: float):
    """The exact velocity of data x0 ~ N(mean, std²) per value: with x_t = (1 − t)·x0 + t·ε,
    Var x_t = (1 − t)²·std² + t², E[x0 | x_t] = mean + (1 − t)·std²·r / Var and E[ε | x_t] = t·r / Var,
    r = x_t − (1 − t)·mean."""

    def velocity(latents, t, index, caches, cond=None, drop=None):
        t = t.view(-1, 1, 1, 1, 1)
        var, r = (1 - t) ** 2 * std**2 + t**2, latents - (1 - t) * mean
        return t * r / var - (mean + (1 - t) * std**2 * r / var)

    return velocity


@pytest.mark.parametrize("num_steps, shift", [(1, 1.0), (4, 1.0), (16, 3.0)])
def test_sampler_lands_on_constant_frames(monkeypatch, num_steps, shift):
    """Euler on the exact velocity of a certain x0 is exact on any grid: x_t − c scales by t'/t per
    step and reaches 0 at t = 0. Chunk i must come out as level i, in order, decoded to [0, 1]."""
    model, levels = tiny_model(), [-0.6, 0.2, 0.8]
    monkeypatch.setattr(model, "chunk_velocity", constant_data_velocity(levels))
    out = model.generate(6, batch_size=2, frame_size=(4, 4), num_steps=num_steps, seed=0, sample_shift=shift)
    expected = torch.tensor([(c + 1) / 2 for c in levels]).repeat_interleave(2).view(1, 6, 1, 1, 1)
    torch.testing.assert_close(out, expected.expand(2, 6, 3, 4, 4), atol=1e-5, rtol=0)


def test_sampler_continues_after_context_on_constant_frames(monkeypatch):
    """With 2 context frames (chunk 0) the sampler starts at chunk 1: its frames are level 1, 2."""
    model, levels = tiny_model(), [0.0, -0.4, 0.4]
    monkeypatch.setattr(model, "chunk_velocity", constant_data_velocity(levels))
    context = torch.rand(3, 2, 3, 4, 4)
    out = model.generate(6, context=context, num_steps=5, seed=0)
    torch.testing.assert_close(out[:, :2], context, atol=1e-6, rtol=0)
    torch.testing.assert_close(out[:, 2:4], torch.full((3, 2, 3, 4, 4), 0.3), atol=1e-5, rtol=0)
    torch.testing.assert_close(out[:, 4:], torch.full((3, 2, 3, 4, 4), 0.7), atol=1e-5, rtol=0)


def test_sampler_reproduces_gaussian_data_statistics(monkeypatch):
    """The flow ODE transports N(0, I) onto N(mean, std²); the velocity is affine in x_t, so is the
    sampler's map, and standardised noise must come out with the data's mean and std (256 Euler
    steps on a shifted grid: Euler's own error is 1 % of the std; 16 steps shrink it by 13 %)."""
    model, mean, std = tiny_model(), 0.2, 0.5
    monkeypatch.setattr(model, "chunk_velocity", gaussian_data_velocity(mean, std))
    noise = torch.randn(64, 2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    noise = (noise - noise.mean()) / noise.std()
    x = model.denoise_chunk(noise, 0, model.start_caches(), cond=None, num_steps=256, cfg_scale=1.0, sample_shift=2.0)
    assert x.mean().item() == pytest.approx(mean, abs=0.01)
    assert x.std().item() == pytest.approx(std, abs=0.01)
