"""Rotary position tables for the text + image sequence, as DALLE-pytorch lays them out.

The table has one row per position (N = text_len + image_seq_len) and 6 * (rot_dim // 2)
columns, rot_dim = dim_head // 3:
- a 1-D "language" rotary over text positions 0..text_len-1; image tokens get position 8192,
  far away from the text;
- 2-D axial "pixel" frequencies over the image grid (rows then columns, each in [-1, 1]);
  text tokens get the axial position -10 on both axes.
It is applied to q, k and v (DALLE-pytorch does so for v too) on the first columns of each head.
The table is derived from the config alone, so it is a non-persistent buffer.
"""
from __future__ import annotations

from math import pi

import torch


def _interleave(freqs: torch.Tensor) -> torch.Tensor:
    # (..., n) -> (..., 2n) with each frequency repeated twice: [f0, f0, f1, f1, ...]
    return freqs.repeat_interleave(2, dim=-1)


def lang_freqs(positions: torch.Tensor, dim: int, theta: float = 10000.0) -> torch.Tensor:
    inv = 1.0 / (theta ** (torch.arange(0, dim, 2)[: dim // 2].float() / dim))
    return _interleave(positions.float()[:, None] * inv[None, :])


def pixel_freqs(positions: torch.Tensor, dim: int, max_freq: float = 10.0) -> torch.Tensor:
    freqs = torch.linspace(1.0, max_freq / 2, dim // 2) * pi
    return _interleave(positions.float()[:, None] * freqs[None, :])


def rotary_table(dim_head: int, text_len: int, fmap_size: int) -> torch.Tensor:
    """(N, rot_cols) angles for every position of the sequence."""
    rot_dim = dim_head // 3
    img_len = fmap_size**2
    text_freqs = torch.cat(
        (lang_freqs(torch.arange(text_len), rot_dim), lang_freqs(torch.full((img_len,), 8192), rot_dim)), dim=0
    )
    axial = pixel_freqs(torch.linspace(-1, 1, steps=fmap_size), rot_dim)  # (F, c)
    c = axial.shape[-1]
    img = torch.cat((axial[:, None, :].expand(fmap_size, fmap_size, c), axial[None, :, :].expand(fmap_size, fmap_size, c)), dim=-1)
    img = img.reshape(img_len, 2 * c)
    text_axial = pixel_freqs(torch.full((text_len,), -10.0), rot_dim)
    img_freqs = torch.cat((torch.cat((text_axial, text_axial), dim=-1), img), dim=0)
    return torch.cat((text_freqs, img_freqs), dim=-1)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    # pairs (x0, x1) -> (-x1, x0), interleaved layout
    x = x.unflatten(-1, (-1, 2))
    x1, x2 = x.unbind(-1)
    return torch.stack((-x2, x1), dim=-1).flatten(-2)


def apply_rotary(cos: torch.Tensor, sin: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Rotate the first cos.shape[-1] channels of t.

    t: (b, h, n, d); cos, sin: (n, r) with r <= d (or broadcastable to (..., n, r)).
    """
    r = cos.shape[-1]
    if r == 0:
        return t
    head, tail = t[..., :r], t[..., r:]
    head = head * cos + rotate_half(head) * sin
    return torch.cat((head, tail), dim=-1)


def rotary_step_tables(cos: torch.Tensor, sin: torch.Tensor, dim_head: int):
    """Tables for `apply_rotary_step`: the rotation of `apply_rotary` over all dim_head channels.

    cos, sin: (N, r).  Returns cos_d (N, dim_head) (1 past the first r channels), sin_d
    (N, dim_head) with rotate_half's sign folded in (-sin on even channels, +sin on odd ones,
    0 past r), and swap (dim_head,) long: the channel permutation that exchanges each pair of the
    first r channels.  t * cos_d + t[..., swap] * sin_d equals apply_rotary(cos, sin, t).
    """
    n, r = cos.shape
    cos_d = torch.ones(n, dim_head, dtype=cos.dtype)
    sin_d = torch.zeros(n, dim_head, dtype=sin.dtype)
    cos_d[:, :r] = cos
    sin_d[:, :r] = sin
    sin_d[:, 0:r:2] = -sin[:, 0::2]
    swap = torch.arange(dim_head)
    swap[0:r:2], swap[1:r:2] = torch.arange(1, r, 2), torch.arange(0, r, 2)
    return cos_d, sin_d, swap


def apply_rotary_step(cos_d: torch.Tensor, sin_d: torch.Tensor, swap: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """`apply_rotary` for one position with the tables of `rotary_step_tables`: three ops and no
    slicing.  t: (..., dim_head); cos_d, sin_d broadcastable to t."""
    return torch.addcmul(t * cos_d, t.index_select(-1, swap), sin_d)
