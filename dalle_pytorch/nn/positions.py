"""Where a cached step's tokens sit: `StepPositions`, built once per step and read by every layer.

Dimensions: b rows, t new tokens per row, N the model's positions.

A step feeds t >= 1 tokens per row at positions start .. start + t - 1.  `start` is one 0-d tensor
shared by every row (plain decoding, prefill, a batch that advances together) or one start per row
(b,) (the server's rows, speculative windows after different numbers of accepted drafts).  Shapes
never depend on the values, so a step can be compiled; what differs is the kind of indexing: a
shared start gathers each table row once and broadcasts it, per-row starts gather per row.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Optional

import torch

__all__ = ["StepPositions"]


@dataclass(frozen=True)
class StepPositions:
    """The positions of one step.  Build it with `StepPositions.of`."""

    start: torch.Tensor  # 0-d (shared by every row) or (b,) long
    flat: torch.Tensor  # (t,) for a shared start, (b * t,) per row: start + 0..t-1, for index_select
    tokens: int  # t, the new tokens per row
    # positions the attention spans: None = the whole preallocated cache (static shapes, for compile and
    # CUDA graphs); otherwise at least max(start) + t, exactly start + t for a shared start
    length: Optional[int]

    @classmethod
    def of(cls, start: torch.Tensor, t: int, length: Optional[int], arange: torch.Tensor) -> "StepPositions":
        """start: 0-d or (b,) long tensor; t: tokens per row; arange: a long tensor of at least t positions
        0, 1, ... (a buffer, so that no step allocates one)."""
        if t == 1:
            return cls(start, start.view(-1), 1, length)
        return cls(start, (start.view(-1, 1) + arange[:t]).view(-1), t, length)

    @property
    def shared(self) -> bool:
        """One start for every row."""
        return self.start.dim() == 0

    @property
    def table_rows(self) -> int:
        """1 for a shared start (tables broadcast over the rows), else b."""
        return 1 if self.shared else self.start.shape[0]

    @cached_property
    def index(self) -> torch.Tensor:
        """(1 or b, t) long: each row's positions (made once, where a layer needs it)."""
        return self.flat.view(self.table_rows, self.tokens)

    def write_offset(self) -> Optional[int]:
        """The first written slot as a Python int where it is known without reading a tensor (a shared
        start with a length: length - t), else None."""
        return self.length - self.tokens if self.shared and self.length is not None else None
