"""`PreShiftToken`: token shift before each branch, in its full-sequence and one-step forms.

Dimensions: b batch, n positions, c model dim, F image grid side, T' = text_len (<bos> + caption).

Before a branch reads its (normalised) input, each token takes some channels from its neighbours
(DALLE-pytorch's `shift_tokens`):
- text positions: the first ceil(c/2) channels come from the previous token (zero at <bos>);
- image positions: the first ceil(c/4) channels from the token above (zero on the first row), the
  next ceil(c/4) from the token to the left (zero at a row start); the rest stay.
The module has no parameters. Its cache state is a `ShiftCache`: a ring of the last F normalised
inputs of a branch, exactly the row above and the token to the left that the next token reads.
"""
from __future__ import annotations

from dataclasses import dataclass
from math import ceil

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["PreShiftToken", "ShiftCache", "shift_channels", "shift_tokens_full", "shift_tokens_step",
           "shift_tokens_step_rows", "shift_step_tables", "fill_shift_ring"]


@dataclass
class ShiftCache:
    """The cache state of one branch's token shift."""

    ring: torch.Tensor  # (b, F, c): slot (position % F) holds that position's normalised input


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


def fill_shift_ring(ring: torch.Tensor, xn: torch.Tensor) -> None:
    """After a prefill of n positions, keep the last F rows.  ring: (b, F, C); xn: (b, n, c)."""
    f, cs = ring.shape[1], ring.shape[2]
    n = xn.shape[1]
    start = max(0, n - f)
    slots = torch.arange(start, n, device=xn.device) % f
    ring.index_copy_(1, slots, xn[:, start:n, :cs])


def shift_step_tables(text_len: int, fmap_size: int, dim: int) -> torch.Tensor:
    """(N, 3, dim) 0/1 weights of (the token itself, the previous token, the token above) for every
    channel of a token at each position, so that one decoding step shifts with three
    multiply-adds and no position-dependent control flow (exact: weights are 0 or 1; channels
    that are never shifted have weights (1, 0, 0))."""
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


def shift_tokens_step(xn: torch.Tensor, ring: torch.Tensor, w_self: torch.Tensor, w_prev: torch.Tensor,
                      w_top: torch.Tensor, slot_prev: torch.Tensor, slot_top: torch.Tensor) -> torch.Tensor:
    """Token shift of one token, reading and updating the ring of the last F inputs.

    xn: (b, 1, c) normalised input; ring: (b, F, c); w_self, w_prev, w_top: (c,) this position's
    row of shift_step_tables; slot_prev, slot_top: (1,) ring slots of the previous token and of the
    token above (which is also where this token goes).  Shapes and control flow do not depend on
    the position.
    """
    prev = ring.index_select(1, slot_prev)
    top = ring.index_select(1, slot_top)
    out = torch.addcmul(torch.addcmul(xn * w_self, prev, w_prev), top, w_top)
    ring.index_copy_(1, slot_top, xn)
    return out


def shift_tokens_step_rows(xn: torch.Tensor, ring: torch.Tensor, w_self: torch.Tensor, w_prev: torch.Tensor,
                           w_top: torch.Tensor, slot_prev: torch.Tensor, slot_top: torch.Tensor) -> torch.Tensor:
    """`shift_tokens_step` with each row at its own position (continuous batching).

    xn: (b, 1, c); ring: (b, F, c); w_self, w_prev, w_top: (b, 1, c), each row's row of
    shift_step_tables; slot_prev, slot_top: (b,) each row's ring slots.
    """
    b, _, c = xn.shape
    prev = ring.gather(1, slot_prev.view(b, 1, 1).expand(b, 1, c))
    top_index = slot_top.view(b, 1, 1).expand(b, 1, c)
    top = ring.gather(1, top_index)
    out = torch.addcmul(torch.addcmul(xn * w_self, prev, w_prev), top, w_top)
    ring.scatter_(1, top_index, xn)
    return out


class PreShiftToken(nn.Module):
    """Token shift of a branch input, over a whole sequence (`forward`) or one cached step (`step`).

    One instance serves every branch of a transformer (it has no parameters); each branch keeps its
    own `ShiftCache` in the inference cache.
    """

    def __init__(self, dim: int, text_len: int, fmap_size: int):
        super().__init__()
        self.dim, self.text_len, self.fmap_size = dim, text_len, fmap_size
        self.register_buffer("step_weights", shift_step_tables(text_len, fmap_size, dim), persistent=False)

    def forward(self, xn: torch.Tensor, cache: ShiftCache | None = None) -> torch.Tensor:
        """xn: (b, n, c) normalised inputs at positions 0..n-1 -> shifted (b, n, c).

        cache: filled with the last F inputs (prefill), so that `step` can continue at position n.
        """
        if cache is not None:
            fill_shift_ring(cache.ring, xn)
        return shift_tokens_full(xn, self.text_len, self.fmap_size)

    def step_tables(self, pos: torch.Tensor) -> tuple:
        """What `step` needs at position `pos` (0-d long tensor), computed once per decode step and
        shared by every branch: (w_self, w_prev, w_top) each (c,), then the ring slots (1,) of
        the previous token and of the token above."""
        p = pos.view(1)
        f = self.fmap_size
        return (*self.step_weights.index_select(0, p)[0].unbind(0), (p - 1) % f, p % f)

    def step(self, xn: torch.Tensor, cache: ShiftCache, tables: tuple) -> torch.Tensor:
        """One token.  xn: (b, 1, c) at the position `tables` were made for -> (b, 1, c); updates the ring."""
        return shift_tokens_step(xn, cache.ring, *tables)

    def step_tables_rows(self, pos: torch.Tensor) -> tuple:
        """`step_tables` with one position per row.  pos: (b,) long -> (w_self, w_prev, w_top) each
        (b, 1, c), then the ring slots (b,) of each row's previous token and token above."""
        w = self.step_weights.index_select(0, pos)  # (b, 3, c)
        f = self.fmap_size
        return (*w.unsqueeze(2).unbind(1), (pos - 1) % f, pos % f)

    def step_rows(self, xn: torch.Tensor, cache: ShiftCache, tables: tuple) -> torch.Tensor:
        """One token per row, each at its own position (`step_tables_rows`).  xn: (b, 1, c) -> (b, 1, c)."""
        return shift_tokens_step_rows(xn, cache.ring, *tables)

    def new_cache(self, batch: int, device, dtype) -> ShiftCache:
        """An empty ring for `batch` rows."""
        return ShiftCache(torch.zeros(batch, self.fmap_size, self.dim, device=device, dtype=dtype))

    def extra_repr(self) -> str:
        return f"dim={self.dim}, text_len={self.text_len}, fmap_size={self.fmap_size}"
