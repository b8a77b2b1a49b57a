"""Video encoding from tensors and arrays: animated GIF (PIL) and H.264 yuv420p mp4 (PyAV).

The one place that encodes videos: tasks write predictions with it, the TensorBoard media helpers
(``lact_app.callbacks.media``) log GIFs with it, and the datamodules build and re-encode mp4 shards
with it (decoding stays in ``datamodules.video_io``). mp4 is always yuv420p: decord's random access
returns garbage frames on yuv444 H.264.
"""

from __future__ import annotations

import io
from collections.abc import Iterable
from fractions import Fraction

import av
import numpy as np
import torch
from PIL import Image


def to_uint8_frames(video: torch.Tensor) -> np.ndarray:
    """``video``: [T, C, H, W] or [N, T, C, H, W] in [0, 1] → uint8 [T, H, N*W, C] (clips side by side)."""
    if video.dim() == 4:
        video = video.unsqueeze(0)
    video = video.detach().float().clamp(0, 1).mul(255).round().to(torch.uint8).cpu()
    n, t, c, h, w = video.shape
    tiled = video.permute(1, 3, 0, 4, 2).reshape(t, h, n * w, c)
    return tiled.expand(-1, -1, -1, 3).numpy() if c == 1 else tiled.numpy()


def encode_gif(video: torch.Tensor, fps: float = 8.0) -> tuple[bytes, int, int]:
    """Encodes ``video`` ([T, C, H, W] or [N, T, C, H, W] in [0, 1]) as a looping GIF; returns (bytes, H, W)."""
    frames = [Image.fromarray(f) for f in to_uint8_frames(video)]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:],
                   duration=max(1, round(1000 / fps)), loop=0)
    return buf.getvalue(), frames[0].height, frames[0].width


def encode_mp4(frames: Iterable[np.ndarray], fps: float, crf: int = 18, preset: str = "medium") -> bytes:
    """Encodes uint8 [H, W, 3] frames (even H and W) as H.264 yuv420p mp4.  -> the file's bytes."""
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as container:
        stream = None
        for frame in frames:
            if stream is None:
                stream = _video_stream(container, frame.shape[1], frame.shape[0], fps=fps, crf=crf, preset=preset)
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")):
                container.mux(packet)
        if stream is None:
            raise ValueError("no frames to encode")
        for packet in stream.encode():
            container.mux(packet)
    return buf.getvalue()


def _video_stream(container, width: int, height: int, *, fps: float, crf: int, preset: str):
    if width % 2 or height % 2:
        raise ValueError(f"yuv420p needs even frame sides, got {width}×{height}")
    stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
    stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
    stream.options = {"crf": str(crf), "preset": preset}
    return stream
