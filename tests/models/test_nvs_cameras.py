"""Cameras: Plücker rays against hand-computed cases, OpenGL↔OpenCV, pose normalisation, camera paths."""

import math

import pytest
import torch

from lact_app.models.cameras import (
    interpolate_path,
    look_at,
    normalize_poses,
    opencv_to_opengl,
    opengl_to_opencv,
    plucker_rays,
    turntable,
)

UP = torch.tensor([0.0, 0.0, 1.0])


def test_rays_of_an_axis_aligned_camera_by_hand():
    # 2×2 image, fx = fy = 2, cx = cy = 1, camera at (1, 2, 3) with OpenCV axes = world axes.
    c2w = torch.eye(4)
    c2w[:3, 3] = torch.tensor([1.0, 2.0, 3.0])
    rays = plucker_rays(torch.tensor([2.0, 2.0, 1.0, 1.0]), c2w, 2, 2)
    assert rays.shape == (9, 2, 2)
    # pixel (row 0, col 1): centre (1.5, 0.5) -> ((1.5 - 1)/2, (0.5 - 1)/2, 1) = (0.25, -0.25, 1)
    d = torch.tensor([0.25, -0.25, 1.0]) / math.sqrt(0.25**2 * 2 + 1)
    o = torch.tensor([1.0, 2.0, 3.0])
    torch.testing.assert_close(rays[:3, 0, 1], o)
    torch.testing.assert_close(rays[3:6, 0, 1], d)
    torch.testing.assert_close(rays[6:, 0, 1], torch.linalg.cross(o, d, dim=0))
    # the four directions are symmetric about the optical axis
    torch.testing.assert_close(rays[3:5].sum((1, 2)), torch.zeros(2), atol=1e-6, rtol=0)


def test_rays_of_a_rotated_camera_by_hand():
    # A camera at the origin looking along world +x, image "down" = world −z: columns (x, y, z) of R.
    c2w = torch.eye(4)
    c2w[:3, :3] = torch.tensor([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])
    rays = plucker_rays(torch.tensor([1.0, 1.0, 0.5, 0.5]), c2w, 1, 1)
    torch.testing.assert_close(rays[3:6, 0, 0], torch.tensor([1.0, 0.0, 0.0]))  # the centre ray is +z_cam
    torch.testing.assert_close(rays[6:, 0, 0], torch.zeros(3))  # through the origin: zero moment
    # a pixel to the right (u + 1) looks towards camera +x = world −y
    right = plucker_rays(torch.tensor([1.0, 1.0, -0.5, 0.5]), c2w, 1, 1)[3:6, 0, 0]
    torch.testing.assert_close(right, torch.tensor([1.0, -1.0, 0.0]) / math.sqrt(2))


def test_rays_batch_shapes_and_unit_directions():
    c2w = look_at(torch.randn(6, 3) * 3, torch.zeros(3), UP).view(2, 3, 4, 4)
    rays = plucker_rays(torch.tensor([40.0, 50.0, 16.0, 12.0]).expand(2, 3, 4), c2w, 24, 32)
    assert rays.shape == (2, 3, 9, 24, 32)
    torch.testing.assert_close(rays[:, :, 3:6].norm(dim=2), torch.ones(2, 3, 24, 32))


def test_opengl_opencv_round_trip_and_axes():
    c2w = look_at(torch.randn(5, 3) * 2, torch.zeros(3), UP)
    torch.testing.assert_close(opencv_to_opengl(opengl_to_opencv(c2w)), c2w)
    gl = torch.eye(4)  # OpenGL camera at the origin looks down world −z with y up
    cv = opengl_to_opencv(gl)
    torch.testing.assert_close(cv[:3, 2], torch.tensor([0.0, 0.0, -1.0]))  # forward
    torch.testing.assert_close(cv[:3, 1], torch.tensor([0.0, -1.0, 0.0]))  # down
    torch.testing.assert_close(cv[:3, 0], gl[:3, 0])


def test_look_at_points_the_optical_axis_at_the_target():
    pos = torch.tensor([[2.0, 1.0, 1.5], [0.0, -3.0, 0.5]])
    c2w = look_at(pos, torch.zeros(3), UP)
    torch.testing.assert_close(c2w[:, :3, 2], -pos / pos.norm(dim=-1, keepdim=True))
    assert (c2w[:, :3, 1] @ UP < 0).all()  # image down is world down
    torch.testing.assert_close(torch.linalg.det(c2w[:, :3, :3]), torch.ones(2))


def test_normalize_poses_centres_and_scales():
    c2w = look_at(torch.randn(8, 3) * 5 + 10, torch.tensor([10.0, 10.0, 10.0]), UP)
    out = normalize_poses(c2w)
    torch.testing.assert_close(out[:, :3, 3].mean(0), torch.zeros(3), atol=1e-5, rtol=0)
    assert out[:, :3, 3].abs().max() == pytest.approx(1.0)
    torch.testing.assert_close(torch.linalg.det(out[:, :3, :3]), torch.ones(8))
    # relative poses are preserved up to the scale
    rel = torch.linalg.inv(c2w[0]) @ c2w[1]
    rel_out = torch.linalg.inv(out[0]) @ out[1]
    torch.testing.assert_close(rel_out[:3, :3], rel[:3, :3], atol=1e-5, rtol=0)


def test_turntable_orbits_the_look_at_point():
    elevation = math.radians(30)
    azimuth = torch.tensor([0.3, 1.5, 2.9, 4.0])
    pos = 2.7 * torch.stack([math.cos(elevation) * azimuth.cos(), math.cos(elevation) * azimuth.sin(),
                             torch.full_like(azimuth, math.sin(elevation))], dim=-1)
    path = turntable(look_at(pos, torch.zeros(3), UP), 12)
    assert path.shape == (12, 4, 4)
    torch.testing.assert_close(path[:, :3, 3].norm(dim=-1), torch.full((12,), 2.7), atol=1e-4, rtol=0)
    torch.testing.assert_close(path[:, 2, 3], torch.full((12,), 2.7 * math.sin(elevation)), atol=1e-4, rtol=0)
    torch.testing.assert_close(path[0, :3, 3], pos[0], atol=1e-4, rtol=0)  # starts at the first camera
    torch.testing.assert_close(path[:, :3, 2], -path[:, :3, 3] / 2.7, atol=1e-4, rtol=0)


def test_interpolated_path_passes_through_the_poses():
    c2w = look_at(torch.tensor([[3.0, 0, 1], [0, 3.0, 1], [-3.0, 0, 1]]), torch.zeros(3), UP)
    path = interpolate_path(c2w, 9)
    torch.testing.assert_close(path[[0, 4, 8]], c2w, atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.linalg.det(path[:, :3, :3]), torch.ones(9), atol=1e-5, rtol=0)
