"""A synthetic captioned dataset of coloured shapes on solid backgrounds.

Used by the tests and the demo model: captions like ``"a red circle on a blue
background"`` describe the image exactly, and :func:`dominant_colors` reads the
background and shape colour back from an image (e.g. a generated one).
"""

from __future__ import annotations

import os
import random
import re
from pathlib import Path

import torch
from PIL import Image, ImageDraw

__all__ = [
    "COLORS",
    "SHAPES",
    "caption",
    "combinations",
    "dominant_colors",
    "make_dataset",
    "paraphrase",
    "parse_caption",
    "render",
    "sample_captions",
]

#: Palette: well-separated colours (name -> RGB).
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 40),
    "blue": (30, 60, 220),
    "yellow": (240, 220, 30),
    "white": (245, 245, 245),
    "black": (15, 15, 15),
}

#: Shapes that :func:`render` can draw.
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")

_MIN_SIZE, _MAX_SIZE = 0.4, 0.7  # shape bounding box side, as a fraction of the image side
_MARGIN = 0.06  # the shape keeps this fraction of the image side away from the border

_NAME = "|".join(sorted(COLORS))
_SHAPE = "|".join(SHAPES)
_CAPTION_RE = re.compile(rf"^a ({_NAME}) ({_SHAPE}) on a ({_NAME}) background$")
_PARAPHRASE_RE = re.compile(rf"^({_NAME}) ({_SHAPE}), ({_NAME}) background$")


def _check(shape: str, color: str, background: str) -> None:
    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")
    for name in (color, background):
        if name not in COLORS:
            raise ValueError(f"unknown colour {name!r}; expected one of {tuple(COLORS)}")
    if color == background:
        raise ValueError(f"shape colour and background are both {color!r}")


def _as_rng(rng: random.Random | int | None) -> random.Random:
    if isinstance(rng, random.Random):
        return rng
    return random.Random(rng)


def render(
    shape: str,
    color: str,
    background: str,
    image_size: int = 32,
    rng: random.Random | int | None = None,
) -> Image.Image:
    """Draw a filled ``shape`` of colour ``color`` on a solid ``background``.

    The shape's bounding box side is 40-70% of the image side, placed at a random
    position that keeps a small margin from the border (so the border pixels are all
    background). No anti-aliasing: every pixel has exactly one palette colour.

    Args:
        shape: one of :data:`SHAPES`.
        color, background: names in :data:`COLORS`; must differ.
        image_size: side of the square image in pixels.
        rng: ``random.Random``, an int seed, or None (unseeded) for size and position.

    Returns:
        RGB PIL image of size (image_size, image_size).
    """
    _check(shape, color, background)
    rng = _as_rng(rng)
    img = Image.new("RGB", (image_size, image_size), COLORS[background])
    draw = ImageDraw.Draw(img)
    side = max(2, round(rng.uniform(_MIN_SIZE, _MAX_SIZE) * image_size))
    margin = round(_MARGIN * image_size)
    lo, hi = margin, max(margin, image_size - margin - side)
    x0, y0 = rng.randint(lo, hi), rng.randint(lo, hi)
    x1, y1 = x0 + side - 1, y0 + side - 1
    fill = COLORS[color]
    if shape == "circle":
        draw.ellipse((x0, y0, x1, y1), fill=fill)
    elif shape == "square":
        draw.rectangle((x0, y0, x1, y1), fill=fill)
    else:
        draw.polygon([((x0 + x1) / 2, y0), (x1, y1), (x0, y1)], fill=fill)
    return img


def caption(shape: str, color: str, background: str) -> str:
    """Caption of a rendered image, e.g. ``"a red circle on a blue background"``."""
    _check(shape, color, background)
    return f"a {color} {shape} on a {background} background"


def paraphrase(shape: str, color: str, background: str) -> str:
    """Alternative caption, e.g. ``"red circle, blue background"``."""
    _check(shape, color, background)
    return f"{color} {shape}, {background} background"


