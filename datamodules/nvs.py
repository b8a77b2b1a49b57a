"""Posed multi-view scenes for novel view synthesis: shard format, view sampling, ``NVSDataModule``.

Shard format (one scene per webdataset sample, written by ``python -m datamodules.prepare nvs``):

- ``cameras.json``: ``{"frames": [{"w", "h", "fx", "fy", "cx", "cy", "w2c"}, ...],
  "target_views": [indices]}`` — the LaCT ``opencv_cameras.json`` fields (``w2c`` world-to-camera,
  OpenCV axes) for every view; ``target_views`` are target-only views (never used in training;
  evaluation draws its targets from them and its inputs from the other views).
- ``0000.png``, ``0001.png``, …: view ``i``'s RGB image (RGBA is composited on white).
"""

from __future__ import annotations

import io
import json
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from datamodules.base import ShardDataModule
from datamodules.prepare.writer import ShardSink
from datamodules.procedural_scenes import procedural_scene
from lact_app.models.cameras import interpolate_path, normalize_poses, turntable

CAMERAS_KEY = "cameras.json"
FRAME_FIELDS = ("w", "h", "fx", "fy", "cx", "cy", "w2c")
CAMERA_PATHS = ("turntable", "interpolate")
#: Embedded default: (split, scenes per training scene (at least 2), seed offset).
DEFAULT_SPLITS = (("train", 1, 0), ("val", 1 / 32, 1_000_000), ("test", 1 / 8, 2_000_000))
DEFAULT_VIEWS, DEFAULT_SIZE = 12, 64


def image_key(index: int) -> str:
    return f"{index:04d}.png"


def encode_png(image: np.ndarray | Image.Image) -> bytes:
    """uint8 [H, W, 3] or a PIL image -> PNG bytes."""
    buf = io.BytesIO()
    (image if isinstance(image, Image.Image) else Image.fromarray(image)).save(buf, format="PNG")
    return buf.getvalue()


def encode_scene(key: str, images: Sequence[bytes], frames: Sequence[dict], target_views=()) -> dict:
    """A webdataset sample of one scene: PNG bytes per view plus ``cameras.json`` (see module docstring)."""
    frames = [{f: frame[f] for f in FRAME_FIELDS} for frame in frames]
    meta = {"frames": frames, "target_views": sorted(int(i) for i in target_views)}
    sample = {"__key__": key.replace(".", "_"), CAMERAS_KEY: json.dumps(meta).encode()}
    sample.update({image_key(i): data for i, data in enumerate(images)})
    return sample


def frame_from_c2w(c2w: np.ndarray, intrinsics: Sequence[float], width: int, height: int) -> dict:
    """A cameras.json frame from an OpenCV c2w [4, 4] and (fx, fy, cx, cy)."""
    fx, fy, cx, cy = (float(v) for v in intrinsics)
    return {"w": width, "h": height, "fx": fx, "fy": fy, "cx": cx, "cy": cy,
            "w2c": np.linalg.inv(c2w).tolist()}


def check_scene(sample: dict) -> str | None:
    """None for a well-formed scene sample, else the reason it is not (used when writing and reading)."""
    try:
        meta = json.loads(sample[CAMERAS_KEY])
        frames = meta["frames"]
    except (KeyError, ValueError, TypeError) as exn:
        return f"bad {CAMERAS_KEY}: {exn!r}"
    if not frames:
        return "no views"
    for i, frame in enumerate(frames):
        missing = [f for f in FRAME_FIELDS if f not in frame]
        if missing:
            return f"view {i} lacks {missing}"
        w2c = np.asarray(frame["w2c"], dtype=np.float64)
        if w2c.shape != (4, 4) or not np.isfinite(w2c).all():
            return f"view {i}: w2c is not a finite 4x4 matrix"
        if np.abs(w2c[:3, :3] @ w2c[:3, :3].T - np.eye(3)).max() > 1e-3:
            return f"view {i}: w2c rotation is not orthonormal"
        if image_key(i) not in sample:
            return f"view {i}: no image {image_key(i)}"
    if any(not 0 <= t < len(frames) for t in meta.get("target_views", [])):
        return "target_views out of range"
    return None


def load_rgb(data: bytes) -> Image.Image:
    """Image bytes -> RGB PIL image, transparency composited on white."""
    image = Image.open(io.BytesIO(data))
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        white = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(white, image.convert("RGBA"))
    return image.convert("RGB")


