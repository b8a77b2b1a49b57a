"""The fast-weight state carried through a sequence (and between calls, for streaming)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional

import torch


def row_norms(w: torch.Tensor) -> torch.Tensor:
    """w: [B, R, C] -> [B, R, 1]: the L2 norm of each row (the fan-in of one output unit)."""
    return w.norm(dim=-1, keepdim=True)


@dataclass(frozen=True)
class FastWeights:
    """SwiGLU fast weights ``f(x) = w1 (silu(w0 x) * (w2 x))`` of ``B`` independent heads, row layout.

    Stored fused as ``w02 = [w0; w2]: [B, 2H, D]`` and ``w1: [B, D, H]`` so the hot path needs one
    matmul where the maths has two. ``norm02 / norm1`` are the row norms of the *initial* weights that
    weight normalisation restores after every update; ``mom02 / mom1`` the momentum buffers (None
    until the first update with momentum). All are kept in ``state_dtype`` (fp32 by default).
    """

    w02: torch.Tensor
    w1: torch.Tensor
    norm02: torch.Tensor
    norm1: torch.Tensor
    mom02: Optional[torch.Tensor] = None
    mom1: Optional[torch.Tensor] = None

    @classmethod
    def from_initial(
        cls,
        w0: torch.Tensor,
        w1: torch.Tensor,
        w2: torch.Tensor,
        *,
        state_dtype: torch.dtype = torch.float32,
        detach_norms: bool = False,
    ) -> "FastWeights":
        """Start a sequence from initial weights ``w0, w2: [B, H, D]``, ``w1: [B, D, H]``.

        ``detach_norms`` stops the outer gradient through the recorded row norms (the NVS reference
        does, the LM and video references do not: LACT_SPEC.md §1.8).
        """
        if w0.shape != w2.shape or w0.dim() != 3 or w1.shape != w0.shape[:1] + w0.shape[:-3:-1]:
            raise ValueError(
                f"expected w0, w2: [B, H, D] and w1: [B, D, H], got {tuple(w0.shape)}, "
                f"{tuple(w1.shape)}, {tuple(w2.shape)}"
            )
        w02 = torch.cat([w0, w2], dim=1).to(state_dtype)
        w1 = w1.to(state_dtype)
        norm02, norm1 = row_norms(w02), row_norms(w1)
        if detach_norms:
            norm02, norm1 = norm02.detach(), norm1.detach()
        return cls(w02, w1, norm02, norm1)

    @property
    def hidden(self) -> int:
        """H, the hidden width of the SwiGLU."""
        return self.w1.size(-1)

    @property
    def w0(self) -> torch.Tensor:
        """[B, H, D]"""
        return self.w02[:, : self.hidden]

    @property
    def w2(self) -> torch.Tensor:
        """[B, H, D]"""
        return self.w02[:, self.hidden :]

    def replace(self, **changes: torch.Tensor) -> "FastWeights":
        """A copy with some fields changed (the state is immutable so callers can keep old states)."""
        return replace(self, **changes)

    def detach(self) -> "FastWeights":
        """The same state cut from the autograd graph (for caches kept across steps)."""
        return FastWeights(*(None if t is None else t.detach() for t in self._fields()))

    def _fields(self) -> tuple[Optional[torch.Tensor], ...]:
        return (self.w02, self.w1, self.norm02, self.norm1, self.mom02, self.mom1)
