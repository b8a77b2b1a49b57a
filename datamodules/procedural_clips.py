"""The embedded default video dataset: procedurally generated clips of bouncing, colour-cycling shapes.

Each clip has a plain background, one or two shapes (disc, square, diamond) moving at constant
velocity and bouncing off the borders, whose hue cycles at its own rate, and in half the clips a
static occluder bar that the shapes pass behind. Continuing such a clip needs memory: velocity and
hue rate are visible only across frames, and a hidden shape must reappear where it should.
Clips are rendered with soft (anti-aliased) edges and encoded as H.264 mp4, so they go through the
same decoding path as real videos. The label ``cls`` is the first shape's kind (for class conditioning).
"""

from __future__ import annotations

import colorsys
import json

import numpy as np

from lact_app.media import encode_mp4

SHAPES = ("disc", "square", "diamond")
FPS = 8


def _shape_mask(kind: str, ys: np.ndarray, xs: np.ndarray, *, centre: tuple[float, float], r: float) -> np.ndarray:
    """Soft coverage in [0, 1] of a shape of radius r centred at ``centre`` = (cy, cx)."""
    cy, cx = centre
    dy, dx = np.abs(ys - cy), np.abs(xs - cx)
    dist = {"disc": np.hypot(dy, dx), "square": np.maximum(dy, dx), "diamond": (dy + dx) / 1.4}[kind]
    return np.clip(r - dist + 0.5, 0.0, 1.0)


def _hue_rgb(hue: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(hue % 1.0, 0.85, 1.0))


def _bounce(pos: float, vel: float, lo: float, hi: float) -> tuple[float, float]:
    """One step of motion in [lo, hi] with reflection at the walls."""
    pos += vel
    if pos < lo:
        pos, vel = 2 * lo - pos, -vel
    elif pos > hi:
        pos, vel = 2 * hi - pos, -vel
    return pos, vel


def _random_object(rng: np.random.Generator, size: int) -> dict:
    r = rng.uniform(0.12, 0.2) * size
    speed, angle = rng.uniform(0.04, 0.08) * size, rng.uniform(0, 2 * np.pi)
    return {"kind": SHAPES[rng.integers(len(SHAPES))], "r": r,
            "y": rng.uniform(r, size - 1 - r), "x": rng.uniform(r, size - 1 - r),
            "vy": speed * np.sin(angle), "vx": speed * np.cos(angle),
            "hue": rng.uniform(), "dhue": rng.choice([-1, 1]) * rng.uniform(0.02, 0.06)}


def render_clip(rng: np.random.Generator, num_frames: int = 32, size: int = 32) -> tuple[np.ndarray, int]:
    """One clip.  -> (uint8 frames [T, size, size, 3], label = the first shape's kind index)."""
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
    background = rng.uniform(0.0, 0.3, size=3)
    objects = [_random_object(rng, size) for _ in range(rng.integers(1, 3))]
    bar = None
    if rng.uniform() < 0.5:
        left = rng.integers(size // 4, size // 2)
        bar = (left, left + rng.integers(size // 8, size // 4), rng.uniform(0.4, 0.6))
    frames = np.empty((num_frames, size, size, 3), dtype=np.uint8)
    for t in range(num_frames):
        img = np.broadcast_to(background, (size, size, 3)).copy()
        for obj in objects:
            mask = _shape_mask(obj["kind"], ys, xs, centre=(obj["y"], obj["x"]), r=obj["r"])[..., None]
            img = img * (1 - mask) + _hue_rgb(obj["hue"] + t * obj["dhue"]) * mask
            obj["y"], obj["vy"] = _bounce(obj["y"], obj["vy"], obj["r"], size - 1 - obj["r"])
            obj["x"], obj["vx"] = _bounce(obj["x"], obj["vx"], obj["r"], size - 1 - obj["r"])
        if bar is not None:
            img[:, bar[0]:bar[1]] = bar[2]
        frames[t] = np.round(img * 255).astype(np.uint8)
    return frames, SHAPES.index(objects[0]["kind"])


def procedural_samples(count: int, seed: int, num_frames: int = 32, size: int = 32):
    """``count`` webdataset samples ``{"__key__", "mp4", "cls", "json"}``, deterministic in ``seed``."""
    rng = np.random.default_rng(seed)
    for i in range(count):
        frames, label = render_clip(rng, num_frames, size)
        meta = {"frames": num_frames, "fps": FPS, "width": size, "height": size, "source": "procedural"}
        yield {"__key__": f"clip{seed:02d}_{i:05d}", "mp4": encode_mp4(frames, FPS, crf=12),
               "cls": str(label), "json": json.dumps(meta)}