def cover_resize(image: Image.Image, intrinsics: np.ndarray, size: tuple[int, int]):
    """Resize to cover ``size`` = (H, W) keeping the aspect ratio, then centre-crop; intrinsics follow.

    Returns:
        the image and its (fx, fy, cx, cy).
    """
    height, width = size
    scale = max(height / image.height, width / image.width)
    new_w, new_h = max(width, round(image.width * scale)), max(height, round(image.height * scale))
    sx, sy = new_w / image.width, new_h / image.height  # exact per-axis factors after rounding
    if (new_w, new_h) != image.size:
        image = image.resize((new_w, new_h), Image.LANCZOS)
    left, top = (new_w - width) // 2, (new_h - height) // 2
    fx, fy, cx, cy = intrinsics
    out = np.array([fx * sx, fy * sy, cx * sx - left, cy * sy - top])
    return image.crop((left, top, left + width, top + height)), out


class SceneDecoder:
    """Decodes one scene sample into input and target views for one split (picklable for workers).

    Training draws disjoint random input and target views among the views that are not
    target-only; evaluation splits each scene deterministically (seeded by its key), drawing
    targets from the target-only views when the scene has them; ``predict`` adds a camera path.

    Args:
        split: ``"train"``, ``"val"``, ``"test"`` or ``"predict"``.
        image_size: (H, W).
        num_inputs, num_targets: views per sample.
        normalize: scene-level pose normalisation of the chosen views.
        seed: seed of the evaluation splits.
        camera_path: ``"turntable"`` or ``"interpolate"`` (predict).
        path_frames: frames of the camera path (predict).
    """

    def __init__(self, split: str, image_size: tuple[int, int], *, num_inputs: int, num_targets: int,
                 normalize: bool, seed: int, camera_path: str, path_frames: int):
        self.split, self.image_size = split, image_size
        self.num_inputs, self.num_targets = num_inputs, num_targets
        self.normalize, self.seed = normalize, seed
        self.camera_path, self.path_frames = camera_path, path_frames

    def choose_views(self, key: str, num_views: int, target_only: Sequence[int]) -> tuple[list[int], list[int]]:
        """(input view indices, target view indices) of one scene."""
        rest = [i for i in range(num_views) if i not in set(target_only)]
        n_in, n_t = self.num_inputs, self.num_targets
        if self.split == "train":
            if n_in + n_t > len(rest):
                raise ValueError(f"scene {key} has {len(rest)} trainable views, {n_in + n_t} needed")
            chosen = [rest[i] for i in torch.randperm(len(rest))[: n_in + n_t].tolist()]
            return chosen[:n_in], chosen[n_in:]
        rng = random.Random(f"{self.seed}/{key}")
        if target_only:
            if n_in > len(rest) or n_t > len(target_only):
                raise ValueError(f"scene {key}: {len(rest)} input / {len(target_only)} target-only views "
                                 f"for {n_in} inputs and {n_t} targets")
            return sorted(rng.sample(rest, n_in)), sorted(rng.sample(list(target_only), n_t))
        if n_in + n_t > num_views:
            raise ValueError(f"scene {key} has {num_views} views, {n_in + n_t} needed")
        chosen = rng.sample(range(num_views), n_in + n_t)
        return sorted(chosen[:n_in]), sorted(chosen[n_in:])

    def load_views(self, sample: dict, frames: list[dict], indices: list[int]):
        """-> images [V, 3, H, W] in [0, 1], intrinsics [V, 4], c2w [V, 4, 4] (float64)."""
        images, intrinsics, c2w = [], [], []
        for i in indices:
            frame = frames[i]
            image = load_rgb(sample[image_key(i)])
            if image.size != (frame["w"], frame["h"]):
                raise ValueError(f"view {i} is {image.size}, cameras.json says {(frame['w'], frame['h'])}")
            image, k = cover_resize(image, np.array([frame[f] for f in ("fx", "fy", "cx", "cy")]), self.image_size)
            images.append(torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1))
            intrinsics.append(k)
            c2w.append(np.linalg.inv(np.asarray(frame["w2c"], dtype=np.float64)))
        images = torch.stack(images).float() / 255
        return images, torch.from_numpy(np.stack(intrinsics)), torch.from_numpy(np.stack(c2w))

    def __call__(self, sample: dict) -> dict | None:
        reason = check_scene(sample)
        if reason is not None:
            raise ValueError(reason)
        meta = json.loads(sample[CAMERAS_KEY])
        inputs, targets = self.choose_views(sample["__key__"], len(meta["frames"]), meta.get("target_views", []))
        images, intrinsics, c2w = self.load_views(sample, meta["frames"], inputs + targets)
        if self.normalize:
            c2w = normalize_poses(c2w)
        n = len(inputs)
        item = {"key": sample["__key__"],
                "input_images": images[:n], "input_intrinsics": intrinsics[:n].float(), "input_c2w": c2w[:n].float(),
                "target_images": images[n:], "target_intrinsics": intrinsics[n:].float(), "target_c2w": c2w[n:].float()}
        if self.split == "predict":
            item.update(self.camera_path_of(item["input_intrinsics"], c2w[:n]))
        return item

    def camera_path_of(self, intrinsics: torch.Tensor, c2w: torch.Tensor) -> dict:
        """{"path_intrinsics": [T, 4], "path_c2w": [T, 4, 4]}: the first input's intrinsics on the path."""
        make = turntable if self.camera_path == "turntable" else interpolate_path
        path = make(c2w, self.path_frames)
        return {"path_intrinsics": intrinsics[:1].expand(len(path), 4).clone(), "path_c2w": path}


