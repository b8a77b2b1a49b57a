"""``python -m datamodules.prepare nvs SRC... --out DIR [--split NAME] [--target-views SPEC] [--resize S]``.

Each SRC is a scene folder (or a folder searched recursively for scene folders) holding either

- ``opencv_cameras.json`` (LaCT): a list of ``{w, h, fx, fy, cx, cy, w2c, file_path}``, ``w2c``
  world-to-camera in OpenCV axes; or
- ``transforms.json`` (NeRF / Blender / instant-ngp): ``camera_angle_x`` (and optionally
  ``camera_angle_y``) or ``fl_x``/``fl_y``/``cx``/``cy`` (top level or per frame), and per frame
  ``file_path`` and ``transform_matrix`` (camera-to-world, OpenGL camera axes: converted to OpenCV).

Every scene becomes one sample (see ``datamodules.nvs``); RGBA is composited on white. A view whose
image is missing or unreadable, or whose camera lacks a field (``w2c``, ``fx`` …) or is malformed,
is skipped and counted; the rest of its scene is kept. Every sample is validated as it is written.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import random
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from datamodules.nvs import (
    check_scene,
    cover_resize,
    encode_png,
    encode_scene,
    frame_from_c2w,
    load_rgb,
)
from datamodules.prepare.writer import ShardSink
from lact_app.models.cameras import opengl_to_opencv

log = logging.getLogger(__name__)

HELP = "posed scene folders (opencv_cameras.json or NeRF transforms.json) -> NVS shards"
CAMERA_FILES = ("opencv_cameras.json", "transforms.json")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--target-views", default=None, metavar="SPEC",
                        help="target-only views of every scene: indices and ranges ('0,5,48-63'), "
                             "'every:K' (views 0, K, 2K, ...) or 'random:N' (N views, see --seed)")
    parser.add_argument("--seed", type=int, default=0, help="seed of --target-views random:N")
    parser.add_argument("--resize", type=int, default=None, metavar="S",
                        help="resize views so the shorter side is S pixels (intrinsics follow)")
    parser.add_argument("--maxcount", type=int, default=100, help="scenes per shard")


def find_scenes(sources: list[str]) -> list[Path]:
    """Camera files of the scenes under ``sources`` (a scene folder, a camera file, or a folder of scenes)."""
    found = []
    for src in map(Path, sources):
        if src.is_file():
            found.append(src)
            continue
        direct = [src / name for name in CAMERA_FILES if (src / name).is_file()]
        found += direct[:1] or sorted(p for name in CAMERA_FILES for p in src.rglob(name))
    if not found:
        raise SystemExit(f"no {' or '.join(CAMERA_FILES)} found under {sources}")
    return found


def parse_target_views(spec: str | None, num_views: int, rng: random.Random) -> list[int]:
    """Target-only view indices of a scene with ``num_views`` views (see ``--target-views``)."""
    if not spec:
        return []
    if spec.startswith("every:"):
        return list(range(0, num_views, int(spec.split(":")[1])))
    if spec.startswith("random:"):
        return sorted(rng.sample(range(num_views), min(int(spec.split(":")[1]), num_views)))
    views = set()
    for part in spec.split(","):
        lo, _, hi = part.partition("-")
        views.update(range(int(lo), int(hi or lo) + 1))
    return sorted(v for v in views if v < num_views)


def opencv_frames(path: Path) -> list[dict]:
    """LaCT ``opencv_cameras.json`` -> frames with ``image`` (a path) and the camera fields."""
    frames = json.loads(path.read_text())
    return [{**f, "image": path.parent / f["file_path"]} for f in frames]


def transforms_frames(path: Path) -> list[dict]:
    """NeRF ``transforms.json`` -> frames with ``image``, intrinsics and an OpenCV ``w2c``."""
    meta = json.loads(path.read_text())
    frames = []
    for frame in meta["frames"]:
        image = path.parent / frame["file_path"]
        if not image.suffix:
            image = image.with_suffix(".png")  # Blender synthetic omits the extension
        frames.append({"image": image, "cam": {**meta, **frame}})
    return frames


def nerf_intrinsics(cam: dict, width: int, height: int) -> tuple[float, float, float, float]:
    """(fx, fy, cx, cy) from ``fl_x``/``fl_y``/``cx``/``cy`` or ``camera_angle_x``/``_y``."""
    if "fl_x" in cam:
        fx = float(cam["fl_x"])
    elif "camera_angle_x" in cam:
        fx = 0.5 * width / math.tan(0.5 * float(cam["camera_angle_x"]))
    else:
        raise ValueError("transforms.json gives neither fl_x nor camera_angle_x")
    if "fl_y" in cam:
        fy = float(cam["fl_y"])
    else:
        fy = 0.5 * height / math.tan(0.5 * float(cam["camera_angle_y"])) if "camera_angle_y" in cam else fx
    return fx, fy, float(cam.get("cx", width / 2)), float(cam.get("cy", height / 2))


def pose_matrix(camera: dict, field: str) -> np.ndarray:
    """``camera[field]`` as a float64 [4, 4]; ``ValueError`` when it is not a finite 4×4 matrix."""
    matrix = np.asarray(camera[field], dtype=np.float64)
    if matrix.shape != (4, 4) or not np.isfinite(matrix).all():
        raise ValueError(f"{field} is not a finite 4x4 matrix")
    return matrix


def load_view(frame: dict, resize: int | None) -> tuple[bytes, dict]:
    """One view -> (PNG bytes, cameras.json frame); raises on an unreadable image or camera
    (``KeyError`` for a missing field, ``ValueError``/``TypeError`` for a malformed one)."""
    image = load_rgb(frame["image"].read_bytes())
    if "cam" in frame:  # transforms.json: intrinsics may depend on the image size
        k = nerf_intrinsics(frame["cam"], image.width, image.height)
        c2w = opengl_to_opencv(torch.from_numpy(pose_matrix(frame["cam"], "transform_matrix"))).numpy()
    else:
        if (frame["w"], frame["h"]) != image.size:
            raise ValueError(f"{frame['image']} is {image.size}, the cameras say {(frame['w'], frame['h'])}")
        k = (frame["fx"], frame["fy"], frame["cx"], frame["cy"])
        c2w = np.linalg.inv(pose_matrix(frame, "w2c"))
    if resize:
        scale = resize / min(image.size)
        image, k = cover_resize(image, np.asarray(k), (round(image.height * scale), round(image.width * scale)))
    return encode_png(image), frame_from_c2w(c2w, k, image.width, image.height)


def scene_sample(path: Path, key: str, args: argparse.Namespace, skipped: Counter) -> dict:
    """All readable views of one scene as a sample; unreadable views are counted in ``skipped``."""
    frames = opencv_frames(path) if path.name == CAMERA_FILES[0] else transforms_frames(path)
    images, cameras = [], []
    for frame in frames:
        if not frame["image"].is_file():
            skipped["missing image"] += 1
            continue
        try:
            png, camera = load_view(frame, args.resize)
        except KeyError as exn:  # a camera without w2c, fx, transform_matrix …: only this view is bad
            log.warning("skipping view %s: its camera has no %s", frame["image"], exn)
            skipped["view without camera field"] += 1
            continue
        except (OSError, ValueError, TypeError, np.linalg.LinAlgError) as exn:
            log.warning("skipping view %s: %s", frame["image"], exn)
            skipped["unreadable view"] += 1
            continue
        images.append(png)
        cameras.append(camera)
    targets = parse_target_views(args.target_views, len(images), random.Random(f"{args.seed}/{key}"))
    return encode_scene(key, images, cameras, targets)


def run(args: argparse.Namespace) -> int:
    scenes = find_scenes(args.src)
    keys = Counter()
    skipped_views = Counter()
    with ShardSink(args.out, args.split, maxcount=args.maxcount, validate=check_scene) as sink:
        for path in scenes:
            key = path.parent.name.replace(".", "_") or "scene"
            keys[key] += 1
            key = key if keys[key] == 1 else f"{key}_{keys[key] - 1}"
            try:
                sink.write(scene_sample(path, key, args, skipped_views))
            except (OSError, ValueError, KeyError) as exn:
                sink.skip(key, f"unreadable scene: {exn!r}")
    if skipped_views:
        print("skipped views: " + ", ".join(f"{n} × {r}" for r, n in skipped_views.items()))
    return 0 if sink.written else 1
