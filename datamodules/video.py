"""`VideoDataModule`: clips of encoded videos from webdataset shards (DESIGN.md §5).

A sample holds one encoded video (``mp4``; ``mkv``/``mov``/``webm``/``avi`` are read too) written by
``python -m datamodules.prepare video``. Videos are decoded from bytes inside the DataLoader workers
(decord, PyAV where decord is missing). Training takes a random clip of ``num_frames`` frames every
``frame_stride`` frames and a random crop; evaluation the first clip and the centre crop. Both resize
the short side to ``image_size`` first (antialiased). Videos too short for a clip are skipped and counted.

With no shards configured, a few hundred procedural clips (:mod:`datamodules.procedural_clips`) are
built once into the cache and used.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from datamodules.base import ShardDataModule
from datamodules.prepare.writer import ShardSink
from datamodules.procedural_clips import procedural_samples
from datamodules.video_io import VideoBytes, resolve_backend

VIDEO_EXTENSIONS = ("mp4", "mkv", "mov", "webm", "avi")

#: (split, clips, seed) of the embedded default dataset.
DEFAULT_SPLITS = (("train", 320, 0), ("val", 32, 1), ("test", 32, 2))
DEFAULT_CLIP_FRAMES, DEFAULT_CLIP_SIZE, DEFAULT_SHARD_SIZE = 32, 32, 64


def cover_resize_crop(video: torch.Tensor, size: tuple[int, int], random_crop: bool) -> torch.Tensor:
    """Resize so the frames cover ``size`` (H, W), then crop to it.  [T, 3, h, w] -> [T, 3, H, W]."""
    h, w = video.shape[-2:]
    scale = max(size[0] / h, size[1] / w)
    rh, rw = max(size[0], round(h * scale)), max(size[1], round(w * scale))
    if (rh, rw) != (h, w):
        video = F.interpolate(video, size=(rh, rw), mode="bilinear", antialias=True, align_corners=False)
    if random_crop:
        top = int(torch.randint(rh - size[0] + 1, ()))
        left = int(torch.randint(rw - size[1] + 1, ()))
    else:
        top, left = (rh - size[0]) // 2, (rw - size[1]) // 2
    return video[..., top:top + size[0], left:left + size[1]].clamp(0, 1)


class VideoDataModule(ShardDataModule):
    """Video clips for autoregressive video diffusion; batches are ``{"video": [B, F, 3, H, W] in [0, 1]}``
    (plus ``"cond"`` with ``cond_key``).

    Args:
        num_frames: frames per clip (a multiple of the model's chunk_frames).
        frame_stride: take every ``frame_stride``-th frame of the video.
        image_size: frame size, an int (square) or [H, W].
        context_frames: frames given as context when ``test`` scores continuation and ``predict``
            continues clips (a multiple of the model's chunk_frames); 0 in predict: unconditional.
        predict_frames: frames ``predict`` generates per clip, context included; None: ``num_frames``.
        cond_key: sample entry holding a condition: ``"cls"`` (integer class label) or ``"npy"``
            (a float embedding saved with numpy); None: unconditional.
        backend: video decoder, ``"auto"`` (decord, else PyAV), ``"decord"`` or ``"pyav"``.
        **kwargs: see ``ShardDataModule`` (shards, batch_size, num_workers, samples_per_epoch, …).
    """

    DEFAULT_NAME = "procedural_video"
    FORMAT_VERSION = 1

    def __init__(
        self,
        num_frames: int = 16,
        frame_stride: int = 1,
        image_size: int | tuple[int, int] = 32,
        context_frames: int = 4,
        predict_frames: int | None = None,
        cond_key: str | None = None,
        backend: str = "auto",
        **kwargs,
    ):
        super().__init__(**kwargs)
        if num_frames < 1 or frame_stride < 1 or not 0 <= context_frames <= num_frames:
            raise ValueError(f"need num_frames, frame_stride >= 1 and 0 <= context_frames <= num_frames, got "
                             f"{num_frames}, {frame_stride}, {context_frames}")
        if cond_key not in (None, "cls", "npy"):
            raise ValueError(f"cond_key must be None, 'cls' or 'npy', got {cond_key!r}")
        self.num_frames, self.frame_stride = num_frames, frame_stride
        self.frame_size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        self.context_frames = context_frames
        self.predict_frames = num_frames if predict_frames is None else predict_frames
        self.cond_key, self.backend = cond_key, resolve_backend(backend)

    def decode_sample(self, sample: dict) -> dict:
        """Evaluation decoding: the first clip, centre crop."""
        return self.decode_clip(sample, train=False)

    def decode_train_sample(self, sample: dict) -> dict:
        """Training decoding: a random clip, random crop."""
        return self.decode_clip(sample, train=True)

    def decoder(self, split: str):
        """Training decodes random clips and crops; evaluation the first clip, centre crop."""
        return self.decode_train_sample if split == "train" else self.decode_sample

    def decode_clip(self, sample: dict, train: bool) -> dict:
        """One clip of a raw sample.  -> ``{"video": [F, 3, H, W] float in [0, 1], ("cond")}``."""
        data = next((sample[ext] for ext in VIDEO_EXTENSIONS if ext in sample), None)
        if data is None:
            raise ValueError(f"sample has no video entry (one of {VIDEO_EXTENSIONS})")
        reader = VideoBytes(data, self.backend)
        span = (self.num_frames - 1) * self.frame_stride + 1
        if len(reader) < span:
            raise ValueError(f"video has {len(reader)} frames, a clip needs {span}")
        start = int(torch.randint(len(reader) - span + 1, ())) if train else 0
        frames = torch.from_numpy(reader.get(range(start, start + span, self.frame_stride)))
        video = frames.permute(0, 3, 1, 2).float().div(255)
        item = {"video": cover_resize_crop(video, self.frame_size, random_crop=train)}
        if self.cond_key is not None:
            item["cond"] = self.decode_cond(sample[self.cond_key])
        return item

    def decode_cond(self, raw: bytes) -> torch.Tensor:
        """A ``cls`` label -> int64 scalar; an ``npy`` embedding -> float32 [cond_dim]."""
        if self.cond_key == "cls":
            return torch.tensor(int(raw), dtype=torch.long)
        return torch.from_numpy(np.load(io.BytesIO(raw))).float().flatten()

    def build_default_dataset(self, root: Path) -> None:
        """Procedural bouncing-shape clips: 320 train, 32 val, 32 test (32 frames of 32×32, mp4)."""
        for split, count, seed in DEFAULT_SPLITS:
            with ShardSink(root, split, maxcount=DEFAULT_SHARD_SIZE) as sink:
                for sample in procedural_samples(count, seed, DEFAULT_CLIP_FRAMES, DEFAULT_CLIP_SIZE):
                    sink.write(sample)