class NVSDataModule(ShardDataModule):
    """Posed multi-view scenes (shards written by ``python -m datamodules.prepare nvs``).

    Without ``train_shards`` an embedded default is built once into ``cache_dir``: procedurally
    rendered scenes of shaded primitives (``datamodules.procedural_scenes``), 12 views of 64×64
    each, ``default_scenes`` for training, 1/32 as many for validation and 1/8 held back for test.

    Args:
        train_shards: training shards (see ``ShardDataModule``); None: the embedded default.
        val_shards: validation shards.
        test_shards: test shards.
        image_size: output size, an int (square) or [H, W]; views are cover-resized and
            centre-cropped, intrinsics updated accordingly.
        num_input_views: input views per training sample.
        num_target_views: target views per training sample (disjoint from the inputs).
        eval_num_input_views: input views in val/test/predict (None: ``num_input_views``).
        eval_num_target_views: target views in val/test/predict (None: ``num_target_views``).
        normalize_poses: scene-level pose normalisation (LACT_SPEC.md §2.3; for scenes, not objects).
        camera_path: predict's camera path: ``"turntable"`` (objects: an orbit around the inputs'
            look-at point) or ``"interpolate"`` (scenes: through the input poses in order).
        path_frames: frames of the predicted camera path.
        default_scenes: training scenes of the embedded default dataset.
        **kwargs: see ``ShardDataModule`` (batch_size, num_workers, samples_per_epoch, cache_dir …).
    """

    FORMAT_VERSION = 1

    def __init__(
        self,
        train_shards: Any | None = None,
        val_shards: Any | None = None,
        test_shards: Any | None = None,
        image_size: int | tuple[int, int] = 64,
        num_input_views: int = 4,
        num_target_views: int = 2,
        eval_num_input_views: int | None = None,
        eval_num_target_views: int | None = None,
        normalize_poses: bool = False,
        camera_path: str = "turntable",
        path_frames: int = 48,
        default_scenes: int = 256,
        **kwargs,
    ):
        super().__init__(train_shards=train_shards, val_shards=val_shards, test_shards=test_shards, **kwargs)
        if camera_path not in CAMERA_PATHS:
            raise ValueError(f"camera_path must be one of {CAMERA_PATHS}, got {camera_path!r}")
        if min(num_input_views, num_target_views) < 1:
            raise ValueError("num_input_views and num_target_views must be >= 1")
        self.image_size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        self.train_views = (num_input_views, num_target_views)
        self.eval_views = (eval_num_input_views or num_input_views, eval_num_target_views or num_target_views)
        self.normalize_poses, self.camera_path, self.path_frames = normalize_poses, camera_path, path_frames
        self.default_scenes = default_scenes
        self.DEFAULT_NAME = f"nvs_procedural_{default_scenes}"

    def decoder(self, split: str) -> SceneDecoder:
        """Training draws random disjoint input/target views; evaluation a deterministic split."""
        num_inputs, num_targets = self.train_views if split == "train" else self.eval_views
        return SceneDecoder(split, self.image_size, num_inputs=num_inputs, num_targets=num_targets,
                            normalize=self.normalize_poses, seed=self.seed, camera_path=self.camera_path,
                            path_frames=self.path_frames)  # fmt: skip

    def build_default_dataset(self, root: Path) -> None:
        """Renders the procedural scenes into ``root/{train,val,test}-*.tar``."""
        for split, fraction, offset in DEFAULT_SPLITS:
            with ShardSink(root, split, maxcount=64, validate=check_scene) as sink:
                for i in range(max(2, round(fraction * self.default_scenes))):
                    sink.write(procedural_sample(f"{split}{i:06d}", offset + i))


def procedural_sample(key: str, seed: int) -> dict:
    """One embedded-default scene as a shard sample."""
    images, intrinsics, c2w = procedural_scene(seed, DEFAULT_VIEWS, DEFAULT_SIZE)
    frames = [frame_from_c2w(m, k, DEFAULT_SIZE, DEFAULT_SIZE) for m, k in zip(c2w, intrinsics)]
    return encode_scene(key, [encode_png(im) for im in images], frames)
