"""Rotary position embeddings: 1-D (LM) and 3-D time/height/width (video, Wan's split).

Angles are computed in float64 (long sequences and large theta lose precision in fp32), the
rotation runs in fp32 (fp64 for fp64 inputs) and the result is cast back to the input dtype
(LACT_SPEC.md §4.4). The rotary objects hold no parameters or buffers: the ``head_dim / 2``
frequencies are rebuilt on the positions' device at each call, so casting a model to bf16 never
rounds them. They are plain objects, not ``nn.Module`` s, so their ``apply`` does not shadow
``nn.Module.apply``.
"""

from __future__ import annotations

from typing import NamedTuple, Optional, Union

import torch

from .precision import cast

#: Layouts of the tensor to rotate: heads before or after the sequence dim.
LAYOUTS = ("bhld", "blhd")


def rope_frequencies(dim: int, theta: float, device: Optional[torch.device] = None) -> torch.Tensor:
    """Inverse frequencies theta^(-2i/dim), i < dim/2, float64.  -> [dim // 2]."""
    return theta ** (-torch.arange(0, dim // 2, device=device, dtype=torch.float64) * 2 / dim)


class Rotation(NamedTuple):
    """The rotation of some positions as two full-width factors [L, Dh] or [B, L, Dh]: a channel
    rotates to ``x · cos + partner · sin``, ``partner`` the other channel of its pair
    (:func:`pair_partners`) and ``sin`` signed (−sin on the first channel of a pair, +sin on the
    second): the pairwise ``(x1 cos − x2 sin, x1 sin + x2 cos)`` bit for bit (negation is exact and
    addition commutes), in 4 ops instead of 8.

    Computed once (:meth:`RotaryEmbedding.rotation`) and applied to every tensor rotated at the
    same positions: q and k of the attention and of the fast weights in every layer of a model,
    where a decoding step would otherwise rebuild the angles many times for one token.
    """

    cos: torch.Tensor
    sin: torch.Tensor

    @classmethod
    def of(cls, angles: torch.Tensor, interleaved: bool) -> "Rotation":
        """angles: [..., Dh/2] -> the full-width factors [..., Dh] in the angles' dtype."""
        cos, sin = angles.cos(), angles.sin()
        if interleaved:
            return cls(cos.repeat_interleave(2, dim=-1), torch.stack([-sin, sin], dim=-1).flatten(-2))
        return cls(torch.cat([cos, cos], dim=-1), torch.cat([-sin, sin], dim=-1))


def pair_partners(x: torch.Tensor, interleaved: bool) -> torch.Tensor:
    """x: [..., Dh] -> the partner of each channel in its rotary pair: (x2, x1) for each pair (x1, x2)
    of adjacent channels (interleaved) or of the two halves."""
    if interleaved:  # roll, not flip, of each pair: the same swap, half the time forward and backward
        return x.unflatten(-1, (-1, 2)).roll(1, dims=-1).flatten(-2)
    return x.roll(x.size(-1) // 2, dims=-1)


def rotate(x: torch.Tensor, angles: torch.Tensor, interleaved: bool, layout: str = "bhld") -> torch.Tensor:
    """Rotate the channel pairs of ``x`` by ``angles``.

    Args:
        x: [B, heads, L, Dh] (layout "bhld") or [B, L, heads, Dh] ("blhd").
        angles: [L, Dh/2] or [B, L, Dh/2], any float dtype (float64 recommended).
        interleaved: pairs are adjacent channels (2i, 2i+1) (Wan, complex view) rather than the two
            halves (i, i + Dh/2) (Llama / fla ``rotate_half``).
        layout: where the heads dim sits.

    Returns:
        x rotated, same shape and dtype.
    """
    return rotate_by(x, Rotation.of(angles, interleaved), interleaved, layout)


def rotation_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype x is rotated in: fp32 for bf16 / fp16 / fp32, fp64 stays fp64."""
    return torch.promote_types(x.dtype, torch.float32)


def rotate_by(x: torch.Tensor, rotation: Rotation, interleaved: bool, layout: str = "bhld") -> torch.Tensor:
    """:func:`rotate` with the rotation's factors (:class:`Rotation`) given."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    cos, sin = rotation
    if layout == "bhld" and cos.dim() == 3:
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)  # [B, 1, L, Dh]
    elif layout == "blhd":
        cos, sin = cos.unsqueeze(-2), sin.unsqueeze(-2)  # [(B,) L, 1, Dh]
    dtype = rotation_dtype(x)
    xf, cos, sin = (cast(t, dtype) for t in (x, cos, sin))
    return cast(xf * cos + pair_partners(xf, interleaved) * sin, x.dtype)


class RotaryEmbedding:
    """1-D RoPE over integer positions.

    Args:
        head_dim: Dh, the (even) width rotated per head.
        theta: base of the frequencies.
        interleaved: rotate adjacent channel pairs instead of the two halves (Llama / fla default).
    """

    def __init__(self, head_dim: int, theta: float = 1e4, interleaved: bool = False):
        if head_dim <= 0 or head_dim % 2:
            raise ValueError(f"rotary head_dim must be positive and even, got {head_dim}")
        self.head_dim, self.theta, self.interleaved = head_dim, theta, interleaved

    def angles(self, positions: torch.Tensor) -> torch.Tensor:
        """positions: [L] or [B, L] integers -> angles [L, Dh/2] or [B, L, Dh/2], float64."""
        inv_freq = rope_frequencies(self.head_dim, self.theta, positions.device)
        return positions.to(torch.float64).unsqueeze(-1) * inv_freq

    def default_positions(self, length: int, device: torch.device) -> torch.Tensor:
        """0, 1, …, length − 1.  -> [L]."""
        return torch.arange(length, device=device)

    def rotation(self, positions: torch.Tensor, like: Optional[torch.Tensor] = None) -> Rotation:
        """The :class:`Rotation` of ``positions`` (angles: :meth:`angles`), to rotate several tensors:
        float64, or the dtype the rotation of tensors ``like`` this one runs in."""
        rotation = Rotation.of(self.angles(positions), self.interleaved)
        dtype = torch.float64 if like is None else rotation_dtype(like)
        return Rotation(rotation.cos.to(dtype), rotation.sin.to(dtype))

    def apply(
        self, x: torch.Tensor, positions: Union[torch.Tensor, Rotation, None] = None, layout: str = "bhld"
    ) -> torch.Tensor:
        """Rotate x: [B, heads, L, Dh] ("bhld") or [B, L, heads, Dh] ("blhd") at ``positions``.

        ``positions``: the integer positions (default: :meth:`default_positions` of the sequence
        length), or their :meth:`rotation` computed once for several tensors.
        """
        if x.size(-1) != self.head_dim:
            raise ValueError(f"expected head dim {self.head_dim}, got x of shape {tuple(x.shape)}")
        if positions is None:
            positions = self.default_positions(x.size(-2 if layout == "bhld" else -3), x.device)
        rotation = positions if isinstance(positions, Rotation) else self.rotation(positions)
        return rotate_by(x, rotation, self.interleaved, layout)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(head_dim={self.head_dim}, theta={self.theta}, interleaved={self.interleaved})"


class Rotary3DEmbedding(RotaryEmbedding):
    """3-D RoPE: the rotary pairs split over (time, height, width) as Wan does.

    Height and width get ``Dh // 6`` pairs each and time the rest, ``Dh/2 − 2·(Dh // 6)`` (Wan's
    ``d − 4·(d // 6)`` channels; for Dh = 128: 22/21/21 pairs). Each axis uses its own frequency
    ladder theta^(−2i/d_axis) over its ``d_axis`` channels, and the pairs are ordered time, height,
    width. Positions are explicit integer (t, h, w) triples, so a noisy chunk and its clean twin
    can share time indices (LACT_SPEC.md §4.4).

    Args:
        head_dim: Dh, even and >= 6.
        theta: base of the frequencies.
        interleaved: adjacent channel pairs (Wan's complex view; default) or halves.
    """

    def __init__(self, head_dim: int, theta: float = 1e4, interleaved: bool = True):
        super().__init__(head_dim, theta, interleaved)
        if head_dim < 6:
            raise ValueError(f"3-D rotary needs head_dim >= 6, got {head_dim}")
        hw = head_dim // 6
        self.axis_pairs = (head_dim // 2 - 2 * hw, hw, hw)

    def angles(self, positions: torch.Tensor) -> torch.Tensor:
        """positions: [L, 3] or [B, L, 3] integer (t, h, w) -> angles [(B,) L, Dh/2], float64."""
        if positions.size(-1) != 3:
            raise ValueError(f"3-D rotary positions must end in (t, h, w), got shape {tuple(positions.shape)}")
        pos = positions.to(torch.float64)
        parts = [
            pos[..., axis, None] * rope_frequencies(2 * pairs, self.theta, positions.device)
            for axis, pairs in enumerate(self.axis_pairs)
        ]
        return torch.cat(parts, dim=-1)

    def default_positions(self, length: int, device: torch.device) -> torch.Tensor:
        raise ValueError("3-D rotary needs explicit (t, h, w) positions; build them with grid_positions")


def grid_positions(
    frames: int, height: int, width: int, t_start: int = 0, device: Optional[torch.device] = None
) -> torch.Tensor:
    """(t, h, w) triples of a frames × height × width token grid, time-major (Wan's flattening).

    Returns:
        [frames * height * width, 3] int64, times ``t_start .. t_start + frames − 1``.
    """
    axes = [
        torch.arange(t_start, t_start + frames, device=device),
        torch.arange(height, device=device),
        torch.arange(width, device=device),
    ]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, 3)
