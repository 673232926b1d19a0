"""Caption/image datasets for training.

Two sources are supported:

* :class:`TextImageDataset` - a folder tree of images, each paired with a ``.txt``
  caption file of the same relative path (``a/x.jpg`` pairs with ``a/x.txt``).
  The folder is scanned once and the list of pairs is cached on disk, so later
  starts on an unchanged folder are fast. Unreadable images and empty captions
  are skipped (with a warning) up to a configurable fraction.
* :func:`webdataset_loader` - tar shards in the WebDataset format, read with the
  optional ``webdataset`` package (``pip install dalle-pytorch[webdataset]``).

Images are transformed with PIL + torch only: convert to RGB (RGBA when
``transparent``), random resized square crop, float tensor in ``[0, 1]``.
"""

from __future__ import annotations

import glob
import io
import json
import math
import os
import random
import stat
import time
import warnings
from functools import partial
from typing import Any, Iterable, Sequence

import torch
from PIL import Image
from torch.utils.data import Dataset

from dalle_pytorch.fileio import atomic_write_bytes

__all__ = [
    "IMAGE_EXTENSIONS",
    "TextImageDataset",
    "image_to_tensor",
    "random_resized_crop",
    "webdataset_loader",
]

#: Image file extensions picked up by :class:`TextImageDataset` (compared case-insensitively).
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")

_CACHE_VERSION = 1
_DEFAULT_CACHE = os.path.join(".dalle_cache", "index.json")
# A directory whose mtime lies this close to (or after) the moment it was scanned may
# still change within the same mtime tick without its mtime changing ("racy" entry,
# as in git's index); a cache holding such a directory is not trusted on the next start.
_RACY_WINDOW_NS = 2_000_000_000

_WEBDATASET_HINT = (
    "webdataset_loader needs the optional 'webdataset' package: "
    "pip install dalle-pytorch[webdataset]"
)


# --------------------------------------------------------------------------- transforms


def random_resized_crop(
    image: Image.Image,
    size: int,
    scale: tuple[float, float] = (0.75, 1.0),
    ratio: tuple[float, float] = (1.0, 1.0),
    rng: random.Random | None = None,
) -> Image.Image:
    """Crop a random region of ``image`` and resize it to ``size x size`` (bilinear).

    Same algorithm as torchvision's ``RandomResizedCrop``: up to 10 tries to draw a
    region with area ``scale`` (fraction of the image) and aspect ratio ``ratio``
    (log-uniform) that fits; otherwise a central crop with the closest valid ratio.

    Args:
        image: input PIL image of any size and mode.
        size: output side length in pixels.
        scale: (min, max) fraction of the image area covered by the crop.
        ratio: (min, max) width / height of the crop.
        rng: source of randomness (a fresh unseeded one if None).

    Returns:
        PIL image of size ``(size, size)``, same mode as ``image``.
    """
    rng = rng if rng is not None else random.Random()
    width, height = image.size
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    box = None
    for _ in range(10):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = rng.randint(0, height - h)
            left = rng.randint(0, width - w)
            box = (left, top, left + w, top + h)
            break
    if box is None:  # fallback: central crop
        in_ratio = width / height
        if in_ratio < min(ratio):
            w, h = width, int(round(width / min(ratio)))
        elif in_ratio > max(ratio):
            w, h = int(round(height * max(ratio))), height
        else:
            w, h = width, height
        top, left = (height - h) // 2, (width - w) // 2
        box = (left, top, left + w, top + h)
    return image.resize((size, size), Image.BILINEAR, box=box)


def image_to_tensor(image: Image.Image) -> torch.Tensor:
    """Convert an 8-bit PIL image (L, RGB or RGBA) to a float tensor.

    Args:
        image: PIL image of size (W, H) with C channels.

    Returns:
        FloatTensor of shape (C, H, W) with values in [0, 1].
    """
    width, height = image.size
    channels = len(image.getbands())
    data = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8)
    return data.view(height, width, channels).permute(2, 0, 1).float().div_(255.0).contiguous()


