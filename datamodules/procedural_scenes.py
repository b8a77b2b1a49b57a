"""Procedurally rendered posed scenes: the embedded default dataset of the NVS task.

Each scene holds one to three shaded primitives (spheres, boxes, capped cylinders) with random
sizes, poses, two-tone stripe textures and colours near the origin, lit by a random directional
light over a white background (like the GSO renders of LaCT). Cameras sit on a sphere around the
origin (world z up, elevation 0°–60°, random azimuth) looking at the centre, OpenCV convention,
50° field of view. Rendering is exact ray casting, vectorised over every pixel of every view
(numpy), with 2×2 supersampling for anti-aliased edges.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

#: Primitive kinds.
KINDS = ("sphere", "box", "cylinder")
FOV_DEG = 50.0
BACKGROUND = 1.0
SUPERSAMPLE = 2


@dataclass(frozen=True)
class Primitive:
    """One object: ``kind`` with half-extents ``size`` in its local frame ``rotation`` (columns =
    local axes in world coordinates) at ``centre``, coloured ``colours[0]``/``colours[1]`` in stripes
    of ``stripes`` per unit along its local ``stripe_axis``."""

    kind: str
    centre: np.ndarray
    size: np.ndarray
    rotation: np.ndarray
    colours: np.ndarray
    stripes: float
    stripe_axis: int


@dataclass(frozen=True)
class Scene:
    primitives: tuple[Primitive, ...]
    light: np.ndarray  # unit vector towards the light


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    """A uniformly random 3×3 rotation (QR of a Gaussian matrix, sign-fixed)."""
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


def random_scene(rng: np.random.Generator) -> Scene:
    """1–3 primitives inside a ball of radius ≈ 1 around the origin."""
    primitives = []
    for _ in range(rng.integers(1, 4)):
        kind = KINDS[rng.integers(len(KINDS))]
        size = rng.uniform(0.25, 0.55, size=3)
        if kind == "sphere":
            size[:] = size[0]
        primitives.append(Primitive(
            kind=kind, centre=rng.uniform(-0.45, 0.45, size=3), size=size, rotation=random_rotation(rng),
            colours=rng.uniform(0.05, 0.95, size=(2, 3)), stripes=float(rng.choice([0.0, 2.0, 3.0, 5.0])),
            stripe_axis=int(rng.integers(3)),
        ))  # fmt: skip
    light = rng.normal(size=3)
    light[2] = abs(light[2]) + 0.5
    return Scene(tuple(primitives), light / np.linalg.norm(light))


def orbit_cameras(rng: np.random.Generator, num_views: int, size: int, radius: float = 2.7):
    """Cameras on a sphere looking at the origin (world z up), OpenCV axes.

    Returns:
        intrinsics: [V, 4] (fx, fy, cx, cy) for a ``size``×``size`` image; c2w: [V, 4, 4].
    """
    azimuth = rng.uniform(0, 2 * math.pi, num_views)
    elevation = np.radians(rng.uniform(0, 60, num_views))
    pos = radius * np.stack([np.cos(elevation) * np.cos(azimuth), np.cos(elevation) * np.sin(azimuth),
                             np.sin(elevation)], axis=-1)  # fmt: skip
    z = -pos / np.linalg.norm(pos, axis=-1, keepdims=True)
    x = np.cross(np.array([0.0, 0.0, -1.0]), z)
    x /= np.linalg.norm(x, axis=-1, keepdims=True)
    y = np.cross(z, x)
    c2w = np.tile(np.eye(4), (num_views, 1, 1))
    c2w[:, :3, :3] = np.stack([x, y, z], axis=-1)
    c2w[:, :3, 3] = pos
    focal = 0.5 * size / math.tan(math.radians(FOV_DEG) / 2)
    intrinsics = np.tile([focal, focal, size / 2, size / 2], (num_views, 1))
    return intrinsics, c2w


def _dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise dot products of [N, 3] arrays (numpy's reductions over a length-3 axis are slow)."""
    return np.einsum("ij,ij->i", a, b)


