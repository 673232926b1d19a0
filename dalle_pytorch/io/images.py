"""Image files: reading them (any PIL mode, as 8-bit RGB / RGBA / L) and writing PNGs (sample grids,
generated images with their caption, seed and settings in text chunks)."""
from __future__ import annotations

import io
import json
import os
from typing import Any, Union

import torch
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from dalle_pytorch.images import image_grid
from dalle_pytorch.io.files import atomic_write_bytes
from dalle_pytorch.version import __version__

__all__ = ["read_image", "save_image_grid", "png_text", "save_png"]

PathLike = Union[str, os.PathLike]


def read_image(source: Any, mode: str) -> Image.Image:
    """Open and fully decode an image (a path or a file object), converted to `mode` ("RGB", "RGBA", "L")."""
    with Image.open(source) as img:
        img.load()
        return img.convert(mode)


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
    """Write `image` as PNG with the caption, seed and settings in its text chunks (no time stamp)."""
    image.save(path, format="PNG", pnginfo=png_text(caption, seed, settings))
