"""Pinhole cameras for novel view synthesis: Plücker rays, axis conventions, pose normalisation, paths.

Conventions (LACT_SPEC.md §2.1, §2.3): intrinsics are ``(fx, fy, cx, cy)`` in pixels with the image
edge at 0, so pixel ``(u, v)`` (column, row) has its centre at ``(u + 0.5, v + 0.5)``; poses are
camera-to-world 4×4 matrices in the OpenCV convention (camera x right, y down, z forward).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

#: Flipping the camera's y and z axes turns an OpenGL/Blender camera into an OpenCV one (and back).
GL_TO_CV = torch.diag(torch.tensor([1.0, -1.0, -1.0, 1.0]))


def opengl_to_opencv(c2w: torch.Tensor) -> torch.Tensor:
    """c2w: [..., 4, 4] with camera axes x right, y up, z backward -> x right, y down, z forward.

    The conversion is its own inverse (use it for OpenCV -> OpenGL too).
    """
    return c2w @ GL_TO_CV.to(c2w)


def opencv_to_opengl(c2w: torch.Tensor) -> torch.Tensor:
    """c2w: [..., 4, 4] OpenCV -> OpenGL camera axes (the inverse of :func:`opengl_to_opencv`)."""
    return opengl_to_opencv(c2w)


def pixel_directions(intrinsics: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Camera-space ray directions ((u + 0.5 − cx)/fx, (v + 0.5 − cy)/fy, 1), not normalised.

    Args:
        intrinsics: [..., 4] = (fx, fy, cx, cy) in pixels.

    Returns:
        [..., H, W, 3].
    """
    fx, fy, cx, cy = (intrinsics[..., i, None, None] for i in range(4))
    v, u = torch.meshgrid(
        torch.arange(height, device=intrinsics.device, dtype=intrinsics.dtype) + 0.5,
        torch.arange(width, device=intrinsics.device, dtype=intrinsics.dtype) + 0.5,
        indexing="ij",
    )
    x, y = (u - cx) / fx, (v - cy) / fy
    return torch.stack([x, y, torch.ones_like(x)], dim=-1)


