"""NVSModel: shapes, init, permutation invariance over input views, reconstruct + chunked render == joint."""

import math

import pytest
import torch

from lact_app.models.cameras import look_at
from lact_app.models.nvs import NVSModel, patchify, unpatchify
from lact_app.nn import MEMORIES, BackboneConfig
from lact_app.nn.nvs_block import CrossViewLaCT


def cameras(batch: int, views: int, generator: torch.Generator):
    pos = torch.nn.functional.normalize(torch.randn(batch * views, 3, generator=generator), dim=-1) * 2.7
    c2w = look_at(pos, torch.zeros(3), torch.tensor([0.0, 0.0, 1.0])).view(batch, views, 4, 4)
    return torch.tensor([35.0, 35.0, 16.0, 16.0]).expand(batch, views, 4), c2w


@pytest.fixture(scope="module")
def scene():
    g = torch.Generator().manual_seed(0)
    k_in, c_in = cameras(2, 3, g)
    k_t, c_t = cameras(2, 5, g)
    return torch.rand(2, 3, 3, 32, 32, generator=g), k_in, c_in, k_t, c_t


def tiny(memory="lact"):
    torch.manual_seed(0)
    return NVSModel(patch_size=8, backbone=BackboneConfig(dim=64, depth=2, heads=2, rope_theta=None), memory=memory).eval()


def test_patchify_round_trip_and_feature_order():
    x = torch.randn(2, 3, 5, 16, 24)
    p = patchify(x, 8)
    assert p.shape == (2, 3 * 2 * 3, 8 * 8 * 5)
    torch.testing.assert_close(p[0, 0, :5], x[0, 0, :, 0, 0])  # (row, col, channel) order
    torch.testing.assert_close(p[0, 0, 5:10], x[0, 0, :, 0, 1])
    torch.testing.assert_close(unpatchify(p, 3, 16, 24, 8), x)


@pytest.mark.parametrize("memory", MEMORIES)
def test_output_shape_and_range(scene, memory):
    out = tiny(memory)(*scene)
    assert out.shape == (2, 5, 3, 32, 32)
    assert out.min() >= 0 and out.max() <= 1


def test_initialisation_follows_the_reference():
    model = NVSModel(patch_size=8, backbone=BackboneConfig(dim=64, depth=3, heads=2, rope_theta=None))
    block = model.blocks[0]
    assert block.attn.qkv.weight.std().item() == pytest.approx(0.02, rel=0.1)
    for proj in block.output_projections():
        assert proj.weight.std().item() == pytest.approx(0.02 / math.sqrt(9), rel=0.1)
    lact = block.mixer
    branch = lact.layer.branch
    assert isinstance(lact, CrossViewLaCT) and branch.num_heads == 1
    assert (branch.head_dim, branch.hidden) == (64, 128)
    assert branch.w0.std().item() == pytest.approx(math.sqrt(2 / 64), rel=0.1)  # "nvs" init
    assert branch.w1.std().item() == pytest.approx(math.sqrt(2 / 128), rel=0.1)
    assert branch.use_muon and branch.detach_norms and len(branch.ns_coeffs) == 5


@pytest.mark.parametrize("memory", MEMORIES)
def test_invariant_to_input_view_order(scene, memory):
    images, k_in, c_in, k_t, c_t = scene
    model = tiny(memory)
    perm = torch.tensor([2, 0, 1])
    with torch.no_grad():
        out = model(images, k_in, c_in, k_t, c_t)
        permuted = model(images[:, perm], k_in[:, perm], c_in[:, perm], k_t, c_t)
    torch.testing.assert_close(permuted, out, atol=1e-5, rtol=0)
    assert out.std() > 1e-3  # not trivially constant


@pytest.mark.parametrize("memory", MEMORIES)
def test_chunked_render_equals_joint_forward(scene, memory):
    images, k_in, c_in, k_t, c_t = scene
    model = tiny(memory)
    with torch.no_grad():
        joint = model(images, k_in, c_in, k_t, c_t)
        states = model.reconstruct(images, k_in, c_in)
        assert len(states) == 2
        for chunk in (1, 2, None):
            torch.testing.assert_close(model.render(states, k_t, c_t, (32, 32), chunk), joint, atol=1e-6, rtol=0)


def test_without_memory_the_inputs_are_not_used(scene):
    """``memory="none"``: targets see only their own rays (the camera-only baseline)."""
    images, k_in, c_in, k_t, c_t = scene
    model = tiny("none")
    with torch.no_grad():
        out = model(images, k_in, c_in, k_t, c_t)
        other = model(torch.rand_like(images), k_in, c_in, k_t, c_t)
    assert model.blocks[0].mixer is None and torch.equal(out, other)
    with torch.no_grad():
        lact = tiny("lact")
        assert not torch.allclose(lact(images, k_in, c_in, k_t, c_t), lact(torch.rand_like(images), k_in, c_in, k_t, c_t))


def test_targets_render_the_same_alone_or_together(scene):
    images, k_in, c_in, k_t, c_t = scene
    model = tiny()
    with torch.no_grad():
        together = model(images, k_in, c_in, k_t, c_t)
        alone = model(images, k_in, c_in, k_t[:, 3:4], c_t[:, 3:4])
    torch.testing.assert_close(alone, together[:, 3:4], atol=1e-6, rtol=0)


def test_gradients_reach_the_initial_fast_weights(scene):
    model = tiny().train()
    model(*scene).mean().backward()
    branch = model.blocks[0].mixer.layer.branch
    assert all(w.grad is not None and w.grad.abs().sum() > 0 for w in (branch.w0, branch.w1, branch.w2))


def test_image_size_must_be_a_multiple_of_the_patch(scene):
    images, k_in, c_in, k_t, c_t = scene
    with pytest.raises(ValueError, match="multiple of the patch size"):
        tiny()(images[..., :30, :30], k_in, c_in, k_t, c_t)