def _rows_times(a: np.ndarray, m: np.ndarray) -> np.ndarray:
    """a @ m for a: [N, 3], m: [3, 3] (numpy's matmul is slow on such thin operands)."""
    return a[:, :1] * m[0] + a[:, 1:2] * m[1] + a[:, 2:] * m[2]


def _unit(a: np.ndarray) -> np.ndarray:
    """[N, 3] rows scaled to unit length."""
    return a / np.sqrt(np.maximum(_dot(a, a), 1e-18))[:, None]


def camera_rays(intrinsics: np.ndarray, c2w: np.ndarray, size: int):
    """World rays of every pixel (centres at +0.5).  -> origins, unit directions: [V * size * size, 3] fp32."""
    v, u = np.meshgrid(np.arange(size) + 0.5, np.arange(size) + 0.5, indexing="ij")
    fx, fy, cx, cy = (intrinsics[:, i, None, None] for i in range(4))
    cam = np.stack([(u - cx) / fx, (v - cy) / fy, np.ones_like(u - cx)], axis=-1).astype(np.float32)
    d = (cam.reshape(len(c2w), -1, 3) @ c2w[:, :3, :3].transpose(0, 2, 1).astype(np.float32)).reshape(-1, 3)
    d = _unit(d)
    o = np.repeat(c2w[:, :3, 3].astype(np.float32), size * size, axis=0)
    return o, d


def _hit_box(o: np.ndarray, d: np.ndarray, half: np.ndarray):
    """Slab test against an axis-aligned box in local coordinates -> (t, local normal)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        t1, t2 = (-half - o) / d, (half - o) / d
    near, far = np.minimum(t1, t2), np.maximum(t1, t2)
    t_near, t_far = near.max(-1), far.min(-1)
    t = np.where((t_near <= t_far) & (t_near > 0), t_near, np.inf)
    axis = near.argmax(-1)
    normal = -np.sign(np.take_along_axis(d, axis[..., None], -1)) * np.eye(3)[axis]
    return t, normal


def _hit_sphere(o: np.ndarray, d: np.ndarray, radius: float):
    b = _dot(o, d)
    disc = b * b - (_dot(o, o) - radius**2)
    t = -b - np.sqrt(np.maximum(disc, 0))
    t = np.where((disc >= 0) & (t > 0), t, np.inf)
    return t, o + np.where(np.isfinite(t), t, 0)[..., None] * d


def _hit_cylinder(o: np.ndarray, d: np.ndarray, half: np.ndarray):
    """Capped cylinder around the local z axis (radius half[0], half height half[2])."""
    a = d[..., 0] ** 2 + d[..., 1] ** 2
    b = o[..., 0] * d[..., 0] + o[..., 1] * d[..., 1]
    disc = b * b - a * (o[..., 0] ** 2 + o[..., 1] ** 2 - half[0] ** 2)
    with np.errstate(divide="ignore", invalid="ignore"):
        t_side = (-b - np.sqrt(np.maximum(disc, 0))) / a
    z = o[..., 2] + t_side * d[..., 2]
    t_side = np.where((disc >= 0) & (t_side > 0) & (np.abs(z) <= half[2]), t_side, np.inf)
    with np.errstate(divide="ignore", invalid="ignore"):
        t_cap = (-np.sign(d[..., 2]) * half[2] - o[..., 2]) / d[..., 2]
    p = o + np.where(np.isfinite(t_cap), t_cap, 0)[..., None] * d
    t_cap = np.where((t_cap > 0) & (p[..., 0] ** 2 + p[..., 1] ** 2 <= half[0] ** 2), t_cap, np.inf)
    side_normal = o + np.where(np.isfinite(t_side), t_side, 0)[..., None] * d
    side_normal[..., 2] = 0
    cap_normal = np.zeros_like(o)
    cap_normal[..., 2] = -np.sign(d[..., 2])
    use_cap = t_cap < t_side
    return np.where(use_cap, t_cap, t_side), np.where(use_cap[..., None], cap_normal, side_normal)


def _bounding_hits(prim: Primitive, origins: np.ndarray, dirs: np.ndarray) -> np.ndarray:
    """Indices of the rays that meet the primitive's bounding sphere in front of the camera."""
    radius = float(np.linalg.norm(prim.size)) if prim.kind != "cylinder" else float(np.hypot(prim.size[0], prim.size[2]))
    oc = origins - prim.centre.astype(np.float32)
    b = _dot(oc, dirs)
    disc = b * b - _dot(oc, oc) + radius**2
    return np.nonzero((disc >= 0) & (np.sqrt(np.maximum(disc, 0)) > b))[0]


