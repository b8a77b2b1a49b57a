"""The video diffusion model: layout, op list, attention key sets, RoPE positions, flow matching,
sampling-time velocity == training-layout velocity, generation."""

import math

import pytest
import torch

from lact_app.models.codec import PixelCodec
from lact_app.models.flow_matching import (
    add_noise,
    euler_timesteps,
    logit_normal_weight,
    sample_timesteps,
    shift_timesteps,
    velocity_target,
)
from lact_app.models.video import VideoDiffusionModel, interleave
from lact_app.nn import (
    Segment,
    interleaved_layout,
    interleaved_schedule,
    segment_bounds,
)
from lact_app.nn import BackboneConfig, FastWeightConfig
from lact_app.nn.video_block import ChunkMixer, full_causal_keys

FW = FastWeightConfig()
BB1 = BackboneConfig(dim=32, depth=1, heads=2)
from lact_app.ops import Op

N, C = "noisy", "clean"


def dense(ranges, bounds, length):
    """The [L, L] mask of per-segment key ranges."""
    mask = torch.zeros(length, length, dtype=torch.bool)
    for (s, e), keys in zip(bounds, ranges):
        for ks, ke in keys:
            mask[s:e, ks:ke] = True
    return mask


def tiny_model(memory="lact", clean_context=None, **kw):
    torch.manual_seed(0)
    model = VideoDiffusionModel(backbone=BackboneConfig(dim=32, depth=2, heads=2), patch_size=2, chunk_frames=2, memory=memory,
                                clean_context=clean_context, **kw)
    with torch.no_grad():  # wake the zero-initialised gates, modulations and output layer up
        for p in model.parameters():
            if not p.any():
                p.normal_(0, 0.2)
    return model.eval()


def test_layout_and_op_list_three_chunks():
    segments = interleaved_layout(3, 2)
    assert segments == [Segment(N, 2), Segment(C, 2), Segment(N, 2), Segment(C, 2), Segment(N, 2)]
    # N0 reads W0; C0 updates, then C0 and N1 read W1; C1 updates, then C1 and N2 read W2
    assert interleaved_schedule(segments) == [
        Op(0, 2, False, True), Op(2, 4, True, False), Op(2, 6, False, True), Op(6, 8, True, False),
        Op(6, 10, False, True),
    ]


def test_attention_key_sets_by_hand():
    segments = interleaved_layout(3, 1)  # tokens: N0 C0 N1 C1 N2
    bounds = segment_bounds(segments)
    lact = ChunkMixer(BackboneConfig(dim=12, heads=2), memory="lact", fast_weight=FW).key_ranges(segments)
    full = ChunkMixer(BackboneConfig(dim=12, heads=2), memory="full_attention", fast_weight=FW).key_ranges(segments)
    assert full == full_causal_keys(segments)
    #                              N0 C0 N1 C1 N2
    expected_local = torch.tensor([[1, 0, 0, 0, 0],
                                   [0, 1, 0, 0, 0],
                                   [0, 1, 1, 0, 0],
                                   [0, 0, 0, 1, 0],
                                   [0, 0, 0, 1, 1]], dtype=torch.bool)
    expected_full = torch.tensor([[1, 0, 0, 0, 0],
                                  [0, 1, 0, 0, 0],
                                  [0, 1, 1, 0, 0],
                                  [0, 1, 0, 1, 0],
                                  [0, 1, 0, 1, 1]], dtype=torch.bool)
    assert torch.equal(dense(lact, bounds, 5), expected_local)
    assert torch.equal(dense(full, bounds, 5), expected_full)


def test_clean_context_window():
    segments = interleaved_layout(2, 3)  # N0 (0-2) | C0 (3-5) N1 (6-8)
    ranges = ChunkMixer(BackboneConfig(dim=12, heads=2), memory="lact", fast_weight=FW, clean_context=2).key_ranges(segments)
    assert ranges[2] == [(4, 6), (6, 9)]  # the last 2 tokens of C0, then itself


def test_rope_positions_true_frame_indices_shared_by_twins():
    model = VideoDiffusionModel(backbone=BB1, patch_size=2, chunk_frames=2)
    pos = model.interleaved_positions(3, 2, 4, device=None)  # 1×2 tokens per frame, 4 per chunk
    per_segment = pos.view(5, 4, 3)
    times = per_segment[..., 0].tolist()
    assert times == [[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 3, 3], [2, 2, 3, 3], [4, 4, 5, 5]]
    assert per_segment[0, :, 1:].tolist() == [[0, 0], [0, 1], [0, 0], [0, 1]]  # (h, w) per frame
    assert torch.equal(per_segment[2], per_segment[3])  # N1 and C1


def test_interleave_order():
    noisy, clean = torch.arange(3)[None] * 10, torch.arange(3)[None] * 10 + 1
    assert interleave(noisy, clean).tolist() == [[0, 1, 10, 11, 20]]


def test_flow_matching_pieces():
    u = torch.linspace(0, 1, 11)
    assert torch.allclose(shift_timesteps(u, 1.0), u)
    shifted = shift_timesteps(u, 3.0)
    assert shifted[0] == 0 and shifted[-1] == 1 and torch.all(shifted[1:-1] > u[1:-1])
    assert math.isclose(float(logit_normal_weight(torch.tensor(0.5))), 1 / (0.25 * math.sqrt(2 * math.pi)), rel_tol=1e-2)
    assert torch.isfinite(logit_normal_weight(torch.tensor([0.0, 1.0]))).all()
    grid = euler_timesteps(4, 3.0)
    assert grid[0] == 1 and grid[-1] == 0 and torch.all(grid[1:] < grid[:-1])
    t, u = sample_timesteps((1000,), 2.0, torch.Generator().manual_seed(0))
    assert torch.allclose(t, shift_timesteps(u, 2.0)) and t.mean() > u.mean()
    x0, eps = torch.randn(2, 3, 4), torch.randn(2, 3, 4)
    assert torch.equal(add_noise(x0, eps, torch.zeros(2)), x0)
    xt = add_noise(x0, eps, torch.full((2,), 0.3))
    assert torch.allclose(xt + 0.7 * velocity_target(x0, eps), eps, atol=1e-6)  # moving t: 0.3 -> 1


