"""Media for TensorBoard without extra dependencies: images via ``add_images``, videos as GIFs.

TensorBoard's ``add_video`` silently needs moviepy; instead a video is encoded as an animated GIF
(``lact_app.media.encode_gif``) and written as an image summary, which TensorBoard's image
dashboard plays.
"""

from __future__ import annotations

import logging

import torch
from tensorboard.compat.proto.summary_pb2 import Summary

from lact_app.media import encode_gif

log = logging.getLogger(__name__)


def gif_summary(tag: str, video: torch.Tensor, fps: float = 8.0) -> Summary:
    """A TensorBoard image summary holding an animated GIF of ``video``."""
    data, height, width = encode_gif(video, fps)
    image = Summary.Image(height=height, width=width, colorspace=3, encoded_image_string=data)
    return Summary(value=[Summary.Value(tag=tag, image=image)])


def add_gif(writer, tag: str, video: torch.Tensor, step: int, fps: float = 8.0) -> None:
    """Writes ``video`` as an animated GIF to a ``torch.utils.tensorboard.SummaryWriter``.

    No ``SummaryWriter.add_*`` method takes a ready-made summary (``add_image`` re-encodes to PNG,
    a single frame), so the GIF goes through the writer's public ``file_writer``, as
    ``SummaryWriter.add_hparams`` does. A closed writer has none (Lightning closes its writer when
    ``fit`` ends): the GIF is then skipped with a warning.
    """
    if writer.file_writer is None:
        log.warning("TensorBoard writer is closed: GIF %r at step %d not logged", tag, step)
        return
    writer.file_writer.add_summary(gif_summary(tag, video, fps), step)
