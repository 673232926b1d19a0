"""Attention patterns: ONE definition of which key positions each query position may see.

Sequence layout (every pattern):

    position:  0      1 .. text_seq_len   text_len .. text_len + image_seq_len - 1
    token:     <bos>  caption tokens      image codes, raster order over an F x F grid

    text_len = text_seq_len + 1,  image_seq_len = F * F,  N = text_len + image_seq_len

Rules shared by every pattern:
- text queries are causal over text (key j <= query i);
- image queries see every text position (<bos> and pads included) plus the image keys that
  their pattern allows, always at or before themselves in raster order.

`pattern_mask(...)` returns the (N, N) boolean mask for one layer. Training uses efficient
kernels (see attention.py), optimize_for_inference and the cached decoder use this mask
directly, and the tests prove the efficient kernels equal to masked full attention with it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from math import ceil

import torch

ATTN_TYPES = ("full", "axial_row", "axial_col", "conv_like", "sparse")
CONV_VARIANTS = ("up_left", "centred")


@dataclass(frozen=True)
class PatternSpec:
    """Everything a pattern mask depends on (static per layer)."""

    attn_type: str  # one of ATTN_TYPES
    text_len: int  # <bos> + text_seq_len
    fmap_size: int  # F: the image is an F x F grid of codes
    kernel_size: int = 5  # conv_like window size (odd)
    dilation: int = 1  # conv_like dilation
    conv_variant: str = "up_left"  # 'up_left' (DALLE-pytorch >= 1.5) or 'centred' (<= 1.4)
    block_size: int = 16  # sparse: block granularity
    num_local_blocks: int = 4  # sparse: causal local window, in blocks (the query's own included)
    # sparse: per query block, the earlier blocks drawn at random (row i: up to R indices, -1 = none)
    random_blocks: tuple = field(default=(), compare=True)

    def __post_init__(self):
        if self.attn_type not in ATTN_TYPES:
            raise ValueError(f'attention type "{self.attn_type}" is not valid; choose from {ATTN_TYPES}')
        if self.attn_type == "conv_like":
            if self.kernel_size % 2 != 1 or self.kernel_size < 1:
                raise ValueError(f"conv_like kernel_size must be odd and positive, got {self.kernel_size}")
            if self.dilation < 1:
                raise ValueError(f"conv_like dilation must be >= 1, got {self.dilation}")
            if self.conv_variant not in CONV_VARIANTS:
                raise ValueError(f"conv_variant must be one of {CONV_VARIANTS}, got {self.conv_variant!r}")
        if self.attn_type == "sparse" and self.block_size < 1:
            raise ValueError(f"sparse block_size must be >= 1, got {self.block_size}")

    @property
    def seq_len(self) -> int:
        """N: number of positions the mask covers."""
        return self.text_len + self.fmap_size**2


def conv_offsets(spec: PatternSpec) -> tuple[list[int], int]:
    """Row/column offsets of the conv_like window relative to the query, and the padding p.

    up_left: offsets -2p .. 0 where p = ((kernel_size - 1) * dilation + 1) // 2 (the window of
    kernel_size x kernel_size dilated positions above and to the left, the query included).
    centred: offsets -p .. p (the window centred on the query; raster causality applied after).
    """
    k, d = spec.kernel_size, spec.dilation
    p = ((k - 1) * d + 1) // 2
    start = -2 * p if spec.conv_variant == "up_left" else -p
    return [start + a * d for a in range(k)], p


def _image_allowed(spec: PatternSpec) -> torch.Tensor:
    """(F*F, F*F) bool: may image query p see image key q (raster causality included)."""
    f = spec.fmap_size
    idx = torch.arange(f * f)
    row, col = idx // f, idx % f
    causal = idx[None, :] <= idx[:, None]  # (query, key)
    t = spec.attn_type
    if t in ("full", "sparse"):
        return causal  # sparse is restricted at block level in pattern_mask
    if t == "axial_row":
        return causal & (row[None, :] == row[:, None])
    if t == "axial_col":
        return causal & (col[None, :] == col[:, None])
    # conv_like
    offsets, _ = conv_offsets(spec)
    off = torch.tensor(offsets)
    dr = row[None, :] - row[:, None]  # key row - query row
    dc = col[None, :] - col[:, None]
    in_rows = (dr[..., None] == off).any(-1)
    in_cols = (dc[..., None] == off).any(-1)
    return causal & in_rows & in_cols


def sparse_block_allowed(spec: PatternSpec, num_blocks: int) -> torch.Tensor:
    """(num_blocks, num_blocks) bool: may query block i see key block j (sparse pattern).

    Allowed: j <= i and (j holds text (global), or j within the causal local window, or j is
    one of block i's random earlier blocks).
    """
    bs = spec.block_size
    i = torch.arange(num_blocks)[:, None]
    j = torch.arange(num_blocks)[None, :]
    num_text_blocks = ceil(spec.text_len / bs)
    allowed = (j < num_text_blocks) | ((i - j) < spec.num_local_blocks)
    for qi, row in enumerate(spec.random_blocks):
        if qi >= num_blocks:
            break
        for kj in row:
            if 0 <= kj < num_blocks:
                allowed[qi, kj] = True
    return allowed & (j <= i)


def pattern_mask(spec: PatternSpec, length: int | None = None) -> torch.Tensor:
    """(L, L) bool mask: entry [i, j] is True where query position i may attend to key position j.

    L = spec.seq_len unless `length` asks for a longer, padded square (used by block kernels):
    positions past N see only themselves, so that no row is ever empty.
    """
    n, tl = spec.seq_len, spec.text_len
    length = n if length is None else length
    if length < n:
        raise ValueError(f"length {length} is shorter than the pattern's {n} positions")
    pos = torch.arange(n)
    mask = torch.zeros(length, length, dtype=torch.bool)
    mask[:n, :n] = pos[None, :] <= pos[:, None]  # causal everywhere
    img = _image_allowed(spec)
    mask[tl:n, tl:n] = img  # image -> image: the pattern
    # text -> text is causal; image -> text is everything (already True via causality: j < tl <= i)
    if spec.attn_type == "sparse":
        bs = spec.block_size
        nb = ceil(length / bs)
        blocks = sparse_block_allowed(spec, nb)
        block_of = torch.arange(length) // bs
        mask &= blocks[block_of[:, None], block_of[None, :]]  # text blocks are global, so text stays visible
    extra = torch.arange(n, length)
    mask[extra, extra] = True
    return mask


def draw_random_blocks(seq_len: int, block_size: int, num_random_blocks: int, seed: int) -> tuple:
    """Per query block, `num_random_blocks` distinct earlier blocks drawn from a seeded generator.

    Returns a tuple of tuples (one per block; fewer entries where fewer earlier blocks exist).
    Stored with the model (as a buffer) so a saved model keeps its pattern.
    """
    nb = ceil(seq_len / block_size)
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for i in range(nb):
        r = min(num_random_blocks, i)
        rows.append(tuple(sorted(torch.randperm(i, generator=gen, device="cpu")[:r].tolist())) if r > 0 else ())
    return tuple(rows)


def random_blocks_to_tensor(rows: tuple, width: int | None = None) -> torch.Tensor:
    """Pack ragged random-block rows into a (num_blocks, R) long tensor padded with -1."""
    width = max([len(r) for r in rows] + [0]) if width is None else width
    out = torch.full((len(rows), max(width, 1)), -1, dtype=torch.long)
    for i, r in enumerate(rows):
        if r:
            out[i, : len(r)] = torch.tensor(r)
    return out


def random_blocks_from_tensor(t: torch.Tensor) -> tuple:
    """Inverse of random_blocks_to_tensor."""
    return tuple(tuple(int(v) for v in row if v >= 0) for row in t.tolist())
