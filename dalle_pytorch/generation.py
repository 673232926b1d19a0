"""Helpers of `generate.py`: output folders, PNG / grid / JSON writing, seeds, devices, the demo model.

The command line lives in `generate.py` (repository root); everything it does that is worth
testing on its own lives here:

    slugify(caption)                 -> "a-red-circle-on-a-blue-background"
    make_run_dir(outputs_dir, text)  -> a NEW folder outputs/<slug>, <slug>-2, <slug>-3, ...
    batch_seeds(seed, n, batch_size) -> [(seed + k, rows of batch k), ...]
    save_png(image, path, caption=..., seed=..., settings=...)  PNG with tEXt chunks
    make_grid(images)                -> one PIL image
    generate_caption(model, tokenizer, caption, ...)  sample, write PNGs + grid.png + generation.json

A run is reproducible: batch k of a caption is sampled with `torch.Generator().manual_seed(seed + k)`
(a CPU generator, so the noise does not depend on the device), PNG files hold no time stamps, and
the same seed, batch size, settings, checkpoint, device and dtype give byte-identical PNG files.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import re
import time
import unicodedata
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from dalle_pytorch.images import MODES
from dalle_pytorch.images import make_grid, tensor_to_pil
from dalle_pytorch.version import __version__

__all__ = [
    "DEMO",
    "GenerationError",
    "CaptionResult",
    "batch_seeds",
    "demo_path",
    "file_sha256",
    "generate_caption",
    "load_image",
    "make_grid",
    "make_run_dir",
    "png_text",
    "read_prompts",
    "resolve_checkpoint",
    "resolve_device",
    "resolve_dtype",
    "save_png",
    "slugify",
    "split_captions",
    "tensor_to_pil",
]

#: The `--dalle_path` value (and default) that selects the demo model shipped with the package.
DEMO = "demo"
DEMO_FILE = "dalle.safetensors"
MAX_SLUG_LEN = 60
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class GenerationError(ValueError):
    """A problem with the request (bad flag combination, missing file, ...), reported without a traceback."""


# ------------------------------------------------------------------------------------------------
# names and folders
# ------------------------------------------------------------------------------------------------


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


def split_captions(text: str) -> list[str]:
    """`--text`: one caption, or several separated by '|' (as in DALLE-pytorch's generate.py)."""
    return [t.strip() for t in text.split("|") if t.strip()]


def read_prompts(path: str | os.PathLike) -> list[str]:
    """`--prompts_file`: one caption per line; blank lines and lines starting with '#' are skipped."""
    p = Path(path)
    if not p.is_file():
        raise GenerationError(f"--prompts_file {str(p)!r} does not exist or is not a file")
    lines = [line.strip() for line in p.read_text(encoding="utf-8").splitlines()]
    captions = [line for line in lines if line and not line.startswith("#")]
    if not captions:
        raise GenerationError(f"--prompts_file {str(p)!r} holds no caption (one caption per line)")
    return captions


# ------------------------------------------------------------------------------------------------
# checkpoint, device, dtype
# ------------------------------------------------------------------------------------------------


def demo_path() -> Path:
    """The demo model file shipped inside the package (`dalle_pytorch/demo/dalle.safetensors`)."""
    ref = resources.files("dalle_pytorch").joinpath("demo", DEMO_FILE)
    path = Path(str(ref))
    if not path.is_file():
        raise GenerationError(
            f"the demo model {str(path)!r} is missing from this installation; reinstall the package or train it "
            "with scripts/train_demo.sh"
        )
    return path


def resolve_checkpoint(dalle_path: Optional[str]) -> tuple[Path, bool]:
    """`--dalle_path`: None or 'demo' -> (the packaged demo file, True); otherwise (the path, False).

    Raises GenerationError when the file does not exist (a file literally named 'demo' in the
    current folder takes precedence over the packaged model).
    """
    if dalle_path is None or (dalle_path == DEMO and not Path(DEMO).exists()):
        return demo_path(), True
    path = Path(dalle_path).expanduser()
    if not path.exists():
        raise GenerationError(f"--dalle_path {dalle_path!r} does not exist (use --dalle_path demo for the demo model)")
    if path.is_dir():
        raise GenerationError(f"--dalle_path {dalle_path!r} is a folder; give the checkpoint file")
    return path, False


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' -> cuda if available, else cpu; anything else is passed to torch.device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise GenerationError(f"--device {name!r} is not a device torch knows ({e})") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise GenerationError(f"--device {name!r}: CUDA is not available on this machine (use --device cpu)")
    return device


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """'float32' | 'bfloat16' | 'float16'; float16 is refused on CPU (use bfloat16 there)."""
    if name not in DTYPES:
        raise GenerationError(f"--dtype must be one of {', '.join(DTYPES)}, got {name!r}")
    if name == "float16" and device.type == "cpu":
        raise GenerationError("--dtype float16 is not supported on CPU (half-precision matmuls are slow or missing "
                              "there); use --dtype bfloat16 or float32, or a CUDA device")
    return DTYPES[name]


def batch_seeds(seed: int, num_images: int, batch_size: int) -> list[tuple[int, int]]:
    """[(seed of batch k, images in batch k), ...]: batch k is sampled with seed + k."""
    if num_images < 1:
        raise GenerationError(f"--num_images must be >= 1, got {num_images}")
    if batch_size < 1:
        raise GenerationError(f"--batch_size must be >= 1, got {batch_size}")
    n_batches = math.ceil(num_images / batch_size)
    return [(seed + k, min(batch_size, num_images - k * batch_size)) for k in range(n_batches)]


# ------------------------------------------------------------------------------------------------
# images
# ------------------------------------------------------------------------------------------------



def load_image(path: str | os.PathLike, image_size: int, channels: int = 3) -> torch.Tensor:
    """`--img`: read an image file, centre-crop it to a square, resize to `image_size`.

    Returns (1, channels, image_size, image_size) float32 in [0, 1].
    """
    p = Path(path)
    if not p.is_file():
        raise GenerationError(f"--img {str(p)!r} does not exist or is not a file")
    if channels not in MODES:
        raise GenerationError(f"cannot prime a model with {channels}-channel images")
    try:
        with Image.open(p) as im:
            im.load()
            im = im.convert(MODES[channels])
    except OSError as e:
        raise GenerationError(f"--img {str(p)!r} is not a readable image ({e})") from None
    w, h = im.size
    side = min(w, h)
    box = ((w - side) // 2, (h - side) // 2, (w - side) // 2 + side, (h - side) // 2 + side)
    if im.size != (image_size, image_size) or box != (0, 0, w, h):
        im = im.resize((image_size, image_size), Image.BICUBIC, box=box)
    data = torch.tensor(list(im.tobytes()), dtype=torch.uint8)
    return data.view(image_size, image_size, channels).permute(2, 0, 1)[None].float().div(255.0)


def png_text(caption: str, seed: int, settings: dict) -> PngInfo:
    """PNG text chunks: 'caption', 'seed', 'settings' (JSON), 'software'."""
    info = PngInfo()
    info.add_itxt("caption", caption)  # iTXt: UTF-8, so any caption survives
    info.add_text("seed", str(seed))
    info.add_text("settings", json.dumps(settings, sort_keys=True))
    info.add_text("software", f"dalle_pytorch {__version__}")
    return info


def save_png(image: Image.Image, path: str | os.PathLike, *, caption: str, seed: int, settings: dict) -> None:
    """Write `image` as PNG with the caption, seed and settings in its text chunks (no time stamp)."""
    image.save(path, format="PNG", pnginfo=png_text(caption, seed, settings))


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


# ------------------------------------------------------------------------------------------------
# one caption
# ------------------------------------------------------------------------------------------------


@dataclass
class CaptionResult:
    """What `generate_caption` wrote."""

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


def generate_caption(
    model: torch.nn.Module,
    tokenizer: Any,
    caption: str,
    *,
    outputs_dir: str | os.PathLike,
    seed: int,
    num_images: int = 4,
    batch_size: int = 4,
    filter_thres: float = 0.9,
    top_p: Optional[float] = None,
    temperature: float = 1.0,
    cond_scale: float = 1.0,
    null_text: Optional[str] = None,
    img: Optional[torch.Tensor] = None,
    img_path: Optional[str] = None,
    num_init_img_tokens: Optional[int] = None,
    use_cache: bool = True,
    compile: bool | str = False,
    clip: Optional[torch.nn.Module] = None,
    progress: bool = True,
    run_info: Optional[dict] = None,
    on_batch: Optional[Callable[[int], None]] = None,
) -> CaptionResult:
    """Sample `num_images` images for `caption` and write them to a new folder under `outputs_dir`.

    Writes `NNN_seedS.png` per image (caption / seed / settings in PNG text chunks), `grid.png` and
    `generation.json` (caption, seeds, settings, `run_info` such as the checkpoint hash, timings).
    Batch k holds images k*batch_size ... and is sampled with a CPU generator seeded `seed + k`.
    With `clip`, images are reranked by CLIP score (best first) and the scores recorded.
    `compile` is passed to `generate_images` (it changes the speed, not the images).
    """
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    text_len = model.text_seq_len
    try:
        text = tokenizer.tokenize([caption], text_len).to(device)
        null = tokenizer.tokenize([null_text], text_len).to(device) if null_text is not None else None
    except ValueError as e:
        raise GenerationError(str(e)) from None
    settings = {
        "filter_thres": filter_thres,
        "top_p": top_p,
        "temperature": temperature,
        "cond_scale": cond_scale,
        "null_text": null_text,
        "num_init_img_tokens": num_init_img_tokens if img is not None else None,
        "img": os.path.basename(img_path) if img_path else None,
        "batch_size": batch_size,
    }
    if run_info and run_info.get("checkpoint", {}).get("sha256"):
        settings["checkpoint_sha256"] = run_info["checkpoint"]["sha256"]
    batches = batch_seeds(seed, num_images, batch_size)
    prime = img.to(device=device, dtype=dtype) if img is not None else None

    images, seeds, scores = [], [], []
    start = time.perf_counter()
    for batch_seed, n in batches:
        generator = torch.Generator().manual_seed(batch_seed)
        try:
            out = model.generate_images(
                text, clip=clip, filter_thres=filter_thres, top_p=top_p, temperature=temperature, img=prime,
                num_init_img_tokens=num_init_img_tokens, cond_scale=cond_scale, null_text=null,
                use_cache=use_cache, num_images=n, generator=generator, progress=progress, compile=compile,
            )
        except ValueError as e:  # bad settings for this model (e.g. num_init_img_tokens too large)
            raise GenerationError(str(e)) from None
        if clip is not None:
            out, batch_scores = out
            scores.extend(float(s) for s in batch_scores.float().cpu())
        images.append(out.float().cpu())
        seeds.extend([batch_seed] * n)
        if on_batch is not None:
            on_batch(n)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elapsed = time.perf_counter() - start
    pixels = torch.cat(images)

    order = list(range(num_images))
    if clip is not None:
        order = sorted(order, key=lambda i: -scores[i])  # best CLIP score first
        pixels, seeds, scores = pixels[order], [seeds[i] for i in order], [scores[i] for i in order]

    folder = make_run_dir(outputs_dir, caption)
    files, pil_images = [], []
    for i in range(num_images):
        im = tensor_to_pil(pixels[i])
        path = folder / f"{i:03d}_seed{seeds[i]}.png"
        save_png(im, path, caption=caption, seed=seeds[i], settings=settings)
        files.append(path)
        pil_images.append(im)
    grid = folder / "grid.png"
    save_png(make_grid(pil_images), grid, caption=caption, seed=seed, settings=settings)

    record = {
        "caption": caption,
        "seed": seed,
        "seeds": seeds,
        "num_images": num_images,
        "settings": {**settings, "use_cache": use_cache, "compile": compile},
        "use_cache": use_cache,
        "files": [p.name for p in files],
        "grid": grid.name,
        **(run_info or {}),
        "package_version": __version__,
        "torch_version": torch.__version__,
        "device": str(device),
        "dtype": str(dtype).replace("torch.", ""),
        "elapsed_seconds": round(elapsed, 4),
        "images_per_second": round(num_images / elapsed, 4) if elapsed > 0 else None,
    }
    if clip is not None:
        record["clip_scores"] = scores
        record["clip_original_index"] = order
    json_path = folder / "generation.json"
    _write_json(json_path, record)
    return CaptionResult(folder=folder, caption=caption, files=files, grid=grid, json_path=json_path,
                         record=record, images=pixels, elapsed=elapsed, scores=scores or None, seeds=seeds)