def parse_caption(text: str) -> tuple[str, str, str]:
    """Inverse of :func:`caption` (also accepts :func:`paraphrase` form).

    Returns:
        ``(shape, color, background)``.

    Raises:
        ValueError: if ``text`` is not a caption of this dataset.
    """
    cleaned = " ".join(text.strip().lower().split()).rstrip(".")
    match = _CAPTION_RE.match(cleaned) or _PARAPHRASE_RE.match(cleaned)
    if match is None:
        raise ValueError(f"not a synthetic-shapes caption: {text!r}")
    color, shape, background = match.groups()
    if color == background:
        raise ValueError(f"shape colour and background are both {color!r} in {text!r}")
    return shape, color, background


def combinations() -> list[tuple[str, str, str]]:
    """Every valid (shape, colour, background) of the dataset (the colour differs from the background)."""
    return [(s, c, b) for s in SHAPES for c in COLORS for b in COLORS if c != b]


def sample_captions(n: int, seed: int = 0) -> list[str]:
    """``n`` random valid captions (shape colour != background), reproducible from ``seed``."""
    rng = random.Random(seed)
    combos = combinations()
    return [caption(*rng.choice(combos)) for _ in range(n)]


def make_dataset(
    folder: str | os.PathLike, num_images: int, image_size: int = 32, seed: int = 0
) -> list[tuple[Path, str]]:
    """Write ``num_images`` images ``img_00000.png`` with captions ``img_00000.txt``.

    Each caption file holds the caption and a paraphrase on a second line. The
    (shape, colour, background) combinations are cycled through in shuffled order, so
    every combination appears about equally often.

    Args:
        folder: output folder (created if needed).
        num_images: number of image/caption pairs.
        image_size: side of the images in pixels.
        seed: makes the dataset reproducible.

    Returns:
        List of ``(image_path, caption)`` in file order.
    """
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    combos: list[tuple[str, str, str]] = []
    result: list[tuple[Path, str]] = []
    for i in range(num_images):
        if not combos:
            combos = combinations()
            rng.shuffle(combos)
        shape, color, background = combos.pop()
        path = out / f"img_{i:05d}.png"
        render(shape, color, background, image_size, rng).save(path)
        text = caption(shape, color, background)
        path.with_suffix(".txt").write_text(
            f"{text}\n{paraphrase(shape, color, background)}\n", encoding="utf-8"
        )
        result.append((path, text))
    return result


def _classify(image: torch.Tensor) -> torch.Tensor:
    """Index into the palette of the nearest colour of each pixel: (3, H, W) -> (H, W)."""
    palette = torch.tensor(list(COLORS.values()), dtype=torch.float32) / 255.0  # (K, 3)
    pixels = image.detach().float().cpu()[:3].permute(1, 2, 0)  # (H, W, 3)
    dist = ((pixels[:, :, None, :] - palette[None, None]) ** 2).sum(-1)  # (H, W, K)
    return dist.argmin(-1)


def dominant_colors(
    image: torch.Tensor, min_fraction: float = 0.06, border: int | None = None
) -> tuple[str, str | None]:
    """Read back background and shape colour of an image.

    Every pixel is classified to the nearest :data:`COLORS` entry. The background is
    the most frequent colour among the border pixels; the shape colour is the most
    frequent other colour among the interior pixels, if it covers at least
    ``min_fraction`` of the whole image (else None).

    Args:
        image: FloatTensor (3, H, W) with values in [0, 1] (extra channels ignored).
        min_fraction: minimum area fraction of the shape colour.
        border: border width in pixels (default ``max(1, H // 32)``).

    Returns:
        ``(background_name, shape_color_name_or_None)``.
    """
    if image.dim() != 3 or image.shape[0] < 3:
        raise ValueError(f"expected an image tensor (3, H, W), got shape {tuple(image.shape)}")
    names = list(COLORS)
    labels = _classify(image)
    h, w = labels.shape
    b = border if border is not None else max(1, min(h, w) // 32)
    edge = torch.ones(h, w, dtype=torch.bool)
    edge[b : h - b, b : w - b] = False
    k = len(names)
    bg = int(torch.bincount(labels[edge], minlength=k).argmax())
    interior = labels[~edge]
    counts = torch.bincount(interior, minlength=k) if interior.numel() else torch.zeros(k)
    counts[bg] = 0
    fg = int(counts.argmax())
    if counts[fg] < min_fraction * h * w:
        return names[bg], None
    return names[bg], names[fg]
