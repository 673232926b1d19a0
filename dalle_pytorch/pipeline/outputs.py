"""What generate.py writes: a new folder per caption (`make_run_dir`), each image as a PNG with its
caption, seed and settings in text chunks, `grid.png`, and `generation.json` (`save_outputs`); and
the files it reads (`read_prompts`, `load_image` for `--img`).

PNG files hold no time stamps, so the same images give byte-identical files.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch
from PIL import Image

from dalle_pytorch.errors import GenerationError, setting
from dalle_pytorch.formats.files import read_bytes, write_json
from dalle_pytorch.formats.images import MODES, ImageFileError, make_grid, read_image, save_png, tensor_to_pil
from dalle_pytorch.version import __version__

__all__ = ["CaptionResult", "INDEX_NAME", "append_index", "check_outputs_dir", "create_run_dir", "file_sha256", "load_image",
           "load_mask",
           "make_run_dir", "plan_run_dirs", "read_prompts", "save_outputs", "slugify", "split_captions", "square_pixels"]

MAX_SLUG_LEN = 60
INDEX_NAME = "generate-index.jsonl"
MAX_PROMPTS_BYTES = 64 * 2**20  # a prompts file of a million captions is ~50 MB


def slugify(text: str, max_len: int = MAX_SLUG_LEN) -> str:
    """A folder name for a caption: lowercase ASCII letters, digits and single '-' only.

    Accents are stripped (NFKD), every other run of characters becomes one '-', and the result is
    cut to `max_len` characters at a '-' where possible. It can hold no '/', '.', or '..', never
    starts or ends with '-', and is 'untitled' when nothing is left.
    """
    ascii_text = unicodedata.normalize("NFKD", str(text)).encode("ascii", "ignore").decode("ascii").lower()
    slug = re.sub(r"[^a-z0-9]+", "-", ascii_text).strip("-")
    if len(slug) > max_len:
        cut = slug[:max_len]
        if slug[max_len] != "-" and "-" in cut[max_len // 2 :]:
            cut = cut[: cut.rindex("-")]  # end at a word boundary when it costs at most half the length
        slug = cut.strip("-")
    return slug or "untitled"


def make_run_dir(outputs_dir: str | os.PathLike, caption: str) -> Path:
    """Create and return a new folder `outputs_dir/<slug>`, or `<slug>-2`, `<slug>-3`, ... if taken.

    The folder is created with `mkdir` (no `exist_ok`), so an existing folder is never reused or
    overwritten, even when two runs start at the same moment.
    """
    root = Path(outputs_dir)
    root.mkdir(parents=True, exist_ok=True)
    slug = slugify(caption)
    for n in range(1, 100_000):
        folder = root / (slug if n == 1 else f"{slug}-{n}")
        try:
            folder.mkdir()
        except FileExistsError:
            continue
        return folder
    raise GenerationError(f"{root}: too many folders named {slug!r}-N")  # pragma: no cover


def plan_run_dirs(outputs_dir: str | os.PathLike, captions: list[str]) -> list[str]:
    """The folder names `make_run_dir` would give `captions` made one after another in `outputs_dir`
    (the k-th caption with a slug gets the k-th free name: slug, slug-2, ...), without creating them.

    A run sharded over several processes plans on one rank and creates them anywhere, so its folder
    names are those of a single process.
    """
    root = Path(outputs_dir)
    taken: set[str] = set()
    names = []
    for caption in captions:
        slug = slugify(caption)
        for n in range(1, 100_000):
            name = slug if n == 1 else f"{slug}-{n}"
            if name not in taken and not (root / name).exists():
                break
        taken.add(name)
        names.append(name)
    return names


def create_run_dir(outputs_dir: str | os.PathLike, name: str, caption: str) -> Path:
    """Create the planned folder `outputs_dir/name`; if something else took it meanwhile, the next free
    name for `caption` (as `make_run_dir`)."""
    folder = Path(outputs_dir) / name
    try:
        folder.mkdir(parents=True)
        return folder
    except FileExistsError:
        return make_run_dir(outputs_dir, caption)


def append_index(outputs_dir: str | os.PathLike, record: dict) -> Path:
    """Append one line (a run's record: captions, folders, files, seeds, ranks, timings) to
    `outputs_dir/generate-index.jsonl`, the index of every generate.py run into that folder."""
    path = Path(outputs_dir) / INDEX_NAME
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")
    return path


def check_outputs_dir(outputs_dir: str | os.PathLike) -> Path:
    """Create `outputs_dir` if needed and prove it writable (a probe file is created and removed), so
    that a bad folder is reported before any sampling; GenerationError in one line otherwise."""
    root = Path(outputs_dir)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise GenerationError(f"{setting('outputs_dir')} {str(root)!r} exists and is not a folder") from None
    except NotADirectoryError:
        raise GenerationError(f"{setting('outputs_dir')} {str(root)!r} lies under a file, not a folder") from None
    except OSError as e:
        raise GenerationError(f"{setting('outputs_dir')} {str(root)!r} cannot be created ({e.strerror or e})") from None
    try:
        fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=root)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise GenerationError(f"{setting('outputs_dir')} {str(root)!r} is not writable ({e.strerror or e})") from None
    return root


def split_captions(text: str) -> list[str]:
    """`--text`: one caption, or several separated by '|' (as in DALLE-pytorch's generate.py)."""
    return [t.strip() for t in text.split("|") if t.strip()]


def read_prompts(path: str | os.PathLike) -> list[str]:
    """`--prompts_file`: one caption per line; blank lines and lines starting with '#' are skipped."""
    p = Path(path)
    try:
        raw = read_bytes(p, setting("prompts_file"), MAX_PROMPTS_BYTES)
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise GenerationError(f"{setting('prompts_file')} {str(p)!r} is not UTF-8 text (byte {e.start}: {e.reason}); "
                              "save it "
                              "as UTF-8") from None
    except (OSError, ValueError) as e:
        raise GenerationError(str(e)) from None
    lines = [line.strip() for line in text.splitlines()]
    captions = [line for line in lines if line and not line.startswith("#")]
    if not captions:
        raise GenerationError(f"{setting('prompts_file')} {str(p)!r} holds no caption (one caption per line)")
    return captions


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def load_image(path: str | os.PathLike, image_size: int, channels: int = 3, what: str = "img") -> torch.Tensor:
    """`--img` (or the setting `what`, e.g. `--variations_of`): read an image file, centre-crop it to a
    square, resize to `image_size` (`square_pixels`).

    Returns (1, channels, image_size, image_size) float32 in [0, 1].
    """
    if channels not in MODES:
        raise GenerationError(f"cannot prime a model with {channels}-channel images")
    try:
        im = read_image(path, MODES[channels], setting(what))
    except (ImageFileError, OSError) as e:
        raise GenerationError(str(e)) from None
    return square_pixels(im, image_size, channels)


def square_pixels(im: Image.Image, image_size: int, channels: int = 3) -> torch.Tensor:
    """A PIL image, converted to `channels`, centre-cropped to a square and resized (bicubic) to `image_size`:
    (1, channels, image_size, image_size) float32 in [0, 1]."""
    if channels not in MODES:
        raise GenerationError(f"cannot prime a model with {channels}-channel images")
    im = im.convert(MODES[channels])
    w, h = im.size
    side = min(w, h)
    box = ((w - side) // 2, (h - side) // 2, (w - side) // 2 + side, (h - side) // 2 + side)
    if im.size != (image_size, image_size) or box != (0, 0, w, h):
        im = im.resize((image_size, image_size), Image.BICUBIC, box=box)
    data = torch.tensor(list(im.tobytes()), dtype=torch.uint8)
    return data.view(image_size, image_size, channels).permute(2, 0, 1)[None].float().div(255.0)


def load_mask(path: str | os.PathLike, image_size: int) -> torch.Tensor:
    """`--mask`: a black-and-white image, cropped and resized as `load_image` does (nearest neighbour):
    white (>= 50%) keeps the image's codes there, black generates.  Returns (image_size, image_size)
    float32 in [0, 1]."""
    try:
        im = read_image(path, "L", setting("mask"))
    except (ImageFileError, OSError) as e:
        raise GenerationError(str(e)) from None
    w, h = im.size
    side = min(w, h)
    box = ((w - side) // 2, (h - side) // 2, (w - side) // 2 + side, (h - side) // 2 + side)
    im = im.resize((image_size, image_size), Image.NEAREST, box=box)
    data = torch.tensor(list(im.tobytes()), dtype=torch.uint8)
    return data.view(image_size, image_size).float().div(255.0)


@dataclass
class CaptionResult:
    """What `save_outputs` wrote for one caption."""

    folder: Path
    caption: str
    files: list[Path]
    grid: Path
    json_path: Path
    record: dict
    images: torch.Tensor  # (n, c, H, W) float32 on CPU, in file order
    elapsed: float
    scores: Optional[list[float]] = None
    seeds: list[int] = field(default_factory=list)


def save_outputs(folder: Path, generated, *, seed: int, run_info: dict, record_extra: Optional[dict] = None) -> CaptionResult:
    """Write a caption's images (`pipeline.GeneratedImages`) into the new `folder`: `NNN_seedS.png`
    per image, `grid.png` and `generation.json` (caption, seeds, settings, `run_info`, timings)."""
    caption, settings = generated.caption, dict(generated.settings)
    if run_info.get("checkpoint", {}).get("sha256"):
        settings["checkpoint_sha256"] = run_info["checkpoint"]["sha256"]
    files, pil_images = [], []
    try:  # every file is written atomically; a failure (disk full) leaves no partial file and no empty folder
        for i, (pixels, image_seed) in enumerate(zip(generated.images, generated.seeds)):
            im = tensor_to_pil(pixels)
            path = folder / f"{i:03d}_seed{image_seed}.png"
            save_png(im, path, caption=caption, seed=image_seed, settings=settings)
            files.append(path)
            pil_images.append(im)
        grid = folder / "grid.png"
        save_png(make_grid(pil_images), grid, caption=caption, seed=seed, settings=settings)
    except OSError:
        if not any(folder.iterdir()):
            shutil.rmtree(folder, ignore_errors=True)
        raise
    n, elapsed = len(files), generated.elapsed
    record = {
        "caption": caption,
        "seed": seed,
        "seeds": list(generated.seeds),
        "num_images": n,
        "settings": {**settings, **(record_extra or {})},
        "use_cache": (record_extra or {}).get("use_cache"),
        "files": [p.name for p in files],
        "grid": grid.name,
        **run_info,
        "package_version": __version__,
        "torch_version": torch.__version__,
        "elapsed_seconds": round(elapsed, 4),
        "images_per_second": round(n / elapsed, 4) if elapsed > 0 else None,
        # the cached forward passes after each batch's prefill (plain decoding: one per code but the first)
        "forward_passes": list(generated.forward_passes),
    }
    if generated.scores is not None:
        record["clip_scores"] = generated.scores
        record["clip_original_index"] = generated.order
    json_path = folder / "generation.json"
    write_json(json_path, record)
    return CaptionResult(folder=folder, caption=caption, files=files, grid=grid, json_path=json_path, record=record,
                         images=generated.images, elapsed=elapsed, scores=generated.scores, seeds=list(generated.seeds))
