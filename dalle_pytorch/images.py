"""Image tensors <-> PIL images, and image grids (used by training samples and generation).

Tensors are (c, H, W) floats in [0, 1] with c = 1, 3 or 4 (L, RGB, RGBA).
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
from PIL import Image

MODES = {1: "L", 3: "RGB", 4: "RGBA"}


def tensor_bytes(t: torch.Tensor) -> bytes:
    """The raw bytes of a tensor (any dtype), in memory order of a contiguous copy."""
    flat = t.detach().cpu().contiguous().reshape(-1)
    if flat.numel() == 0:
        return b""
    return flat.view(torch.uint8).numpy().tobytes()


def tensor_to_pil(image: torch.Tensor) -> Image.Image:
    """(c, H, W) float in [0, 1] (c = 1, 3 or 4) -> 8-bit PIL image (values clamped and rounded)."""
    if image.dim() != 3 or image.shape[0] not in MODES:
        raise ValueError(f"expected an image (1, 3 or 4, H, W), got shape {tuple(image.shape)}")
    c, h, w = image.shape
    data = image.detach().float().cpu().clamp(0.0, 1.0).mul(255.0).round().to(torch.uint8)
    return Image.frombytes(MODES[c], (w, h), tensor_bytes(data.permute(1, 2, 0)))


def make_grid(images: Sequence[Image.Image], nrow: Optional[int] = None, padding: int = 2,
              fill: tuple = (0, 0, 0)) -> Image.Image:
    """Tile PIL images (all the same size) into rows of `nrow` (default ceil(sqrt(n))), `padding` px apart."""
    return grid_of_rows(_chunks(list(images), nrow or math.ceil(math.sqrt(len(images) or 1))), padding, fill)


def grid_of_rows(rows: Sequence[Sequence[Image.Image]], padding: int = 2, fill: tuple = (0, 0, 0)) -> Image.Image:
    """Tile rows of PIL images (rows may differ in length; all images the same size and mode)."""
    rows = [list(r) for r in rows if len(r)]
    if not rows:
        raise ValueError("an image grid needs at least one image")
    first = rows[0][0]
    (w, h), mode = first.size, first.mode
    if any(im.size != (w, h) or im.mode != mode for r in rows for im in r):
        raise ValueError("grid images must share size and mode")
    ncols = max(len(r) for r in rows)
    color = fill[: len(mode)] if len(mode) > 1 else fill[0]
    grid = Image.new(mode, (padding + ncols * (w + padding), padding + len(rows) * (h + padding)), color)
    for i, row in enumerate(rows):
        for j, im in enumerate(row):
            grid.paste(im, (padding + j * (w + padding), padding + i * (h + padding)))
    return grid


def image_grid(rows: list[torch.Tensor], padding: int = 2, pad_value: float = 1.0) -> Image.Image:
    """Tile image rows into one PIL image.

    Args:
        rows: one tensor per row, each (n, C, H, W) float in [0, 1] (values are clamped);
            all rows share C, H, W (C = 1, 3 or 4); rows may have different n.
    Returns:
        PIL image (mode L, RGB or RGBA) of the grid, ``padding`` pixels between tiles.
    """
    fill = (round(pad_value * 255),) * 4
    return grid_of_rows([[tensor_to_pil(img) for img in row] for row in rows], padding, fill)


def _chunks(items: list, n: int) -> list[list]:
    return [items[i : i + n] for i in range(0, len(items), n)]
