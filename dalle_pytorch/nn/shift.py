"""`PreShiftToken`: token shift before each branch, over a whole sequence or as one cached step.

Dimensions: b batch, n positions, c model dim, F image grid side, T' = text_len (<bos> + caption).

Before a branch reads its (normalised) input, each token takes some channels from its neighbours
(DALLE-pytorch's `shift_tokens`):
- text positions: the first ceil(c/2) channels come from the previous token (zero at <bos>);
- image positions: the first ceil(c/4) channels from the token above (zero on the first row), the
  next ceil(c/4) from the token to the left (zero at a row start); the rest stay.
The module has no parameters. Its cache state is a `ShiftCache`: a ring of the last R = F + rewind
normalised inputs of a branch. A step of t tokens at position p reads the token before p and the
tokens one row above p .. p + t - 1 (those not in the step itself) from the ring, then writes its own
inputs; a later step may start up to `rewind` positions before the end of this one (speculative
decoding rewinds past rejected drafts), because the ring still holds the F positions before it.
"""
from __future__ import annotations

from dataclasses import dataclass
from math import ceil

import torch
import torch.nn.functional as F
from torch import nn

from dalle_pytorch.nn.positions import StepPositions

__all__ = ["PreShiftToken", "ShiftCache", "ShiftTables", "shift_channels", "shift_tokens_full", "shift_step_tables",
           "shift_tokens_step"]


@dataclass
class ShiftCache:
    """The cache state of one branch's token shift."""

    ring: torch.Tensor  # (b, R, c), R = F + rewind: slot (position % R) holds that position's normalised input

    @property
    def size(self) -> int:
        return self.ring.shape[1]


@dataclass
class ShiftTables:
    """What a step of t tokens per row needs from the shift, computed once per step and shared by every
    branch (`PreShiftToken.step_tables`).  Weights are (1 or b, t, c) rows of `shift_step_tables`; slots
    are ring slots: (1,) / (k,) for a start shared by every row, (b, k) with one start per row."""

    w_self: torch.Tensor
    w_prev: torch.Tensor
    w_top: torch.Tensor
    slot_prev: torch.Tensor  # the token before the step's first
    slot_top: torch.Tensor  # the tokens above the step's first min(t, F)
    slot_write: torch.Tensor  # where the step's last min(t, R) tokens go
    rows: bool  # one start per row (gather / scatter) rather than one shared start (index_select / index_copy_)


def shift_channels(dim: int) -> tuple[int, int]:
    """(c2, c4): channels shifted for text (first half) and per image direction (quarters),
    with torch.chunk's rounding."""
    return ceil(dim / 2), ceil(dim / 4)


def shift_tokens_full(x: torch.Tensor, text_len: int, fmap_size: int) -> torch.Tensor:
    """Token shift over positions 0..n-1.  x: (b, n, c) -> (b, n, c)."""
    b, n, c = x.shape
    c2, c4 = shift_channels(c)
    nt = min(n, text_len)
    text = x[:, :nt]
    text = torch.cat((F.pad(text[..., :c2], (0, 0, 1, -1)), text[..., c2:]), dim=-1)
    if n <= text_len:
        return text
    f = fmap_size
    img = F.pad(x[:, text_len:], (0, 0, 0, text_len + f * f - n)).view(b, f, f, c)
    top = F.pad(img[..., :c4], (0, 0, 0, 0, 1, -1))  # from the row above
    left = F.pad(img[..., c4 : 2 * c4], (0, 0, 1, -1))  # from the token to the left
    img = torch.cat((top, left, img[..., 2 * c4 :]), dim=-1).view(b, f * f, c)
    return torch.cat((text, img[:, : n - text_len]), dim=1)


def shift_step_tables(text_len: int, fmap_size: int, dim: int) -> torch.Tensor:
    """(N, 3, dim) 0/1 weights of (the token itself, the previous token, the token above) for every
    channel of a token at each position, so that a cached step shifts with three multiply-adds and no
    position-dependent control flow (exact: weights are 0 or 1; channels that are never shifted have
    weights (1, 0, 0))."""
    c2, c4 = shift_channels(dim)
    f, n = fmap_size, text_len + fmap_size**2
    w = torch.zeros(n, 3, dim)
    w[:, 0] = 1.0
    for i in range(n):
        if i < text_len:
            w[i, 0, :c2] = 0.0
            w[i, 1, :c2] = float(i > 0)
        else:
            p = i - text_len
            w[i, 0, : 2 * c4] = 0.0
            w[i, 2, :c4] = float(p >= f)
            w[i, 1, c4 : 2 * c4] = float(p % f != 0)
    return w


