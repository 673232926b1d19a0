"""From a task's data to the training step: `EpochData` (the batches of an epoch, resumable
mid-epoch), bad-sample reporting through the DataLoader, the distributed sampler, collation and
moving batches to the device."""
from __future__ import annotations

import itertools
from typing import Any, Iterable, Optional

import torch
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate
from torch.utils.data.distributed import DistributedSampler

from dalle_pytorch.distributed import DistEnv
from dalle_pytorch.errors import TrainingError
from dalle_pytorch.train.config import LoopConfig

__all__ = ["EpochData", "ReportSkips", "ResumableSampler", "batch_len", "collate_with_skips", "to_device"]


class ReportSkips(Dataset):
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


def collate_with_skips(samples: list) -> tuple[Any, list[str]]:
    items, news = zip(*samples)
    return default_collate(list(items)), [name for new in news for name in new]


class ResumableSampler(Sampler):
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


def to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(b, device) for b in batch)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    return batch


def batch_len(batch: Any) -> int:
    """Samples in a batch: the first dimension of its (first) tensor."""
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0])
    if isinstance(batch, (list, tuple)) and batch:
        return batch_len(batch[0])
    return 0


class EpochData:
    """A task's data as the loop consumes it.

    A map-style dataset of single samples (`map_style`): each process reads its share of a seeded
    shuffle, in batches of `batch_size`, and an epoch can resume after any number of batches (exact
    resume).  Anything else is a stream of ready batches (WebDataset), which restarts at a fresh
    stream position.
    """

    def __init__(self, data: Any, env: DistEnv, loop: LoopConfig) -> None:
        self.data, self.env, self.loop = data, env, loop
        self.map_style = isinstance(data, Dataset) and hasattr(data, "__len__")
        self.dataset: Optional[ReportSkips] = None
        self.sampler: Optional[ResumableSampler] = None
        self.steps_per_epoch: Optional[int] = None
        bs, ga = loop.batch_size, loop.ga_steps
        if self.map_style:
            self.dataset = ReportSkips(data)
            base = DistributedSampler(self.dataset, num_replicas=env.world_size, rank=env.rank, shuffle=True,
                                      seed=loop.seed, drop_last=True)
            self.sampler = ResumableSampler(base)
            self.steps_per_epoch = (len(base) // bs) // ga
            if self.steps_per_epoch == 0:
                raise TrainingError(
                    f"the dataset has {len(data)} samples: too few for one optimizer step of {bs * ga} samples "
                    f"per process x {env.world_size} processes (`batch_size` {bs}, `ga_steps` {ga}); lower them")
            self.total_steps = loop.max_steps or loop.epochs * self.steps_per_epoch
        else:
            if env.distributed and not loop.max_steps:
                raise TrainingError("streaming data (`wds`) over several processes needs `max_steps`: shards split "
                                    "unevenly across ranks, so epochs end at different times")
            self.total_steps = loop.max_steps

    def batches(self, epoch: int, batches_done: int) -> Iterable:
        """(batch, newly skipped files) items of `epoch`, after its first `batches_done` batches."""
        loop = self.loop
        if not self.map_style:
            return ((b, None) for b in self.data)
        self.sampler.set_epoch(epoch)
        self.dataset.set_epoch(epoch)
        self.sampler.start = batches_done * loop.batch_size
        loader = DataLoader(self.dataset, batch_size=loop.batch_size, sampler=self.sampler,
                            num_workers=loop.num_workers, collate_fn=collate_with_skips, drop_last=True,
                            pin_memory=self.env.device.type == "cuda",
                            generator=torch.Generator().manual_seed((loop.seed * 100003 + epoch) % 2**63))
        limit = self.steps_per_epoch * loop.ga_steps - batches_done
        return itertools.islice(loader, max(0, limit))
