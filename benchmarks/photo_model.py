"""A small model trained on real photographs in a few CPU minutes, for measurements that a model with
random weights (nothing to predict) or the synthetic demo (flat colours) cannot stand in for.

    pip download --no-deps scikit-image -d /tmp/skimage        # its wheel carries 26 sample photos
    python benchmarks/photo_model.py --wheel /tmp/skimage/scikit_image-*.whl --out runs/photos
    python benchmarks/speculative.py --model photos --checkpoint runs/photos/dalle/dalle.safetensors

The photos (scikit-image's sample data: a cat, coffee, a rocket, grass, gravel, bricks, coins, the
moon, a page of text, ...) are read from the wheel itself, nothing is installed. Each is resized to
a short side of 96 pixels and cut into random 32 x 32 crops captioned after the photo ("a photo of
grass", "a photo of a cat"). A DiscreteVAE (8 x 8 codes of 256) and a DALLE (dim 128, depth 4)
are trained on them with the package's own scripts (`train_vae.py`, `train_dalle.py`).
"""
from __future__ import annotations

import argparse
import io
import random
import sys
import time
import zipfile
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

#: the sample photos used, and their captions
PHOTOS = {
    "astronaut.png": "an astronaut", "brick.png": "a brick wall", "chelsea.png": "a cat", "coffee.png": "a cup of coffee",
    "coins.png": "coins", "grass.png": "grass", "gravel.png": "gravel", "horse.png": "a horse",
    "hubble_deep_field.jpg": "galaxies", "moon.png": "the moon", "motorcycle_left.png": "a motorcycle",
    "page.png": "a page of text", "rocket.jpg": "a rocket", "retina.jpg": "a retina", "camera.png": "a cameraman",
    "ihc.png": "stained tissue", "color.png": "colour patches", "clock_motion.png": "a clock",
}


def photos_from_wheel(wheel: Path) -> dict:
    """{caption: PIL image} of the sample photos inside a scikit-image wheel."""
    out = {}
    with zipfile.ZipFile(wheel) as z:
        for name, caption in PHOTOS.items():
            member = f"skimage/data/{name}"
            if member in z.namelist():
                out[caption] = Image.open(io.BytesIO(z.read(member))).convert("RGB")
    if not out:
        raise SystemExit(f"no sample photos in {wheel}: is it a scikit-image wheel?")
    return out


def make_crops(photos: dict, folder: Path, per_photo: int, size: int = 32, seed: int = 0) -> int:
    """Write `per_photo` random size x size crops of each photo (short side resized to 3 x size) with
    caption files; returns the number of pairs."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    count = 0
    for caption, img in photos.items():
        w, h = img.size
        scale = 3 * size / min(w, h)
        img = img.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.BICUBIC)
        for _ in range(per_photo):
            x, y = rng.randint(0, img.width - size), rng.randint(0, img.height - size)
            stem = folder / f"crop_{count:05d}"
            img.crop((x, y, x + size, y + size)).save(stem.with_suffix(".png"))
            stem.with_suffix(".txt").write_text(f"a photo of {caption}\n")
            count += 1
    return count


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--wheel", type=Path, required=True, help="a scikit-image wheel (pip download --no-deps scikit-image)")
    p.add_argument("--out", type=Path, default=Path("runs/photos"))
    p.add_argument("--per_photo", type=int, default=64, help="crops per photo (default 64)")
    p.add_argument("--vae_steps", type=int, default=600)
    p.add_argument("--dalle_steps", type=int, default=800)
    args = p.parse_args(argv)
    from dalle_pytorch.cli import train_dalle, train_vae
    from dalle_pytorch.text.factory import HugTokenizer

    t0 = time.perf_counter()
    data = args.out / "data"
    n = make_crops(photos_from_wheel(args.wheel), data, args.per_photo)
    print(f"{n} crops of {len(PHOTOS)} photos in {data}", flush=True)
    # a word-level tokenizer over the captions' words (0 = [PAD])
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

    words = sorted({w for c in PHOTOS.values() for w in f"a photo of {c}".split()})
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(["[PAD]", "[UNK]", *words])}, unk_token="[UNK]"))
    tok.normalizer, tok.pre_tokenizer = normalizers.Lowercase(), pre_tokenizers.Whitespace()
    args.out.mkdir(parents=True, exist_ok=True)
    tok_path = args.out / "tokenizer.json"
    tok.save(str(tok_path))
    HugTokenizer(tok_path)  # it loads
    train_vae.main(train_vae.parse_args([
        "--image_folder", str(data), "--image_size", "32", "--num_layers", "2", "--num_tokens", "256", "--emb_dim", "64",
        "--hidden_dim", "64", "--num_resnet_blocks", "1", "--batch_size", "32", "--max_steps", str(args.vae_steps),
        "--output_dir", str(args.out / "vae"), "--no_progress", "--sample_every", "0"]))
    train_dalle.main(train_dalle.parse_args([
        "--vae_path", str(args.out / "vae" / "vae.safetensors"), "--image_text_folder", str(data),
        "--bpe_path", str(tok_path), "--hug", "--text_seq_len", "8", "--dim", "128", "--depth", "4", "--heads", "4",
        "--dim_head", "32", "--batch_size", "32", "--max_steps", str(args.dalle_steps), "--shift_tokens", "--rotary_emb",
        "--output_dir", str(args.out / "dalle"), "--no_progress", "--sample_every", "0"]))
    print(f"trained in {time.perf_counter() - t0:.0f} s: {args.out / 'dalle' / 'dalle.safetensors'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