def plucker_rays(intrinsics: torch.Tensor, c2w: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Per-pixel Plücker ray maps: origin o, unit direction d, moment o × d (fp32, autocast off).

    Args:
        intrinsics: [..., 4] = (fx, fy, cx, cy).
        c2w: [..., 4, 4] OpenCV camera-to-world.
        height, width: image size in pixels.

    Returns:
        [..., 9, H, W] channels (o, d, o × d).
    """
    with torch.autocast(device_type=c2w.device.type, enabled=False):
        intrinsics, c2w = intrinsics.float(), c2w.float()
        dirs = pixel_directions(intrinsics, height, width)  # [..., H, W, 3]
        rot, origin = c2w[..., None, None, :3, :3], c2w[..., None, None, :3, 3]
        d = F.normalize((rot @ dirs.unsqueeze(-1)).squeeze(-1), dim=-1)
        o = origin.expand_as(d)
        rays = torch.cat([o, d, torch.linalg.cross(o, d, dim=-1)], dim=-1)
    return rays.movedim(-1, -3)


def normalize_poses(c2w: torch.Tensor) -> torch.Tensor:
    """Scene-level pose normalisation (LACT_SPEC.md §2.3): express all poses in their average pose.

    The average pose has the mean camera centre and the orthonormalised mean forward (z) and
    down (y) axes; translations are then divided by their largest absolute coordinate.

    Args:
        c2w: [V, 4, 4] OpenCV poses of one scene (all its views, inputs and targets together).

    Returns:
        [V, 4, 4].
    """
    z = F.normalize(c2w[:, :3, 2].mean(0), dim=0)
    x = F.normalize(torch.linalg.cross(c2w[:, :3, 1].mean(0), z, dim=0), dim=0)
    y = torch.linalg.cross(z, x, dim=0)
    average = torch.eye(4, dtype=c2w.dtype, device=c2w.device)
    average[:3, :3] = torch.stack([x, y, z], dim=1)
    average[:3, 3] = c2w[:, :3, 3].mean(0)
    out = torch.linalg.inv(average) @ c2w
    scale = out[:, :3, 3].abs().max().clamp_min(1e-8)
    out[:, :3, 3] = out[:, :3, 3] / scale
    return out


def look_at(position: torch.Tensor, target: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """OpenCV c2w of cameras at ``position`` looking at ``target`` with world ``up``.

    Args:
        position: [N, 3]; target, up: [3].

    Returns:
        [N, 4, 4].
    """
    z = F.normalize(target - position, dim=-1)
    x = F.normalize(torch.linalg.cross(-up.expand_as(z), z, dim=-1), dim=-1)
    y = torch.linalg.cross(z, x, dim=-1)
    c2w = torch.eye(4, dtype=position.dtype, device=position.device).repeat(len(position), 1, 1)
    c2w[:, :3, :3] = torch.stack([x, y, z], dim=-1)
    c2w[:, :3, 3] = position
    return c2w


def look_at_centre(c2w: torch.Tensor) -> torch.Tensor:
    """The point closest (least squares) to all optical axes.  c2w: [V, 4, 4] -> [3]."""
    d = c2w[:, :3, 2]
    proj = torch.eye(3, dtype=c2w.dtype, device=c2w.device) - d[:, :, None] * d[:, None, :]
    lhs, rhs = proj.sum(0), (proj @ c2w[:, :3, 3, None]).sum(0)
    return torch.linalg.lstsq(lhs, rhs).solution.squeeze(-1)


def world_up(c2w: torch.Tensor) -> torch.Tensor:
    """The world up direction of cameras without roll: perpendicular to every camera's x axis.

    It spans the near-null space of Σ xxᵀ over the cameras' x axes; within it we take the
    direction closest to the cameras' mean up vector (−y), which also fixes its sign.

    Args:
        c2w: [V, 4, 4] OpenCV poses.

    Returns:
        [3] unit vector.
    """
    x, mean_up = c2w[:, :3, 0], -c2w[:, :3, 1].mean(0)
    evals, evecs = torch.linalg.eigh(x.T @ x)
    null = evecs[:, evals <= evals[0] + 1e-3 * evals.sum()]
    up = null @ (null.T @ mean_up)
    return F.normalize(up if up.norm() > 1e-6 else mean_up, dim=0)


def turntable(c2w: torch.Tensor, num_frames: int) -> torch.Tensor:
    """A full orbit around the cameras' common look-at point (objects).

    Radius and elevation are the means of the given cameras; the orbit's axis is their world up
    (:func:`world_up`); it starts at the first camera's azimuth.

    Args:
        c2w: [V, 4, 4] OpenCV poses (the input views).
        num_frames: frames of the orbit.

    Returns:
        [num_frames, 4, 4].
    """
    c2w = c2w.double()
    centre, up = look_at_centre(c2w), world_up(c2w)
    offsets = c2w[:, :3, 3] - centre
    radius = offsets.norm(dim=-1).mean()
    elevation = torch.asin((F.normalize(offsets, dim=-1) @ up).clamp(-1, 1)).mean()
    e1 = offsets[0] - (offsets[0] @ up) * up
    e1 = F.normalize(e1 if e1.norm() > 1e-6 else torch.linalg.cross(up, torch.roll(up, 1), dim=0), dim=0)
    e2 = torch.linalg.cross(up, e1, dim=0)
    theta = torch.arange(num_frames, dtype=c2w.dtype) * (2 * math.pi / num_frames)
    ring = torch.cos(theta)[:, None] * e1 + torch.sin(theta)[:, None] * e2
    position = centre + radius * (torch.cos(elevation) * ring + torch.sin(elevation) * up)
    return look_at(position, centre, up).float()


def project_to_rotation(m: torch.Tensor) -> torch.Tensor:
    """The nearest rotation matrix (SVD).  m: [..., 3, 3] -> [..., 3, 3]."""
    u, _, vh = torch.linalg.svd(m)
    fix = torch.ones(m.shape[:-1], dtype=m.dtype, device=m.device)
    fix[..., -1] = torch.sign(torch.linalg.det(u @ vh))
    return u @ torch.diag_embed(fix) @ vh


def interpolate_path(c2w: torch.Tensor, num_frames: int) -> torch.Tensor:
    """A camera path through the given poses in order (scenes): centres linearly interpolated,
    rotations interpolated linearly and projected back onto rotations.

    Args:
        c2w: [V, 4, 4] OpenCV poses, V >= 1.
        num_frames: frames of the path (the first is ``c2w[0]``, the last ``c2w[-1]``).

    Returns:
        [num_frames, 4, 4].
    """
    c2w = c2w.double()
    if len(c2w) == 1:
        return c2w.float().repeat(num_frames, 1, 1)
    s = torch.linspace(0, len(c2w) - 1, num_frames, dtype=c2w.dtype)
    lo = s.floor().long().clamp(max=len(c2w) - 2)
    w = (s - lo)[:, None, None]
    blend = (1 - w) * c2w[lo] + w * c2w[lo + 1]
    blend[:, :3, :3] = project_to_rotation(blend[:, :3, :3])
    return blend.float()
