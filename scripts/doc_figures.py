"""Make the pictures in docs/images/ (run from the repository root; a minute on a CPU).

    python scripts/doc_figures.py

* masked_completion.png: the demo model completing images under a mask (generate.py --img --mask):
  per row the original, the mask (white keeps), then four completions.
* canvas.png: canvases twice the demo model's trained width (generate.py --canvas 8x16): two captions, then
  an image (left) outpainted to the right (--img, kept on the left half).
* variations.png: Pipeline.variations of one image from the demo model (generate.py --variations_of): per row a
  strength (0.25, 0.5, 0.75), the source, four variations resampling the bottom-right share (suffix), then four
  resampling random positions (random).
* curves.png: python -m dalle_pytorch.train.curves of a short real train_vae.py run on the synthetic shapes.
"""
from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "images"


def masked_completion() -> Path:
    from dalle_pytorch import Pipeline, SamplingConfig
    from dalle_pytorch.formats.images import tensor_to_pil
    from dalle_pytorch.pipeline.outputs import load_image
    from dalle_pytorch.synthetic import render

    pipe = Pipeline.from_checkpoint("demo")
    size, scale, pad = 32, 4, 6
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for caption, shape, mask_box in (
            ("a red circle on a blue background", ("circle", "red", "blue"), (8, 8, 24, 24)),  # inpaint the middle
            ("a green square on a white background", ("square", "green", "white"), (0, 16, 32, 32)),  # bottom half
        ):
            path = Path(tmp) / "img.png"
            render(*shape, size, rng=1).save(path)
            img = load_image(path, size)
            mask = torch.ones(size, size)
            x0, y0, x1, y1 = mask_box
            mask[y0:y1, x0:x1] = 0
            out = pipe.generate(caption, num_images=4, seed=0, img=img, mask=mask,
                                sampling=SamplingConfig(filter_thres=0.9))
            tiles = [tensor_to_pil(img[0]), tensor_to_pil(mask[None])] + out.pil_images()
            rows.append(tiles)
    w = size * scale
    sheet = Image.new("RGB", (pad + 6 * (w + pad), pad + len(rows) * (w + pad)), (255, 255, 255))
    for r, tiles in enumerate(rows):
        for c, tile in enumerate(tiles):
            sheet.paste(tile.convert("RGB").resize((w, w), Image.NEAREST), (pad + c * (w + pad), pad + r * (w + pad)))
    ImageDraw.Draw(sheet)
    path = OUT / "masked_completion.png"
    sheet.save(path)
    return path


def canvas() -> Path:
    """Canvases twice the trained width (8 x 16 codes) from the demo model: two captions sampled freely,
    then an image outpainted to the right (its codes kept on the left half)."""
    from dalle_pytorch import Pipeline, SamplingConfig
    from dalle_pytorch.pipeline.outputs import load_image
    from dalle_pytorch.synthetic import render

    pipe = Pipeline.from_checkpoint("demo")
    size, scale, pad = 32, 4, 6
    sampling = SamplingConfig(filter_thres=0.9)
    rows = []
    for caption in ("a red circle on a blue background", "a yellow triangle on a black background"):
        rows.append([None] + pipe.generate(caption, num_images=3, seed=0, canvas=(8, 16), sampling=sampling).pil_images())
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "img.png"
        render("square", "green", "white", size, rng=1).save(path)
        img = load_image(path, size)
    caption = "a green square on a white background"
    out = pipe.generate(caption, num_images=3, seed=0, canvas=(8, 16), img=img, sampling=sampling)
    rows.append([path_image(img)] + out.pil_images())
    w = size * scale
    sheet = Image.new("RGB", (pad + (w + pad) + 3 * (2 * w + pad), pad + len(rows) * (w + pad)), (255, 255, 255))
    for r, tiles in enumerate(rows):
        x = pad
        for tile in tiles:
            if tile is not None:
                sheet.paste(tile.convert("RGB").resize((tile.width * scale, tile.height * scale), Image.NEAREST),
                            (x, pad + r * (w + pad)))
            x += (w if tile is None or tile.width == size else 2 * w) + pad
    path = OUT / "canvas.png"
    sheet.save(path)
    return path


def path_image(img: torch.Tensor) -> Image.Image:
    from dalle_pytorch.formats.images import tensor_to_pil

    return tensor_to_pil(img[0])


def variations() -> Path:
    """The demo model's variations of one of its images at three strengths, both modes (see the docstring above)."""
    from dalle_pytorch import Pipeline, SamplingConfig

    pipe = Pipeline.from_checkpoint("demo")
    size, scale, pad, top, left = 32, 4, 6, 22, 96
    caption = "a yellow triangle on a blue background"
    sampling = SamplingConfig(filter_thres=0.9)
    # the source: image 1 of a batch of 16 (seed 0), whose triangle sits near the middle (most of the demo's
    # shapes sit in the bottom half, which suffix variations at 0.5 resample whole)
    first = pipe.generate(caption, num_images=16, batch_size=16, seed=0, sampling=sampling)
    source = first.codes[1]
    strengths = (0.25, 0.5, 0.75)
    w = size * scale
    sheet = Image.new("RGB", (left + 9 * (w + pad) + pad, top + len(strengths) * (w + pad)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for x, label in ((0, "source"), (1, "suffix: the last codes resampled (default)"), (5, "random: random codes resampled")):
        draw.text((left + x * (w + pad) + (pad if x > 1 else 0), 6), label, fill=(0, 0, 0))
    for r, strength in enumerate(strengths):
        y = top + r * (w + pad)
        draw.text((6, y + w // 2 - 6), f"strength {strength}", fill=(0, 0, 0))
        tiles = first.pil_images()[1:2]
        for mode in ("suffix", "random"):
            tiles += pipe.variations(source, 4, strength, caption=caption, mode=mode, seed=1,
                                     sampling=sampling).pil_images()
        for c, tile in enumerate(tiles):
            x = left + c * (w + pad) + (pad if c > 4 else 0)
            sheet.paste(tile.convert("RGB").resize((w, w), Image.NEAREST), (x, y))
    path = OUT / "variations.png"
    sheet.save(path)
    return path


def curves() -> Path:
    from dalle_pytorch.synthetic import make_dataset
    from dalle_pytorch.train.curves import write_curves

    with tempfile.TemporaryDirectory() as tmp:
        data, run = Path(tmp) / "shapes", Path(tmp) / "vae"
        make_dataset(data, 64, image_size=32, seed=0)
        subprocess.run([sys.executable, str(ROOT / "train_vae.py"), "--image_folder", str(data), "--image_size", "32",
                        "--num_layers", "2", "--num_tokens", "64", "--emb_dim", "32", "--hidden_dim", "32",
                        "--num_resnet_blocks", "0", "--batch_size", "16", "--max_steps", "150", "--warmup_steps", "20",
                        "--save_every_steps", "50", "--output_dir", str(run), "--no_progress", "--sample_every", "0"],
                       check=True, capture_output=True)
        return write_curves(run, OUT / "curves.png")


if __name__ == "__main__":
    OUT.mkdir(parents=True, exist_ok=True)
    print(masked_completion())
    print(canvas())
    print(variations())
    print(curves())