def _load_image(source: Any, mode: str) -> Image.Image:
    """Open and fully decode an image (path or file object), converted to ``mode``."""
    with Image.open(source) as img:
        img.load()
        return img.convert(mode)


def _caption_lines(text: str) -> list[str]:
    """Non-blank, stripped lines of a caption file."""
    return [line.strip() for line in text.splitlines() if line.strip()]


def _tokenize_one(tokenizer: Any, text: str, text_len: int, truncate: bool) -> torch.Tensor:
    """Tokenize one caption to a LongTensor of shape (text_len,)."""
    tokens = tokenizer.tokenize([text], text_len, truncate)
    tokens = torch.as_tensor(tokens)
    if tokens.dim() == 2:
        tokens = tokens[0]
    return tokens.long()


def _default_tokenizer() -> Any:
    """The package tokenizer (imported lazily: it loads a vocabulary)."""
    from dalle_pytorch import tokenizer as module

    if hasattr(module, "get_default_tokenizer"):
        return module.get_default_tokenizer()
    tok = getattr(module, "tokenizer", None)
    if tok is not None and hasattr(tok, "tokenize"):
        return tok
    if hasattr(module, "tokenize"):
        return module
    raise AttributeError("dalle_pytorch.tokenizer provides neither `tokenizer` nor `tokenize`")