def _intersect(prim: Primitive, origins: np.ndarray, dirs: np.ndarray):
    """origins, dirs: [N, 3] -> t: [N] (inf on a miss), world normal: [N, 3], local hit point: [N, 3]."""
    rot = prim.rotation.astype(np.float32)
    o = _rows_times(origins - prim.centre.astype(np.float32), rot)  # world -> local: Rᵀ x
    d = _rows_times(dirs, rot)
    if prim.kind == "sphere":
        t, normal = _hit_sphere(o, d, prim.size[0])
    elif prim.kind == "box":
        t, normal = _hit_box(o, d, prim.size)
    else:
        t, normal = _hit_cylinder(o, d, prim.size)
    local = o + np.where(np.isfinite(t), t, 0)[..., None] * d
    normal = _unit(_rows_times(normal, rot.T))
    return t, normal, local


def _shade(prim: Primitive, light: np.ndarray, normal: np.ndarray, local: np.ndarray) -> np.ndarray:
    """Lambert shading with ambient of the two-tone stripe texture.  -> rgb: [N, 3]."""
    lambert = np.clip(normal @ light.astype(np.float32), 0, None)[..., None]
    stripe = (np.floor(local[..., prim.stripe_axis] * prim.stripes) % 2).astype(int) if prim.stripes else 0
    return prim.colours[stripe] * (0.35 + 0.65 * lambert)


def render(scene: Scene, intrinsics: np.ndarray, c2w: np.ndarray, size: int) -> np.ndarray:
    """Renders every view.  intrinsics: [V, 4], c2w: [V, 4, 4] -> uint8 [V, size, size, 3].

    Each primitive is intersected exactly only with the rays that meet its bounding sphere.
    """
    hi = size * SUPERSAMPLE
    origins, dirs = camera_rays(intrinsics * SUPERSAMPLE, c2w, hi)
    depth = np.full(len(dirs), np.inf, dtype=np.float32)
    rgb = np.full(dirs.shape, BACKGROUND, dtype=np.float32)
    for prim in scene.primitives:
        idx = _bounding_hits(prim, origins, dirs)
        t, normal, local = _intersect(prim, origins[idx], dirs[idx])
        closer = t < depth[idx]
        idx, normal, local = idx[closer], normal[closer], local[closer]
        depth[idx] = t[closer]
        rgb[idx] = _shade(prim, scene.light, normal, local)
    rgb = rgb.reshape(len(c2w), size, SUPERSAMPLE, size, SUPERSAMPLE * 3)
    rgb = rgb.sum(2).reshape(len(c2w), size, size, SUPERSAMPLE, 3).sum(3) / SUPERSAMPLE**2
    return np.round(np.clip(rgb, 0, 1) * 255).astype(np.uint8)


def procedural_scene(seed: int, num_views: int, size: int):
    """One deterministic scene.  -> (images uint8 [V, size, size, 3], intrinsics [V, 4], c2w [V, 4, 4])."""
    rng = np.random.default_rng(seed)
    scene = random_scene(rng)
    intrinsics, c2w = orbit_cameras(rng, num_views, size)
    return render(scene, intrinsics, c2w, size), intrinsics, c2w
