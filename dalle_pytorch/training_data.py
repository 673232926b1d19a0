"""Training-side data plumbing: the VAE's :class:`ImageFolder`, bad-sample reporting through the
DataLoader, the resumable distributed sampler and moving batches to the device."""
from __future__ import annotations

import itertools
import os
import warnings
from typing import Any

import torch
from PIL import Image
from torch.utils.data import Dataset, Sampler, default_collate
from torch.utils.data.distributed import DistributedSampler

from dalle_pytorch.datasets import IMAGE_EXTENSIONS, image_to_tensor
from dalle_pytorch.training_common import TrainingError


class _BadImage(Exception):
    pass


class ImageFolder(Dataset):
    """Every image under ``folder`` (searched recursively; captions and other files are ignored).

    Images are resized (shorter side to ``image_size``) and centre-cropped, like DALLE-pytorch's
    ``train_vae.py``. An unreadable image is skipped with a warning (the next one is returned
    instead) and recorded in ``num_skipped`` / ``skipped``; more than
    ``max(1, int(max_bad_fraction * len(self)))`` of them raise a RuntimeError.

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
        self.max_bad_fraction = max_bad_fraction
        self.num_skipped = 0
        self.skipped: list[str] = []
        self._bad: set[int] = set()

    def __len__(self) -> int:
        return len(self.paths)

    def set_epoch(self, epoch: int) -> None:
        """No per-epoch randomness (centre crops); present for the common dataset interface."""

    def _load(self, index: int) -> torch.Tensor:
        path = os.path.join(self.folder, self.paths[index])
        try:
            with Image.open(path) as img:
                img.load()
                img = img.convert(self.mode)
        except Exception as e:  # PIL raises many exception types for broken files
            raise _BadImage(f"{self.paths[index]}: unreadable image ({type(e).__name__}: {e})") from e
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
        index %= n
        for _ in range(n):
            if index not in self._bad:
                try:
                    return self._load(index)
                except _BadImage as e:
                    self._bad.add(index)
                    self.num_skipped += 1
                    self.skipped.append(self.paths[index])
                    warnings.warn(f"ImageFolder: skipping {os.path.join(self.folder, str(e))}")
                    allowed = max(1, int(self.max_bad_fraction * n))
                    if self.num_skipped > allowed:
                        raise RuntimeError(
                            f"ImageFolder: {self.num_skipped} of {n} images in {self.folder} could not be read, "
                            f"more than max_bad_fraction={self.max_bad_fraction} allows ({allowed}); examples: "
                            f"{', '.join(self.skipped[:5])}. Fix or remove them, or raise --max_bad_fraction."
                        ) from e
            index = (index + 1) % n
        raise RuntimeError(f"ImageFolder: no readable image in {self.folder}")


class _ReportSkips(Dataset):
    """Wraps a dataset with ``skipped`` (list of bad files) so each item also carries the files
    newly skipped while producing it; this works across DataLoader worker processes."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset
        self._reported = 0

    def __len__(self) -> int:
        return len(self.dataset)

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)

    def __getitem__(self, index: int):
        item = self.dataset[index]
        skipped = list(getattr(self.dataset, "skipped", ()))
        new = tuple(skipped[self._reported:])
        self._reported = len(skipped)
        return item, new


def _collate_with_skips(samples: list) -> tuple[Any, list[str]]:
    items, news = zip(*samples)
    return default_collate(list(items)), [name for new in news for name in new]


class _ResumableSampler(Sampler):
    """A DistributedSampler's order for the epoch, starting ``start`` samples in (to resume mid-epoch)."""

    def __init__(self, base: DistributedSampler) -> None:
        self.base = base
        self.start = 0

    def set_epoch(self, epoch: int) -> None:
        self.base.set_epoch(epoch)

    def __iter__(self):
        return itertools.islice(iter(self.base), self.start, None)

    def __len__(self) -> int:
        return max(0, len(self.base) - self.start)


def _to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to_device(b, device) for b in batch)
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    return batch
