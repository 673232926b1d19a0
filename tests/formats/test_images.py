import pytest
import torch

from dalle_pytorch.formats.images import grid_of_rows, make_grid, tensor_to_pil


def test_tensor_to_pil_round_trip_values():
    t = torch.tensor([0.0, 0.5, 1.0, 2.0]).view(1, 2, 2)
    im = tensor_to_pil(t)
    assert im.mode == "L" and [im.getpixel((x, y)) for y in range(2) for x in range(2)] == [0, 128, 255, 255]
    assert tensor_to_pil(torch.zeros(3, 4, 5)).size == (5, 4)
    with pytest.raises(ValueError):
        tensor_to_pil(torch.zeros(2, 4, 4))


def test_grids():
    ims = [tensor_to_pil(torch.full((3, 4, 4), v)) for v in (0.0, 1.0, 0.0)]
    g = make_grid(ims, padding=1)
    assert g.size == (1 + 2 * 5, 1 + 2 * 5)
    assert g.getpixel((6, 1)) == (255, 255, 255)
    ragged = grid_of_rows([ims, ims[:1]], padding=0)
    assert ragged.size == (12, 8)
    with pytest.raises(ValueError):
        grid_of_rows([[]])


# -- image files: every mode, high bit depths, bombs, non-regular files --------------------------------

import os  # noqa: E402

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from dalle_pytorch.errors import NotRegularFileError  # noqa: E402
from dalle_pytorch.formats.images import ImageFileError, read_image  # noqa: E402

GRADIENT = np.linspace(0.0, 1.0, 32 * 32).reshape(32, 32)  # 0 .. 1 over the image


def _gray(path) -> np.ndarray:
    return np.asarray(read_image(path, "L"), dtype=np.float64) / 255.0


@pytest.mark.parametrize("name, make", [
    ("i16.png", lambda: Image.fromarray(np.round(GRADIENT * 65535).astype(np.uint16))),  # PNG: mode I;16
    ("i16.tiff", lambda: Image.fromarray(np.round(GRADIENT * 65535).astype(np.uint16))),
    ("i32.tiff", lambda: Image.fromarray(np.round(GRADIENT * 65535).astype(np.int32), "I")),
    ("float01.tiff", lambda: Image.fromarray(GRADIENT.astype(np.float32), "F")),
    ("float255.tiff", lambda: Image.fromarray((GRADIENT * 255).astype(np.float32), "F")),
    ("l8.png", lambda: Image.fromarray(np.round(GRADIENT * 255).astype(np.uint8), "L")),
])
def test_high_bit_depth_images_are_scaled_not_clipped(tmp_path, name, make):
    """A 0..65535 gradient used to become 99.6% white (PIL clips I;16 / I / F to 8 bits)."""
    path = tmp_path / name
    make().save(path)
    with Image.open(path) as im:
        mode = im.mode
    got = _gray(path)
    assert np.abs(got - GRADIENT).max() <= 1 / 255 + 1e-9, (mode, got.min(), got.max())
    assert (got == 1.0).mean() < 0.01


@pytest.mark.parametrize("mode", ["1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr", "I;16", "I", "F"])
def test_every_mode_reads_as_rgb_and_rgba(tmp_path, mode):
    im = Image.new(mode, (8, 6), 1 if mode in ("1", "F") else None)
    path = tmp_path / ("x.tiff" if mode in ("CMYK", "YCbCr", "I;16", "I", "F", "RGBX", "PA", "LA") else "x.png")
    try:
        im.save(path)
    except (OSError, ValueError, KeyError):
        path = tmp_path / "x.tiff"
        im.save(path)
    for target in ("RGB", "RGBA", "L"):
        out = read_image(path, target)
        assert out.mode == target and out.size == (8, 6)


def test_palette_transparency_becomes_alpha(tmp_path):
    im = Image.new("P", (4, 4), 0)
    im.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    im.save(tmp_path / "t.png", transparency=0)
    assert read_image(tmp_path / "t.png", "RGBA").getpixel((0, 0)) == (255, 0, 0, 0)


def test_decompression_bombs_and_junk_are_one_line_errors(tmp_path, monkeypatch):
    Image.new("RGB", (64, 64)).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 64 x 64 = 4096 > 1000: a "bomb" at this limit
    with pytest.raises(ImageFileError, match="big.png.*decompression bomb"):
        read_image(tmp_path / "big.png", "RGB")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 4096 // 3)  # more than twice the limit: PIL's hard error
    with pytest.raises(ImageFileError, match="decompression bomb"):
        read_image(tmp_path / "big.png", "RGB")
    (tmp_path / "junk.png").write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(64))
    with pytest.raises(ImageFileError, match="junk.png.*not a readable image"):
        read_image(tmp_path / "junk.png", "RGB")


def test_only_regular_files_are_read(tmp_path):
    fifo = tmp_path / "x.png"
    os.mkfifo(fifo)
    with pytest.raises(NotRegularFileError, match="FIFO"):
        read_image(fifo, "RGB")
    with pytest.raises(NotRegularFileError):
        read_image("/dev/zero", "RGB")
