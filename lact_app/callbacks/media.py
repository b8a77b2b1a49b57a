"""Media for TensorBoard without extra dependencies: images via ``add_images``, videos as GIFs.

TensorBoard's ``add_video`` silently needs moviepy; instead a video is encoded as an animated GIF
with PIL and written as an image summary, which TensorBoard's image dashboard plays.
"""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image
from tensorboard.compat.proto.summary_pb2 import Summary


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


def gif_summary(tag: str, video: torch.Tensor, fps: float = 8.0) -> Summary:
    """A TensorBoard image summary holding an animated GIF of ``video``."""
    data, height, width = encode_gif(video, fps)
    image = Summary.Image(height=height, width=width, colorspace=3, encoded_image_string=data)
    return Summary(value=[Summary.Value(tag=tag, image=image)])


def add_gif(writer, tag: str, video: torch.Tensor, step: int, fps: float = 8.0) -> None:
    """Writes ``video`` as an animated GIF to a ``torch.utils.tensorboard.SummaryWriter``."""
    writer._get_file_writer().add_summary(gif_summary(tag, video, fps), step)
