"""Rotary embeddings: relative-position property, layouts, 3-D split and positions."""

import pytest
import torch

from lact_app.nn import Rotary3DEmbedding, RotaryEmbedding, grid_positions, rotate


def _vec(d, seed, dtype=torch.float64):
    return torch.randn(1, 1, 1, d, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _at(rope, x, pos):
    """Rotate a single vector x: [1, 1, 1, Dh] to one position (an int or a (t, h, w) triple)."""
    return rope.apply(x, torch.tensor([pos]))[0, 0, 0]


@pytest.mark.parametrize("interleaved", [False, True])
def test_relative_position_1d(interleaved):
    rope = RotaryEmbedding(8, theta=100.0, interleaved=interleaved)
    q, k = _vec(8, 0), _vec(8, 1)
    for lag in (0, 3, -2):
        dots = [_at(rope, q, m) @ _at(rope, k, m - lag) for m in (2, 7, 40)]
        torch.testing.assert_close(torch.stack(dots), dots[0].expand(3), rtol=0, atol=1e-12)
    assert not torch.isclose(_at(rope, q, 3) @ _at(rope, k, 0), _at(rope, q, 1) @ _at(rope, k, 0))
    torch.testing.assert_close(_at(rope, q, 0), q[0, 0, 0], rtol=0, atol=0)  # position 0 is the identity
    torch.testing.assert_close(_at(rope, q, 9).norm(), q.norm(), rtol=0, atol=1e-12)


def test_pair_conventions():
    x = torch.tensor([[[[1.0, 0.0, 0.0, 0.0]]]])
    # one step at the lowest frequency (1 rad) moves channel 0 into its partner
    halves = RotaryEmbedding(4, interleaved=False).apply(x, torch.tensor([1]))
    pairs = RotaryEmbedding(4, interleaved=True).apply(x, torch.tensor([1]))
    c, s = torch.cos(torch.tensor(1.0)), torch.sin(torch.tensor(1.0))
    torch.testing.assert_close(halves.flatten(), torch.stack([c, torch.tensor(0.0), s, torch.tensor(0.0)]))
    torch.testing.assert_close(pairs.flatten(), torch.stack([c, s, torch.tensor(0.0), torch.tensor(0.0)]))


@pytest.mark.parametrize("interleaved", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_rotation_is_the_pairwise_formula_bit_for_bit(interleaved, dtype):
    """x · cos + partner · (signed sin) is (x1 cos − x2 sin, x1 sin + x2 cos) on every pair, exactly."""
    rope = RotaryEmbedding(8, theta=100.0, interleaved=interleaved)
    x = torch.randn(2, 3, 5, 8, generator=torch.Generator().manual_seed(0), dtype=dtype)
    positions = torch.tensor([0, 1, 7, 300, 4096])
    angles = rope.angles(positions)  # float64, cos and sin taken before the cast to x's dtype
    cos, sin = angles.cos().to(dtype), angles.sin().to(dtype)
    x1, x2 = (x[..., 0::2], x[..., 1::2]) if interleaved else x.chunk(2, dim=-1)
    pairs = (x1 * cos - x2 * sin, x1 * sin + x2 * cos)
    expected = torch.stack(pairs, dim=-1).flatten(-2) if interleaved else torch.cat(pairs, dim=-1)
    torch.testing.assert_close(rope.apply(x, positions), expected, rtol=0, atol=0)


def test_layouts_batched_positions_and_dtype():
    rope = RotaryEmbedding(8)
    x = torch.randn(2, 3, 5, 8)  # [B, heads, L, Dh]
    pos = torch.tensor([[0, 1, 2, 3, 4], [10, 11, 12, 13, 14]])
    y = rope.apply(x, pos)
    torch.testing.assert_close(y[0], rope.apply(x[:1], torch.arange(5))[0])
    torch.testing.assert_close(y[1], rope.apply(x[1:], torch.arange(10, 15))[0])
    y_blhd = rope.apply(x.transpose(1, 2), pos, layout="blhd")
    torch.testing.assert_close(y_blhd.transpose(1, 2), y)
    xb = x.bfloat16()
    yb = rope.apply(xb, pos)
    assert yb.dtype == torch.bfloat16
    torch.testing.assert_close(yb, rope.apply(xb.float(), pos).bfloat16(), rtol=0, atol=0)
    with pytest.raises(ValueError, match="layout"):
        rotate(x, rope.angles(pos), False, layout="lbhd")


def test_angles_float64_at_long_positions():
    rope = RotaryEmbedding(4, theta=1e6)
    angles = rope.angles(torch.tensor([1_000_003]))
    assert angles.dtype == torch.float64
    assert angles[0, 0].item() == 1_000_003.0


def test_3d_split():
    assert Rotary3DEmbedding(128).axis_pairs == (22, 21, 21)
    assert Rotary3DEmbedding(64).axis_pairs == (12, 10, 10)
    with pytest.raises(ValueError):
        Rotary3DEmbedding(4)


def test_relative_position_3d():
    rope = Rotary3DEmbedding(12, theta=100.0)  # pairs t/h/w = 2/2/2
    q, k = _vec(12, 0), _vec(12, 1)
    lag = (1, -2, 3)
    dots = []
    for m in [(0, 0, 0), (3, 5, 1), (7, 2, 9)]:
        n = tuple(a - b for a, b in zip(m, lag))
        dots.append(_at(rope, q, m) @ _at(rope, k, n))
    torch.testing.assert_close(torch.stack(dots), dots[0].expand(3), rtol=0, atol=1e-12)


def test_3d_axes_touch_their_own_channels():
    rope = Rotary3DEmbedding(12)  # interleaved: t on channels 0-3, h on 4-7, w on 8-11
    x = _vec(12, 0)
    base = x[0, 0, 0]
    for axis, channels in enumerate((slice(0, 4), slice(4, 8), slice(8, 12))):
        pos = [0, 0, 0]
        pos[axis] = 5
        y = _at(rope, x, tuple(pos))
        changed = (y - base).abs() > 1e-9
        assert changed[channels].all() and changed.sum() == 4


def test_grid_positions_and_shared_time():
    pos = grid_positions(2, 2, 3, t_start=4)
    assert pos.shape == (12, 3)
    assert pos[:4].tolist() == [[4, 0, 0], [4, 0, 1], [4, 0, 2], [4, 1, 0]]
    assert pos[6].tolist() == [5, 0, 0]
    # a noisy chunk and its clean twin share (t, h, w), so they rotate identically
    rope = Rotary3DEmbedding(12)
    x = torch.randn(1, 1, 12, 12)
    twin = torch.cat([pos, pos])
    y = rope.apply(torch.cat([x, x], dim=2), twin)
    torch.testing.assert_close(y[:, :, :12], y[:, :, 12:], rtol=0, atol=0)
    with pytest.raises(ValueError, match="t, h, w"):
        rope.apply(x, torch.arange(12))
