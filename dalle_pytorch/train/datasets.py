"""Training datasets: captioned images in a folder (`TextImageDataset`, for DALLE) and plain images
(`ImageFolder`, for the VAE), with one bad-sample policy (`BadSamples`) and the image transforms.

* `TextImageDataset`: a folder tree of images, each paired with a ``.txt`` caption file of the
  same relative path (``a/x.jpg`` pairs with ``a/x.txt``); the scan is cached (folder_index.py).
* `ImageFolder`: every image under a folder, resized and centre-cropped (DALLE-pytorch's train_vae.py).
* WebDataset shards: `dalle_pytorch.train.webdataset`.

Images are transformed with PIL + torch only: convert to RGB (RGBA when ``transparent``), random
resized square crop (or resize + centre crop), float tensor in ``[0, 1]``.
"""

from __future__ import annotations

import math
import os
import random
import warnings
from typing import Any, Callable

import torch
from PIL import Image
from torch.utils.data import Dataset

from dalle_pytorch.errors import TrainingError
from dalle_pytorch.formats.images import read_image
from dalle_pytorch.text.factory import get_default_tokenizer
from dalle_pytorch.train.folder_index import DEFAULT_CACHE, IMAGE_EXTENSIONS, load_index

__all__ = [
    "IMAGE_EXTENSIONS",
    "BadSample",
    "BadSamples",
    "DatasetError",
    "ImageFolder",
    "SkippedSamples",
    "TextImageDataset",
    "caption_lines",
    "image_to_tensor",
    "mix_seed",
    "sample_rng",
    "random_resized_crop",
    "tokenize_caption",
]


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


def caption_lines(text: str) -> list[str]:
    """Non-blank, stripped lines of a caption file."""
    return [line.strip() for line in text.splitlines() if line.strip()]


def tokenize_caption(tokenizer: Any, text: str, text_len: int, truncate: bool) -> torch.Tensor:
    """Tokenize one caption to a LongTensor of shape (text_len,)."""
    tokens = tokenizer.tokenize([text], text_len, truncate)
    tokens = torch.as_tensor(tokens)
    if tokens.dim() == 2:
        tokens = tokens[0]
    return tokens.long()