def _mix_seed(*values: int) -> int:
    """Combine integers into one 64-bit seed (stable across processes and runs)."""
    h = 0x243F6A8885A308D3
    for v in values:
        h = ((h ^ (v & 0xFFFFFFFFFFFFFFFF)) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
        h ^= h >> 29
    return h


class _BadSample(Exception):
    """A sample that cannot be served (unreadable image, empty caption, ...)."""


# --------------------------------------------------------------------------- index scan/cache


def _is_hidden(name: str) -> bool:
    return name.startswith(".")


def _scan(root: str) -> tuple[list[tuple[str, str]], dict[str, int]]:
    """Walk ``root`` recursively; return the sorted (image, caption) relative paths and
    the mtime (ns) of every directory visited (relative path -> mtime, root is ".").

    Hidden files and directories (name starting with ".") are ignored. A directory's
    mtime is read before it is listed, so any later change is seen as a new mtime.
    """
    images: dict[str, str] = {}
    captions: dict[str, str] = {}
    dirs: dict[str, int] = {}
    seen: set[tuple[int, int]] = set()
    stack = ["."]
    while stack:
        rel = stack.pop()
        full = os.path.join(root, rel)
        st = os.stat(full)
        if (st.st_dev, st.st_ino) in seen:  # symlink loop / duplicate
            continue
        seen.add((st.st_dev, st.st_ino))
        dirs[rel] = st.st_mtime_ns
        with os.scandir(full) as it:
            entries = list(it)
        for entry in entries:
            if _is_hidden(entry.name):
                continue
            child = entry.name if rel == "." else f"{rel}/{entry.name}"
            try:
                if entry.is_dir():
                    stack.append(child)
                    continue
            except OSError:
                continue
            stem, ext = os.path.splitext(child)
            ext = ext.lower()
            if ext == ".txt":
                captions[stem] = child
            elif ext in IMAGE_EXTENSIONS:
                if stem in images:
                    first, second = sorted((images[stem], child))
                    warnings.warn(
                        f"{root}: two images for caption {stem}.txt ({first}, {second}); using {first}"
                    )
                    images[stem] = first
                else:
                    images[stem] = child
    pairs = sorted((images[k], captions[k]) for k in images.keys() & captions.keys())
    return pairs, dirs


def _cache_valid(data: Any, root: str) -> bool:
    """Whether a loaded cache describes ``root`` as it is now (stats directories only)."""
    if not isinstance(data, dict) or data.get("version") != _CACHE_VERSION:
        return False
    if data.get("root") != root or data.get("extensions") != list(IMAGE_EXTENSIONS):
        return False
    dirs, pairs, scan_ns = data.get("dirs"), data.get("pairs"), data.get("scan_time_ns")
    if not isinstance(dirs, dict) or not isinstance(pairs, list) or not isinstance(scan_ns, int):
        return False
    if "." not in dirs or data.get("count") != len(pairs):
        return False
    for rel, mtime in dirs.items():
        if not isinstance(mtime, int) or mtime > scan_ns - _RACY_WINDOW_NS:
            return False
        try:
            st = os.stat(os.path.join(root, rel))
        except OSError:
            return False
        if not stat.S_ISDIR(st.st_mode) or st.st_mtime_ns != mtime:
            return False
    return True


def _write_json_atomic(path: str, data: Any) -> None:
    """Write ``data`` as JSON to ``path`` atomically, with the usual file permissions."""
    atomic_write_bytes(path, json.dumps(data).encode("utf-8"))


# --------------------------------------------------------------------------- folder dataset


class TextImageDataset(Dataset):
    """Images paired with ``.txt`` captions by relative path, searched recursively.

    Layout: ``folder/a/x.jpg`` pairs with ``folder/a/x.txt``; ``folder/b/x.jpg`` is a
    different sample with its own caption. Images: png, jpg, jpeg, bmp, webp (any case).
    Hidden files and directories (name starting with ".") are ignored. A caption file
    holds one caption per line (blank lines ignored); each time a sample is read one line
    is chosen at random.

    Randomness (caption line, crop) is a deterministic function of ``seed``, the epoch
    set with :meth:`set_epoch` and the sample index, so it does not depend on the number
    of DataLoader workers; call ``set_epoch`` every epoch to get fresh crops/captions, or
    pass ``seed=None`` for non-reproducible randomness.

    Index cache: the scan result is stored in ``folder/.dalle_cache/index.json`` (or in
    the file given as ``index_cache``) with the mtime of every directory of the tree. A
    later start reuses it after stat-ing only those directories (not the files); adding,
    removing or renaming a file or directory invalidates it. If the cache cannot be
    written (read-only folder), a warning is issued and the dataset works without it.
    A custom cache path should lie outside the folder or in a hidden directory of it.

    Bad samples: an image that cannot be decoded, or a caption file that is empty (or
    unreadable), is skipped with a ``warnings.warn`` naming the file and another sample is
    returned instead (the next index, or a random one when ``shuffle`` is True). Skipped
    samples are recorded in ``num_skipped`` / ``skipped`` (each distinct bad sample is
    counted once). When more than ``max(1, int(max_bad_fraction * len(dataset)))`` samples
    have been skipped a ``RuntimeError`` is raised. With DataLoader workers each worker
    process holds its own copy of the dataset, so counts (and the limit) are per worker
    and the main process's ``num_skipped`` stays 0.

    Args:
        folder: root folder of the dataset.
        text_len: length of the tokenized caption.
        image_size: side length of the output image.
        truncate_captions: truncate captions longer than ``text_len`` tokens (otherwise
            the tokenizer raises ``ValueError``, which is not treated as a bad sample).
        resize_ratio: minimum fraction of the image area kept by the random crop.
        transparent: return RGBA (4 channels) instead of RGB.
        tokenizer: object with ``tokenize(texts, context_length, truncate_text) ->
            LongTensor (b, context_length)``; defaults to ``dalle_pytorch.tokenizer``.
        shuffle: replace a bad sample by a random one instead of the next one.
        index_cache: True (cache in the folder), False (no cache), or a cache file path.
        max_bad_fraction: fraction of the dataset that may be skipped before raising.
        seed: seed of the per-sample randomness, or None for fresh randomness.

    Items: ``(text, image)`` with ``text`` a LongTensor of shape (text_len,) and ``image``
    a FloatTensor of shape (3 or 4, image_size, image_size) in [0, 1].
    """

    def __init__(
        self,
        folder: str | os.PathLike,
        text_len: int = 256,
        image_size: int = 128,
        truncate_captions: bool = False,
        resize_ratio: float = 0.75,
        transparent: bool = False,
        tokenizer: Any = None,
        shuffle: bool = False,
        index_cache: bool | str | os.PathLike = True,
        max_bad_fraction: float = 0.01,
        seed: int | None = 0,
    ) -> None:
        super().__init__()
        root = os.path.realpath(os.fspath(folder))
        if not os.path.isdir(root):
            raise ValueError(f"TextImageDataset: {os.fspath(folder)!r} is not a directory")
        if not 0.0 < resize_ratio <= 1.0:
            raise ValueError(f"resize_ratio must be in (0, 1], got {resize_ratio}")
        if max_bad_fraction < 0:
            raise ValueError(f"max_bad_fraction must be >= 0, got {max_bad_fraction}")
        self.folder = root
        self.text_len = text_len
        self.image_size = image_size
        self.truncate_captions = truncate_captions
        self.resize_ratio = resize_ratio
        self.transparent = transparent
        self.mode = "RGBA" if transparent else "RGB"
        self.shuffle = shuffle
        self.max_bad_fraction = max_bad_fraction
        self.seed = seed
        self.epoch = 0
        self.tokenizer = tokenizer if tokenizer is not None else _default_tokenizer()

        if index_cache is True:
            self.cache_path: str | None = os.path.join(root, _DEFAULT_CACHE)
        elif index_cache is False or index_cache is None:
            self.cache_path = None
        else:
            self.cache_path = os.path.abspath(os.fspath(index_cache))
        #: True when the list of pairs came from the index cache rather than a scan.
        self.cache_hit = False
        self.pairs: list[tuple[str, str]] = self._load_index()

        if not self.pairs:
            raise ValueError(
                f"TextImageDataset: no image/caption pairs found in {root!r}. Expected images "
                f"({', '.join(IMAGE_EXTENSIONS)}) each next to a .txt caption file with the same "
                "relative path and name, e.g. 'sub/x.jpg' + 'sub/x.txt' (searched recursively)."
            )
        #: Number of distinct samples skipped so far in this process.
        self.num_skipped = 0
        #: Files of the samples skipped so far in this process (image or caption path).
        self.skipped: list[str] = []
        self._bad: set[int] = set()

    # ----------------------------------------------------------------- index

    def _load_index(self) -> list[tuple[str, str]]:
        root, path = self.folder, self.cache_path
        if path is None:
            return _scan(root)[0]
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except (OSError, ValueError):
            data = None
        if data is not None and _cache_valid(data, root):
            self.cache_hit = True
            return [(img, txt) for img, txt in data["pairs"]]

        # Create the cache's directory before scanning: creating it changes its parent's mtime.
        writable = True
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
        except OSError as e:
            writable = False
            self._warn_no_cache(e)
        scan_time_ns = time.time_ns()
        pairs, dirs = _scan(root)
        if writable:
            data = {
                "version": _CACHE_VERSION,
                "root": root,
                "extensions": list(IMAGE_EXTENSIONS),
                "scan_time_ns": scan_time_ns,
                "count": len(pairs),
                "dirs": dirs,
                "pairs": [list(p) for p in pairs],
            }
            try:
                _write_json_atomic(path, data)
            except OSError as e:
                self._warn_no_cache(e)
            else:
                parent = os.path.relpath(os.path.dirname(path), root).replace(os.sep, "/")
                if parent in dirs:
                    warnings.warn(
                        f"index cache {path} lies in a scanned directory of {root}; writing it "
                        "changes that directory, so the cache is never reused. Put it outside "
                        "the folder or in a hidden directory."
                    )
        return pairs

    def _warn_no_cache(self, err: OSError) -> None:
        warnings.warn(
            f"could not write the index cache {self.cache_path} ({err}); continuing without "
            "a cache (the folder is scanned at every start). Pass index_cache=<writable path> "
            "or index_cache=False."
        )

    # ----------------------------------------------------------------- items

    def __len__(self) -> int:
        return len(self.pairs)

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch mixed into the per-sample randomness (call once per epoch)."""
        self.epoch = int(epoch)

    def _rng(self, index: int) -> random.Random:
        if self.seed is None:
            return random.Random()
        return random.Random(_mix_seed(self.seed, self.epoch, index))

    def _load(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image_rel, text_rel = self.pairs[index]
        rng = self._rng(index)
        try:
            with open(os.path.join(self.folder, text_rel), encoding="utf-8") as f:
                lines = _caption_lines(f.read())
        except (OSError, UnicodeDecodeError) as e:
            raise _BadSample(f"{text_rel}: unreadable caption ({e})") from e
        if not lines:
            raise _BadSample(f"{text_rel}: empty caption file")
        try:
            image = _load_image(os.path.join(self.folder, image_rel), self.mode)
        except Exception as e:  # PIL raises many types for broken files
            raise _BadSample(f"{image_rel}: unreadable image ({type(e).__name__}: {e})") from e
        text = rng.choice(lines)
        tokens = _tokenize_one(self.tokenizer, text, self.text_len, self.truncate_captions)
        image = random_resized_crop(image, self.image_size, (self.resize_ratio, 1.0), (1.0, 1.0), rng)
        return tokens, image_to_tensor(image)

    def _skip(self, index: int, reason: str) -> None:
        self._bad.add(index)
        self.num_skipped += 1
        self.skipped.append(reason.split(": ", 1)[0])
        warnings.warn(f"TextImageDataset: skipping {os.path.join(self.folder, reason)}")
        allowed = max(1, int(self.max_bad_fraction * len(self)))
        if self.num_skipped > allowed:
            examples = ", ".join(self.skipped[:5])
            raise RuntimeError(
                f"TextImageDataset: {self.num_skipped} of {len(self)} samples in {self.folder} "
                f"({self.num_skipped / len(self):.2%}) could not be loaded, more than "
                f"max_bad_fraction={self.max_bad_fraction} allows ({allowed}); examples: "
                f"{examples}. Fix or remove these files, or raise max_bad_fraction "
                "(counts are per DataLoader worker)."
            )

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(text, image)``: LongTensor (text_len,), FloatTensor (C, H, W) in [0, 1].

        A bad sample is skipped (see the class docstring) and another one returned.
        """
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for {n} samples")
        index %= n
        for _ in range(n):
            if index not in self._bad:
                try:
                    return self._load(index)
                except _BadSample as e:
                    self._skip(index, str(e))
            if self.shuffle:
                index = self._rng(index).randrange(n)
            else:
                index = (index + 1) % n
        raise RuntimeError(f"TextImageDataset: no loadable sample found in {self.folder}")


# --------------------------------------------------------------------------- webdataset


def _expand_urls(urls: str | Sequence[str]) -> list[str]:
    """Expand local globs and directories (-> their ``*.tar``); keep URLs / brace patterns."""
    items = [urls] if isinstance(urls, (str, os.PathLike)) else list(urls)
    out: list[str] = []
    for item in items:
        item = os.fspath(item)
        if "://" in item or item.startswith("pipe:"):
            out.append(item)
        elif os.path.isdir(item):
            found = sorted(glob.glob(os.path.join(item, "*.tar")))
            if not found:
                raise ValueError(f"webdataset_loader: no .tar shards in directory {item!r}")
            out.extend(found)
        elif glob.has_magic(item):
            found = sorted(glob.glob(os.path.expanduser(item)))
            if not found:
                raise ValueError(f"webdataset_loader: no file matches {item!r}")
            out.extend(found)
        else:
            out.append(item)  # plain path or a brace pattern that webdataset expands
    if not out:
        raise ValueError("webdataset_loader: empty list of shards")
    return out


def _decode_wds_sample(
    sample: dict,
    image_key: str,
    caption_key: str,
    text_len: int,
    image_size: int,
    tokenizer: Any,
    truncate_captions: bool,
    resize_ratio: float,
    mode: str = "RGB",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Turn one raw WebDataset sample (``{key: bytes}``) into ``(text, image)``:
    LongTensor (text_len,) and FloatTensor (C, image_size, image_size) in [0, 1]."""
    raw_text = sample[caption_key]
    text = raw_text.decode("utf-8") if isinstance(raw_text, bytes) else str(raw_text)
    lines = _caption_lines(text)
    if not lines:
        raise ValueError(f"empty caption in sample {sample.get('__key__')!r}")
    rng = random.Random()
    image = _load_image(io.BytesIO(sample[image_key]), mode)
    tokens = _tokenize_one(tokenizer, rng.choice(lines), text_len, truncate_captions)
    image = random_resized_crop(image, image_size, (resize_ratio, 1.0), (1.0, 1.0), rng)
    return tokens, image_to_tensor(image)


def _collate(samples: list) -> tuple[torch.Tensor, torch.Tensor]:
    texts, images = zip(*samples)
    return torch.stack(texts), torch.stack(images)


def webdataset_loader(
    urls: str | list[str],
    image_key: str = "jpg",
    caption_key: str = "txt",
    text_len: int = 256,
    image_size: int = 128,
    tokenizer: Any = None,
    truncate_captions: bool = False,
    resize_ratio: float = 0.75,
    batch_size: int = 32,
    num_workers: int = 0,
    shuffle_buffer: int = 1000,
    transparent: bool = False,
) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
    """Batches of (text, image) read from WebDataset tar shards.

    Needs the optional ``webdataset`` package (``pip install dalle-pytorch[webdataset]``).
    Shards are split across distributed ranks (``wds.split_by_node``) and then across
    DataLoader workers (``wds.split_by_worker``), so use at least ``world_size *
    max(1, num_workers)`` shards or some ranks/workers get none. Samples whose image or
    caption cannot be decoded are skipped with a warning (``wds.warn_and_continue``).
    Incomplete last batches are dropped.

    Args:
        urls: shard URL(s); local paths may be globs (``data/*.tar``) or directories
            (all their ``*.tar``), brace patterns (``shard-{000..099}.tar``) and remote
            URLs are passed to webdataset as they are.
        image_key / caption_key: file extensions of the image and caption in a sample.
        text_len, image_size, tokenizer, truncate_captions, resize_ratio, transparent:
            as for :class:`TextImageDataset`.
        batch_size: samples per batch.
        num_workers: DataLoader worker processes.
        shuffle_buffer: size of the sample shuffle buffer (0 disables shuffling).

    Returns:
        An iterable (``wds.WebLoader``) of ``(text, image)`` batches: LongTensor
        (batch_size, text_len) and FloatTensor (batch_size, C, image_size, image_size).
    """
    try:
        import webdataset as wds
    except ImportError as e:
        raise ImportError(_WEBDATASET_HINT) from e

    shards = _expand_urls(urls)
    if tokenizer is None:
        tokenizer = _default_tokenizer()
    decode = partial(
        _decode_wds_sample,
        image_key=image_key,
        caption_key=caption_key,
        text_len=text_len,
        image_size=image_size,
        tokenizer=tokenizer,
        truncate_captions=truncate_captions,
        resize_ratio=resize_ratio,
        mode="RGBA" if transparent else "RGB",
    )
    stages: list[Any] = [wds.SimpleShardList(shards), wds.split_by_node, wds.split_by_worker]
    if shuffle_buffer > 0:
        # Shuffles this worker's own shards only (after splitting), so ranks stay disjoint.
        stages.append(wds.shuffle(len(shards)))
    stages.append(wds.tarfile_to_samples(handler=wds.warn_and_continue))
    if shuffle_buffer > 0:
        stages.append(wds.shuffle(shuffle_buffer))
    stages.append(wds.map(decode, handler=wds.warn_and_continue))
    stages.append(wds.batched(batch_size, collation_fn=_collate, partial=False))
    pipeline = wds.DataPipeline(*stages)
    return wds.WebLoader(pipeline, batch_size=None, shuffle=False, num_workers=num_workers)
