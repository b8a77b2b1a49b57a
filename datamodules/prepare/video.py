"""``python -m datamodules.prepare video SRC... --out DIR [--split NAME]``: video files → mp4 shards.

Every file is probed and decoded. Files already in H.264 yuv420p mp4, without rotation metadata,
within ``--max-size`` and ``--max-fps``, are stored as they are; everything else is re-encoded to
H.264 yuv420p mp4 with the rotation applied (a portrait phone clip stays portrait; re-encoding with
PyAV alone would silently drop the rotation), scaled down so its longer side is at most
``--max-size`` (even sides) and with frames dropped to at most ``--max-fps``; audio is dropped. The
written bytes are then decoded again with the training decoder as validation. Undecodable files are
skipped and counted. Each sample: ``{"mp4": bytes, "json": {source, frames, fps, width, height,
reencoded}}``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from datamodules.prepare.writer import ShardSink
from datamodules.video_io import VideoBytes, iter_frames_pyav, probe
from lact_app.media import encode_mp4

HELP = "video files (mp4, mkv, mov, webm, avi) → H.264 yuv420p mp4 shards"
SUFFIXES = (".mp4", ".mkv", ".mov", ".webm", ".avi", ".m4v")

#: Relative frame-rate slack (29.97 or 30.02 fps stays at 30 fps).
FPS_TOLERANCE = 0.01


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--max-size", type=int, default=512, help="longest frame side after re-encoding")
    parser.add_argument("--max-fps", type=float, default=30.0, help="highest frame rate after re-encoding")
    parser.add_argument("--crf", type=int, default=18, help="x264 constant rate factor of re-encoded videos")
    parser.add_argument("--min-frames", type=int, default=1, help="skip videos with fewer frames")
    parser.add_argument("--maxcount", type=int, default=256, help="most videos per shard")


def collect_files(sources: list[str]) -> list[Path]:
    """Video files among ``sources`` (files, or folders searched recursively), sorted per source."""
    files = []
    for src in map(Path, sources):
        if src.is_dir():
            files += sorted(p for p in src.rglob("*") if p.suffix.lower() in SUFFIXES)
        else:
            files.append(src)
    return files


def sample_key(path: Path) -> str:
    """A webdataset-safe unique key (no dots): the file stem plus a hash of the full path."""
    stem = re.sub(r"[^A-Za-z0-9_-]", "_", path.stem)[:48]
    return f"{stem}_{hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:8]}"


def needs_reencode(info: dict, max_size: int, max_fps: float) -> bool:
    """Whether a file must be re-encoded to be a safe, bounded H.264 yuv420p mp4."""
    return (
        info["codec"] != "h264" or info["pix_fmt"] != "yuv420p" or "mp4" not in info["format"]
        or info["rotation"] % 360 != 0 or max(info["width"], info["height"]) > max_size
        or info["fps"] > max_fps * (1 + FPS_TOLERANCE) or info["fps"] <= 0
    )


def target_size(width: int, height: int, max_size: int) -> tuple[int, int]:
    """(W, H) scaled so the longer side is at most ``max_size``, rounded down to even numbers."""
    scale = min(1.0, max_size / max(width, height))
    return max(2, int(width * scale) // 2 * 2), max(2, int(height * scale) // 2 * 2)


def reencoded_frames(path: Path, stride: int, max_size: int) -> Iterator[np.ndarray]:
    """Rotated, resized frames of ``path``, every ``stride``-th one."""
    for i, frame in enumerate(iter_frames_pyav(str(path))):
        if i % stride:
            continue
        size = target_size(frame.shape[1], frame.shape[0], max_size)
        if size != (frame.shape[1], frame.shape[0]):
            frame = np.asarray(Image.fromarray(frame).resize(size, Image.BICUBIC))
        yield frame


def prepare_file(path: Path, args: argparse.Namespace) -> dict:
    """One video file → a validated sample (raises when the file cannot be decoded)."""
    data = path.read_bytes()
    info = probe(data)
    reencode = needs_reencode(info, args.max_size, args.max_fps)
    fps = info["fps"] if info["fps"] > 0 else args.max_fps
    if reencode:
        stride = max(1, math.ceil(fps / (args.max_fps * (1 + FPS_TOLERANCE))))
        fps = fps / stride
        data = encode_mp4(reencoded_frames(path, stride, args.max_size), fps, crf=args.crf)
    reader = VideoBytes(data)
    frames = len(reader)
    last = reader.get([0, frames - 1])
    meta = {"source": str(path), "frames": frames, "fps": fps, "width": int(last.shape[2]),
            "height": int(last.shape[1]), "reencoded": reencode}
    return {"__key__": sample_key(path), "mp4": data, "json": json.dumps(meta)}


def make_validator(min_frames: int):
    def validate(sample: dict) -> str | None:
        frames = json.loads(sample["json"])["frames"]
        return None if frames >= min_frames else f"fewer than {min_frames} frames"
    return validate


def run(args: argparse.Namespace) -> int:
    files = collect_files(args.src)
    if not files:
        print(f"no video files ({', '.join(SUFFIXES)}) under {args.src}")
        return 1
    with ShardSink(args.out, args.split, maxcount=args.maxcount, validate=make_validator(args.min_frames)) as sink:
        for path in files:
            try:
                sample = prepare_file(path, args)
            except Exception as exn:  # noqa: BLE001 - one bad file must not stop the others
                sink.skip(str(path), f"undecodable ({type(exn).__name__})")
                continue
            sink.write(sample)
    return 0 if sink.written else 1
