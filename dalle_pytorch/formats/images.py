"""Images: tensors <-> PIL images, grids, reading image files and writing PNGs.

Tensors are (c, H, W) floats in [0, 1] with c = 1, 3 or 4 (L, RGB, RGBA).

Reading (any mode PIL opens, as 8-bit RGB / RGBA / L): high bit depths are scaled, not clipped:
16-bit images (PIL modes I;16*, and I, whose values are taken as 0..65535) map 65535 to 255; float
images (F) in [0, 1] map 1 to 255, and any other float range is taken as 0..255.  A decompression
bomb (more pixels than PIL's MAX_IMAGE_PIXELS) is refused before it is decoded.

Writing: PNGs of sample grids and of generated images with their caption, seed and settings in
text chunks, atomically.
"""

from __future__ import annotations

import io
import json
import math
import os
import warnings
from typing import Any, Optional, Sequence

import numpy as np
import torch
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from dalle_pytorch.formats.files import PathLike, atomic_write_bytes, regular_file
from dalle_pytorch.version import __version__

__all__ = ["MODES", "ImageFileError", "tensor_bytes", "tensor_to_pil", "make_grid", "grid_of_rows", "image_grid",
           "read_image", "save_image_grid", "png_text", "save_png"]

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


# -- image files ---------------------------------------------------------------------------------

_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N", "I")


class ImageFileError(ValueError):
    """An image file that cannot be used: not an image, damaged, or a decompression bomb."""


def _to_8bit(img: Image.Image) -> Image.Image:
    """A high-bit-depth single-channel image (16-bit or float) as 8-bit L, scaled to the full range."""
    data = np.asarray(img, dtype=np.float64)
    if img.mode in _SIXTEEN_BIT:
        data = data / 65535.0
    elif data.size and not (data.min() >= 0.0 and data.max() <= 1.0):  # F outside [0, 1]: taken as 0..255
        data = data / 255.0
    data = np.nan_to_num(data, nan=0.0, posinf=1.0, neginf=0.0)
    return Image.fromarray(np.round(np.clip(data, 0.0, 1.0) * 255.0).astype(np.uint8), "L")


def read_image(source: Any, mode: str, what: str = "image") -> Image.Image:
    """Open and fully decode an image (a path or a file object), converted to `mode` ("RGB", "RGBA", "L").

    Raises ImageFileError (one line, naming the file) for anything that is not a usable image, and
    NotRegularFileError / FileNotFoundError for a path that is not a regular file.
    """
    name = repr(os.fspath(source)) if isinstance(source, (str, os.PathLike)) else "the image data"
    if isinstance(source, (str, os.PathLike)):
        source = regular_file(source, what)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(source) as img:
                img.load()
                if img.mode in _SIXTEEN_BIT or img.mode == "F":
                    img = _to_8bit(img)
                elif img.mode == "P" and "transparency" in img.info:
                    img = img.convert("RGBA")  # the palette's transparency as an alpha channel
                return img.convert(mode)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageFileError(f"{what} {name} is a decompression bomb ({e})") from None
    except (OSError, ValueError, SyntaxError, EOFError) as e:  # PIL's errors for files it cannot decode
        raise ImageFileError(f"{what} {name} is not a readable image ({type(e).__name__}: {e})") from None


def save_image_grid(rows: list[torch.Tensor], path: PathLike) -> str:
    """Write `image_grid(rows)` as a PNG (atomically). Returns the path."""
    buf = io.BytesIO()
    image_grid(rows).save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())
    return os.fspath(path)


def png_text(caption: str, seed: int, settings: dict) -> PngInfo:
    """PNG text chunks: 'caption', 'seed', 'settings' (JSON), 'software'."""
    info = PngInfo()
    info.add_itxt("caption", caption)  # iTXt: UTF-8, so any caption survives
    info.add_text("seed", str(seed))
    info.add_text("settings", json.dumps(settings, sort_keys=True))
    info.add_text("software", f"dalle_pytorch {__version__}")
    return info


def save_png(image: Image.Image, path: PathLike, *, caption: str, seed: int, settings: dict) -> None:
    """Write `image` as PNG with the caption, seed and settings in its text chunks (no time stamp),
    atomically: a failed write (disk full) leaves no partial file."""
    buf = io.BytesIO()
    image.save(buf, format="PNG", pnginfo=png_text(caption, seed, settings))
    atomic_write_bytes(path, buf.getvalue())
