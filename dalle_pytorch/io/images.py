"""Image files: reading them (any mode PIL opens, as 8-bit RGB / RGBA / L) and writing PNGs (sample
grids, generated images with their caption, seed and settings in text chunks).

High bit depths are scaled, not clipped: 16-bit images (PIL modes I;16*, and I, whose values are
taken as 0..65535) map 65535 to 255; float images (F) in [0, 1] map 1 to 255, and any other float
range is taken as 0..255.  A decompression bomb (more pixels than PIL's MAX_IMAGE_PIXELS) is refused
before it is decoded.
"""
from __future__ import annotations

import io
import json
import os
import warnings
from typing import Any, Union

import numpy as np
import torch
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from dalle_pytorch.images import image_grid
from dalle_pytorch.io.files import atomic_write_bytes, regular_file
from dalle_pytorch.version import __version__

__all__ = ["ImageFileError", "read_image", "save_image_grid", "png_text", "save_png"]

PathLike = Union[str, os.PathLike]

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