def test_pixel_codec_roundtrip():
    frames = torch.rand(1, 2, 3, 4, 4)
    assert torch.allclose(PixelCodec().decode(PixelCodec().encode(frames)), frames)


@pytest.mark.parametrize("memory,clean_context", [("lact", None), ("lact", 3), ("full_attention", None),
                                                  ("none", None)])
def test_sampling_velocity_equals_training_velocity(memory, clean_context):
    """Chunk i's velocity from the caches of clean chunks < i == the teacher-forced velocity."""
    model = tiny_model(memory, clean_context)
    x0 = torch.randn(2, 6, 3, 4, 4)
    noise, t = torch.randn_like(x0), torch.rand(2, 3)
    xt = add_noise(x0, noise, t.repeat_interleave(2, dim=1))
    with torch.no_grad():
        train_v = model(xt, x0, t)
        caches, stream_v = model.start_caches(), []
        for i in range(3):
            stream_v.append(model.chunk_velocity(xt[:, 2 * i:2 * i + 2], t[:, i], i, caches))
            caches = model.commit_chunk(x0[:, 2 * i:2 * i + 2], i, caches)
    assert torch.allclose(torch.cat(stream_v, dim=1), train_v, atol=1e-5), (torch.cat(stream_v, 1) - train_v).abs().max()
    assert train_v.abs().max() > 0.1  # not trivially zero


def test_memory_reaches_back_beyond_the_previous_chunk():
    """LaCT and full attention see chunk 0 from chunk 2; chunk-local attention alone does not."""
    for memory, reaches in (("lact", True), ("full_attention", True), ("none", False)):
        model = tiny_model(memory)
        x0, noise, t = torch.randn(1, 6, 3, 4, 4), torch.randn(1, 6, 3, 4, 4), torch.full((1, 3), 0.5)
        other = x0.clone()
        other[:, :2] += 1.0  # change clean chunk 0 only
        with torch.no_grad():
            v1 = model(add_noise(x0, noise, t.repeat_interleave(2, 1)), x0, t)[:, 4:]
            v2 = model(add_noise(x0, noise, t.repeat_interleave(2, 1)), other, t)[:, 4:]
        assert (not torch.allclose(v1, v2, atol=1e-6)) == reaches, memory


def test_training_loss_backward_reaches_fast_weights():
    model = VideoDiffusionModel(backbone=BB1, patch_size=2, chunk_frames=2)
    loss = model.training_loss(torch.rand(2, 4, 3, 4, 4), generator=torch.Generator().manual_seed(0))
    loss.backward()
    assert torch.isfinite(loss) and loss > 0.5  # zero-initialised output: v̂ = 0, loss ≈ E|ε − x0|²
    # only the output layer has a gradient at init (adaLN-zero, zero-init gate); one step wakes the rest
    assert model.final.proj.weight.grad.abs().sum() > 0


def test_generate_continue_longer_than_training_and_deterministic():
    model = tiny_model()
    context = torch.rand(2, 4, 3, 4, 4)
    out = model.generate(9, context=context, num_steps=2, seed=3)
    again = model.generate(9, context=context, num_steps=2, seed=3)
    assert out.shape == (2, 9, 3, 4, 4) and torch.equal(out, again)
    assert torch.allclose(out[:, :4], context, atol=1e-6)  # the context comes back unchanged
    assert 0 <= out.min() and out.max() <= 1
    free = model.generate(5, batch_size=3, frame_size=(4, 4), num_steps=2, seed=0)
    assert free.shape == (3, 5, 3, 4, 4)
    with pytest.raises(ValueError, match="frame_size"):
        model.generate(4)


def test_class_conditioning_and_guidance():
    model = tiny_model(cond="class", num_classes=3, cond_dropout=0.5)
    frames, labels = torch.rand(2, 4, 3, 4, 4), torch.tensor([0, 2])
    assert torch.isfinite(model.training_loss(frames, labels, torch.Generator().manual_seed(0)))
    guided = model.generate(4, batch_size=2, cond=labels, cfg_scale=3.0, frame_size=(4, 4), num_steps=2, seed=0)
    plain = model.generate(4, batch_size=2, cond=labels, cfg_scale=1.0, frame_size=(4, 4), num_steps=2, seed=0)
    assert guided.shape == plain.shape and not torch.allclose(guided, plain)


def test_embedding_conditioning_null_and_drop():
    model = tiny_model(cond="embedding", cond_dim=5)
    emb = torch.randn(2, 5)
    e_null = model.cond_embed(None, None, 2)
    e_drop = model.cond_embed(emb, torch.tensor([True, False]), 2)
    assert torch.equal(e_drop[0], e_null[0]) and not torch.equal(e_drop[1], e_null[1])


def test_bad_shapes_and_options_fail_clearly():
    model = VideoDiffusionModel(backbone=BB1, patch_size=2, chunk_frames=2)
    with pytest.raises(ValueError, match="chunk_frames"):
        model.training_loss(torch.rand(1, 3, 3, 4, 4))
    with pytest.raises(ValueError, match="memory"):
        VideoDiffusionModel(backbone=BB1, memory="rnn")