def shift_tokens_step(xn: torch.Tensor, ring: torch.Tensor, tables: ShiftTables) -> torch.Tensor:
    """Token shift of t new tokens per row, reading and updating the ring of the last R inputs.

    xn: (b, t, c) normalised inputs at the positions `tables` were made for; ring: (b, R, c).
    Token j's previous token is token j - 1 of the step (the ring's slot_prev for j = 0) and its
    token above is token j - F of the step (the ring's slot_top for j < F).  The ring is read before
    it is written, so a step may be any length (a prefill writes only its last R tokens).
    Returns (b, t, c).
    """
    b, t, c = xn.shape
    f = tables.slot_top.shape[-1]  # min(t, F) tokens take their top neighbour from the ring
    if tables.rows:
        prev = ring.gather(1, tables.slot_prev.view(b, 1, 1).expand(b, 1, c))
        top = ring.gather(1, tables.slot_top.unsqueeze(-1).expand(b, f, c))
    else:
        prev = ring.index_select(1, tables.slot_prev)
        top = ring.index_select(1, tables.slot_top)
    if t > 1:
        prev = torch.cat((prev, xn[:, : t - 1]), dim=1)
    if t > f:
        top = torch.cat((top, xn[:, : t - f]), dim=1)
    out = torch.addcmul(torch.addcmul(xn * tables.w_self, prev, tables.w_prev), top, tables.w_top)
    w = tables.slot_write.shape[-1]
    new = xn if w == t else xn[:, t - w :]
    if tables.rows:
        ring.scatter_(1, tables.slot_write.unsqueeze(-1).expand(b, w, c), new)
    else:
        ring.index_copy_(1, tables.slot_write, new)
    return out


class PreShiftToken(nn.Module):
    """Token shift of a branch input, over a whole sequence (`forward`) or a cached step (`step`).

    One instance serves every branch of a transformer (it has no parameters); each branch keeps its
    own `ShiftCache` in the inference cache.
    """

    def __init__(self, dim: int, text_len: int, fmap_size: int):
        super().__init__()
        self.dim, self.text_len, self.fmap_size = dim, text_len, fmap_size
        self.register_buffer("step_weights", shift_step_tables(text_len, fmap_size, dim), persistent=False)

    def forward(self, xn: torch.Tensor) -> torch.Tensor:
        """xn: (b, n, c) normalised inputs at positions 0..n-1 -> shifted (b, n, c)."""
        return shift_tokens_full(xn, self.text_len, self.fmap_size)

    def step_tables(self, pos: StepPositions, ring_size: int) -> ShiftTables:
        """The tables of a step at `pos` (shared by every branch of the step); ring_size: R, the rings'
        slots (`ShiftCache.size`)."""
        rows, t = pos.table_rows, pos.tokens
        f, r = self.fmap_size, ring_size
        w_self, w_prev, w_top = self.step_weights.index_select(0, pos.flat).view(rows, t, 3, -1).unbind(2)
        if t == 1:  # a decode step: the slots of its one token (shared: (1,); per row: (b, 1))
            p = pos.flat if pos.shared else pos.index
            prev, write = (p - 1) % r, p % r
            top = write if r == f else (p - f) % r
        else:
            m, k = min(t, f), min(t, r)
            first = pos.index[:, :1]
            prev, top, write = (first - 1) % r, (pos.index[:, :m] - f) % r, pos.index[:, t - k :] % r
            if pos.shared:
                prev, top, write = prev.view(-1), top.view(-1), write.view(-1)
        return ShiftTables(w_self, w_prev, w_top, prev, top, write, rows=not pos.shared)

    def step(self, xn: torch.Tensor, cache: ShiftCache, tables: ShiftTables) -> torch.Tensor:
        """t tokens per row at the positions of `tables`: xn (b, t, c) -> (b, t, c); updates the ring."""
        return shift_tokens_step(xn, cache.ring, tables)

    def new_cache(self, batch: int, device, dtype, rewind: int = 0) -> ShiftCache:
        """An empty ring for `batch` rows that steps may rewind by up to `rewind` positions."""
        return ShiftCache(torch.zeros(batch, self.fmap_size + rewind, self.dim, device=device, dtype=dtype))

    def extra_repr(self) -> str:
        return f"dim={self.dim}, text_len={self.text_len}, fmap_size={self.fmap_size}"