def mix_seed(*values: int) -> int:
    """Combine integers into one 64-bit seed (stable across processes and runs)."""
    h = 0x243F6A8885A308D3
    for v in values:
        h = ((h ^ (v & 0xFFFFFFFFFFFFFFFF)) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
        h ^= h >> 29
    return h


def sample_rng(seed: int | None, epoch: int, index: int) -> random.Random:
    """The randomness of sample `index` in `epoch` (caption line, crop): a function of them and `seed` alone,
    whatever the DataLoader workers; None: fresh randomness. The image datasets and the codes dataset draw
    from it in the same order, so the same sample gets the same caption line in both."""
    if seed is None:
        return random.Random()
    return random.Random(mix_seed(seed, epoch, index))


# --------------------------------------------------------------------------- bad samples


class DatasetError(TrainingError):
    """A dataset that cannot go on: too many bad samples, or none loadable (the message names examples)."""


class BadSample(Exception):
    """A sample that cannot be served.  `file`: the offending file (relative path); str(e): why."""

    def __init__(self, file: str, why: str) -> None:
        super().__init__(f"{file}: {why}")
        self.file = file


class BadSamples:
    """The bad-sample policy of the training datasets.

    A sample whose file cannot be read is skipped with a warning naming the file, and another one
    is served instead (the next index, or `next_index(index)`).  Each distinct bad sample counts
    once, in `num_skipped` / `skipped` (its file); more than ``max(1, int(max_bad_fraction * n))``
    of them raise a RuntimeError that names examples.  With DataLoader workers each worker process
    holds its own copy, so counts (and the limit) are per worker.
    """

    def __init__(self, owner: str, folder: str, size: int, max_bad_fraction: float, noun: str = "samples") -> None:
        if max_bad_fraction < 0:
            raise ValueError(f"max_bad_fraction must be >= 0, got {max_bad_fraction}")
        self.owner, self.folder, self.size, self.noun = owner, folder, size, noun
        self.max_bad_fraction = max_bad_fraction
        self.bad: set[int] = set()
        self.skipped: list[str] = []
        self.reasons: list[str] = []  # str(BadSample) of each skipped sample: "file: why"

    @property
    def num_skipped(self) -> int:
        return len(self.skipped)

    def record(self, index: int, error: BadSample) -> None:
        """Count sample `index` as bad: warn, and raise once too many are."""
        self.bad.add(index)
        self.skipped.append(error.file)
        self.reasons.append(str(error))
        warnings.warn(f"{self.owner}: skipping {os.path.join(self.folder, str(error))}")
        allowed = max(1, int(self.max_bad_fraction * self.size))
        if self.num_skipped > allowed:
            raise DatasetError(
                f"{self.owner}: {self.num_skipped} of {self.size} {self.noun} in {self.folder} "
                f"({self.num_skipped / self.size:.2%}) could not be loaded, more than "
                f"max_bad_fraction={self.max_bad_fraction} allows ({allowed}); examples: "
                f"{'; '.join(self.reasons[:3])}. Fix or remove these files, or raise `max_bad_fraction` "
                "(counts are per DataLoader worker)."
            ) from error

    def serve(self, index: int, load: Callable[[int], Any], next_index: Callable[[int], int]) -> Any:
        """`load(index)`, or of the next good index when it raises BadSample (recorded)."""
        for _ in range(self.size):
            if index not in self.bad:
                try:
                    return load(index)
                except BadSample as e:
                    self.record(index, e)
            index = next_index(index)
        raise DatasetError(f"{self.owner}: no loadable sample found in {self.folder}; skipped: "
                           f"{'; '.join(self.reasons[:3])}")


# --------------------------------------------------------------------------- folder datasets


class SkippedSamples:
    """`num_skipped` and `skipped` of a dataset that applies its `BadSamples` policy (`self.bad_samples`)."""

    bad_samples: BadSamples

    @property
    def num_skipped(self) -> int:
        """Number of distinct samples skipped so far in this process."""
        return self.bad_samples.num_skipped

    @property
    def skipped(self) -> list[str]:
        """Files of the samples skipped so far in this process (an image or a caption path)."""
        return self.bad_samples.skipped


class TextImageDataset(SkippedSamples, Dataset):
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

    Images without a caption file are left out, with one warning that counts them (`uncaptioned`).

    Bad samples (`BadSamples`): an image that cannot be decoded, or a caption file that is empty
    (or unreadable), is skipped with a warning naming the file and another sample is returned
    instead (the next index, or a random one when ``shuffle`` is True), counted in
    ``num_skipped`` / ``skipped``; too many raise a RuntimeError.

    Args:
        folder: root folder of the dataset.
        text_len: length of the tokenized caption.
        image_size: side length of the output image.
        truncate_captions: truncate captions longer than ``text_len`` tokens (otherwise
            the tokenizer raises ``ValueError``, which is not treated as a bad sample).
        resize_ratio: minimum fraction of the image area kept by the random crop.
        transparent: return RGBA (4 channels) instead of RGB.
        tokenizer: object with ``tokenize(texts, context_length, truncate_text) ->
            LongTensor (b, context_length)``; defaults to ``dalle_pytorch.text.factory``.
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
        self.folder = root
        self.text_len = text_len
        self.image_size = image_size
        self.truncate_captions = truncate_captions
        self.resize_ratio = resize_ratio
        self.transparent = transparent
        self.mode = "RGBA" if transparent else "RGB"
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = 0
        self.tokenizer = tokenizer if tokenizer is not None else get_default_tokenizer()

        if index_cache is True:
            self.cache_path: str | None = os.path.join(root, DEFAULT_CACHE)
        elif index_cache is False or index_cache is None:
            self.cache_path = None
        else:
            self.cache_path = os.path.abspath(os.fspath(index_cache))
        index = load_index(root, self.cache_path, self._warn_no_cache)
        self.pairs: list[tuple[str, str]] = index.pairs
        #: cache_hit: True when the list of pairs came from the index cache rather than a scan.
        self.cache_hit = index.cache_hit
        #: images without a caption file: left out of the dataset (counted in one warning)
        self.uncaptioned: list[str] = index.uncaptioned

        if not self.pairs:
            raise ValueError(
                f"TextImageDataset: no image/caption pairs found in {root!r}. Expected images "
                f"({', '.join(IMAGE_EXTENSIONS)}) each next to a .txt caption file with the same "
                "relative path and name, e.g. 'sub/x.jpg' + 'sub/x.txt' (searched recursively)."
                + {0: "", 1: " The one image there has no caption."}.get(
                    len(self.uncaptioned), f" None of the {len(self.uncaptioned)} images there has a caption.")
            )
        self.bad_samples = BadSamples("TextImageDataset", root, len(self.pairs), max_bad_fraction)
        if self.uncaptioned:
            n = len(self.uncaptioned)
            examples = ", ".join(self.uncaptioned[:3]) + (", ..." if n > 3 else "")
            warnings.warn(f"TextImageDataset: left out {n} image{'' if n == 1 else 's'} without a .txt caption in "
                          f"{root}: {examples}")

    def _warn_no_cache(self, err: OSError) -> None:
        warnings.warn(
            f"could not write the index cache {self.cache_path} ({err}); continuing without "
            "a cache (the folder is scanned at every start). Pass index_cache=<writable path> "
            "or index_cache=False."
        )

    def __len__(self) -> int:
        return len(self.pairs)

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch mixed into the per-sample randomness (call once per epoch)."""
        self.epoch = int(epoch)

    def _rng(self, index: int) -> random.Random:
        return sample_rng(self.seed, self.epoch, index)

    def read_pair(self, index: int) -> tuple[list[str], Image.Image]:
        """The caption lines and the decoded image (in this dataset's mode) of pair `index`, untransformed;
        BadSample for an unreadable or empty caption file or an unreadable image (dalle-encode reads pairs
        with it, so that codes are made from exactly what training would read)."""
        image_rel, text_rel = self.pairs[index]
        try:
            with open(os.path.join(self.folder, text_rel), encoding="utf-8") as f:
                lines = caption_lines(f.read())
        except (OSError, UnicodeDecodeError) as e:
            raise BadSample(text_rel, f"unreadable caption ({e})") from e
        if not lines:
            raise BadSample(text_rel, "empty caption file")
        try:
            image = read_image(os.path.join(self.folder, image_rel), self.mode)
        except Exception as e:  # PIL raises many types for broken files
            raise BadSample(image_rel, f"unreadable image ({type(e).__name__}: {e})") from e
        return lines, image

    def _load(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        lines, image = self.read_pair(index)
        rng = self._rng(index)
        text = rng.choice(lines)
        try:
            tokens = tokenize_caption(self.tokenizer, text, self.text_len, self.truncate_captions)
        except ValueError as e:  # a caption longer than text_len: a bad sample like the others
            raise BadSample(self.pairs[index][1], f"caption longer than {self.text_len} tokens: shorten it, raise "
                                      "--text_seq_len or pass --truncate_captions") from e
        image = random_resized_crop(image, self.image_size, (self.resize_ratio, 1.0), (1.0, 1.0), rng)
        return tokens, image_to_tensor(image)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(text, image)``: LongTensor (text_len,), FloatTensor (C, H, W) in [0, 1].

        A bad sample is skipped (see the class docstring) and another one returned.
        """
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for {n} samples")

        def next_index(i: int) -> int:
            return self._rng(i).randrange(n) if self.shuffle else (i + 1) % n

        return self.bad_samples.serve(index % n, self._load, next_index)


class ImageFolder(SkippedSamples, Dataset):
    """Every image under ``folder`` (searched recursively; captions and other files are ignored).

    Images are resized (shorter side to ``image_size``) and centre-cropped, like DALLE-pytorch's
    ``train_vae.py``. An unreadable image is skipped with a warning (the next one is returned
    instead) and recorded in ``num_skipped`` / ``skipped`` (`BadSamples`); too many raise a RuntimeError.

    Items: FloatTensor (3, or 4 with ``transparent``, image_size, image_size) in [0, 1].
    """

    def __init__(self, folder: str | os.PathLike, image_size: int, transparent: bool = False,
                 max_bad_fraction: float = 0.01) -> None:
        root = os.path.realpath(os.fspath(folder))
        if not os.path.isdir(root):
            raise TrainingError(f"image folder {os.fspath(folder)!r} is not a directory")
        paths = []
        for current, dirs, files in os.walk(root, followlinks=True):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for f in files:
                if not f.startswith(".") and os.path.splitext(f)[1].lower() in IMAGE_EXTENSIONS:
                    paths.append(os.path.relpath(os.path.join(current, f), root))
        if not paths:
            raise TrainingError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found under {root!r}")
        self.folder = root
        self.paths = sorted(paths)
        self.image_size = int(image_size)
        self.mode = "RGBA" if transparent else "RGB"
        self.bad_samples = BadSamples("ImageFolder", root, len(self.paths), max_bad_fraction, noun="images")

    def __len__(self) -> int:
        return len(self.paths)

    def set_epoch(self, epoch: int) -> None:
        """No per-epoch randomness (centre crops); present for the common dataset interface."""

    def _load(self, index: int) -> torch.Tensor:
        path = os.path.join(self.folder, self.paths[index])
        try:
            img = read_image(path, self.mode)
        except Exception as e:  # PIL raises many exception types for broken files
            raise BadSample(self.paths[index], f"unreadable image ({type(e).__name__}: {e})") from e
        size = self.image_size
        w, h = img.size
        scale = size / min(w, h)
        nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
        if (nw, nh) != (w, h):
            img = img.resize((nw, nh), Image.BICUBIC)
        left, top = (nw - size) // 2, (nh - size) // 2
        img = img.crop((left, top, left + size, top + size))
        return image_to_tensor(img)

    def __getitem__(self, index: int) -> torch.Tensor:
        n = len(self)
        return self.bad_samples.serve(index % n, self._load, lambda i: (i + 1) % n)
