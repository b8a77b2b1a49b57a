"""Video decoding from bytes (DESIGN.md §5); encoding is ``lact_app.media.encode_mp4``.

Decoding uses decord (``decord.VideoReader(io.BytesIO(data))``, created inside the worker that reads
the sample) and falls back to PyAV where decord is not installed (it has no wheels for aarch64).
decord applies a stream's rotation metadata; PyAV reports the stream unrotated, so the PyAV path
rotates frames itself, and both return what a player shows.
"""

from __future__ import annotations

import io
from collections.abc import Iterator, Sequence

import av
import numpy as np

try:
    import decord
except ImportError:  # no wheel for this platform: PyAV decodes instead
    decord = None

BACKENDS = ("auto", "decord", "pyav")


def resolve_backend(backend: str = "auto") -> str:
    """``"decord"`` when available (or asked for), else ``"pyav"``."""
    if backend not in BACKENDS:
        raise ValueError(f"video backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "decord" and decord is None:
        raise ValueError("video backend 'decord' is not installed; use 'pyav' or 'auto'")
    if backend == "auto":
        return "decord" if decord is not None else "pyav"
    return backend


def rotate_frame(frame: np.ndarray, rotation: float) -> np.ndarray:
    """Applies a display rotation (PyAV's ``frame.rotation``, degrees counter-clockwise) to [H, W, 3]."""
    turns = round(rotation / 90) % 4
    return np.ascontiguousarray(np.rot90(frame, k=turns)) if turns else frame


def iter_frames_pyav(source, rotate: bool = True) -> Iterator[np.ndarray]:
    """Decodes every frame of the first video stream with PyAV.  -> uint8 [H, W, 3] frames, rotated."""
    with av.open(source) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for frame in container.decode(stream):
            rgb = frame.to_ndarray(format="rgb24")
            yield rotate_frame(rgb, frame.rotation) if rotate else rgb


class VideoBytes:
    """Random access to the frames of an encoded video held in memory.

    Args:
        data: the encoded file (mp4, mkv, mov, webm …).
        backend: ``"auto"`` (decord if installed, else PyAV), ``"decord"`` or ``"pyav"``.
    """

    def __init__(self, data: bytes, backend: str = "auto"):
        self.backend, self.data = resolve_backend(backend), data
        self._reader, self._frames = None, None
        if self.backend == "decord":
            self._reader = decord.VideoReader(io.BytesIO(data), num_threads=1)
        else:
            self._decode_all()

    def _decode_all(self) -> None:
        """PyAV has no cheap random access into a byte stream: decode once, keep the frames."""
        self._reader, self._frames = None, list(iter_frames_pyav(io.BytesIO(self.data)))
        if not self._frames:
            raise ValueError("video has no decodable frames")

    def __len__(self) -> int:
        return len(self._reader) if self._reader is not None else len(self._frames)

    def get(self, indices: Sequence[int]) -> np.ndarray:
        """Frames at ``indices``.  -> uint8 [T, H, W, 3]."""
        if self._reader is not None:
            try:
                return self._reader.get_batch(list(indices)).asnumpy()
            except decord.DECORDError:  # decord 0.6 fails on some small frame sizes (e.g. 16×16, 48×48)
                self._decode_all()
        return np.stack([self._frames[i] for i in indices])


def probe(data: bytes) -> dict:
    """Codec, pixel format, coded size, frame rate and rotation of the first video stream (PyAV)."""
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        first: av.VideoFrame | None = next(container.decode(stream), None)
        if first is None:
            raise ValueError("video has no decodable frames")
        rate = stream.average_rate
        return {
            "format": container.format.name,
            "codec": stream.codec_context.name,
            "pix_fmt": stream.codec_context.pix_fmt,
            "width": first.width,
            "height": first.height,
            "fps": float(rate) if rate else 0.0,
            "rotation": float(first.rotation or 0),
        }
