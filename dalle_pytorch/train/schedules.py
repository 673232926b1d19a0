"""DALLE-pytorch 1.6.6's training schedules, as pure functions of the batch counter.

What its scripts do (docs/dalle_pytorch_compat.md quotes the code they transcribe):

train_vae.py keeps `global_step` (batches since the start, 0-based, +1 after every batch) and `i`
(the batch index within the epoch, restarting at 0 every epoch). After the optimizer step of every
batch with `i % 100 == 0` -- batch 0 of every epoch included -- it runs

    temp = max(temp * exp(-anneal_rate * global_step), temp_min)   # compounding
    sched.step()                                                   # ExponentialLR: lr *= lr_decay_rate

so batch `g` is trained with the temperature and learning rate left by the updates after the
batches before it. The first update (global_step 0) multiplies by exp(0) = 1 but still decays the
learning rate. With the defaults and one long epoch the temperature reaches temp_min = 0.5 at the
update after batch 11,800 (the 119th update), so batch 11,801 is the first trained at 0.5.

train_dalle.py `--lr_decay`: `ReduceLROnPlateau(opt, mode="min", factor=0.5, patience=10,
cooldown=10, min_lr=1e-6, verbose=True)`, stepped once per epoch after its last batch with that
last batch's loss (averaged over the workers), not the epoch's mean loss.

The functions loop over the update points, multiplying step by step exactly as the scripts do (so
the floats are the same, not a closed form that differs in the last bits). A training loop should
not call `vae_temperature` every step (each call costs O(global_step / 100)): `AnnealedTemperature`
carries the value forward from the previous step (bit-identical), and the learning-rate factor is
`lr_decay_rate ** vae_updates_before(...)` (closed form, equal up to float rounding).

How train_dalle.py / train_vae.py use them: `dalle_pytorch.train.tasks.vae_task` (temperature),
`dalle_pytorch.train.optim.LRSchedule` (the exponential lr schedule and `--lr_decay`).
"""
from __future__ import annotations

import math
from typing import Iterator, Optional

import torch

__all__ = [
    "VAE_UPDATE_EVERY",
    "VAE_DEFAULTS",
    "PLATEAU_DEFAULTS",
    "vae_update_due",
    "vae_update_steps",
    "vae_updates_before",
    "anneal_temperature",
    "vae_temperature",
    "vae_learning_rate",
    "dalle_plateau_scheduler",
    "AnnealedTemperature",
]

VAE_UPDATE_EVERY = 100  # train_vae.py: `if i % 100 == 0:` anneals the temperature and steps the lr
# train_vae.py's defaults: --starting_temp, --temp_min, --anneal_rate, --learning_rate, --lr_decay_rate
VAE_DEFAULTS = dict(starting_temp=1.0, temp_min=0.5, anneal_rate=1e-6, learning_rate=1e-3, lr_decay_rate=0.98)
# train_dalle.py --lr_decay (verbose=True there only prints; torch >= 2.2 deprecates the argument)
PLATEAU_DEFAULTS = dict(mode="min", factor=0.5, patience=10, cooldown=10, min_lr=1e-6)


def _check_counters(global_step: int, batches_per_epoch: Optional[int], every: int) -> None:
    if global_step < 0:
        raise ValueError(f"global_step must be >= 0, got {global_step}")
    if batches_per_epoch is not None and batches_per_epoch < 1:
        raise ValueError(f"batches_per_epoch must be >= 1 (or None for one endless epoch), got {batches_per_epoch}")
    if every < 1:
        raise ValueError(f"every must be >= 1, got {every}")


def vae_update_due(global_step: int, batches_per_epoch: Optional[int] = None, every: int = VAE_UPDATE_EVERY) -> bool:
    """Whether train_vae.py anneals the temperature and decays the lr after batch `global_step` (0-based).

    It does when the batch's index within its epoch, `global_step % batches_per_epoch`, is a multiple
    of `every` (batch 0 of every epoch included). `batches_per_epoch` is `len(DataLoader)` there
    (drop_last is off: ceil(images / batch_size)); None means one epoch that never ends.
    """
    _check_counters(global_step, batches_per_epoch, every)
    i = global_step if batches_per_epoch is None else global_step % batches_per_epoch
    return i % every == 0


def vae_update_steps(batches_per_epoch: Optional[int] = None, every: int = VAE_UPDATE_EVERY) -> Iterator[int]:
    """The global steps (0, 100, 200, ..., restarting the count at every epoch start) after which updates happen."""
    _check_counters(0, batches_per_epoch, every)
    if batches_per_epoch is None:
        step = 0
        while True:
            yield step
            step += every
    start = 0
    while True:
        for i in range(0, batches_per_epoch, every):
            yield start + i
        start += batches_per_epoch


def vae_updates_before(global_step: int, batches_per_epoch: Optional[int] = None,
                       every: int = VAE_UPDATE_EVERY) -> int:
    """How many updates happened before batch `global_step` is trained (after batches 0 .. global_step - 1)."""
    _check_counters(global_step, batches_per_epoch, every)
    if batches_per_epoch is None:
        return -(-global_step // every)  # steps 0, every, ... below global_step: ceil(global_step / every)
    epochs, i = divmod(global_step, batches_per_epoch)
    per_epoch = -(-batches_per_epoch // every)
    return epochs * per_epoch + -(-i // every)


def anneal_temperature(temp: float, global_step: int, *, temp_min: float = 0.5, anneal_rate: float = 1e-6) -> float:
    """One update of train_vae.py: `max(temp * exp(-anneal_rate * global_step), temp_min)`."""
    return max(temp * math.exp(-anneal_rate * global_step), temp_min)


def vae_temperature(global_step: int, *, batches_per_epoch: Optional[int] = None, starting_temp: float = 1.0,
                    temp_min: float = 0.5, anneal_rate: float = 1e-6, every: int = VAE_UPDATE_EVERY) -> float:
    """The gumbel-softmax temperature train_vae.py trains batch `global_step` (0-based) with.

    `starting_temp` compounded by every update before that batch (see the module docstring), each
    multiplying by exp(-anneal_rate * the global step it happens after) and clamping at `temp_min`.
    O(global_step / every) multiplications.
    """
    _check_counters(global_step, batches_per_epoch, every)
    temp = starting_temp
    for step in vae_update_steps(batches_per_epoch, every):
        if step >= global_step:
            break
        temp = anneal_temperature(temp, step, temp_min=temp_min, anneal_rate=anneal_rate)
    return temp


def vae_learning_rate(global_step: int, *, batches_per_epoch: Optional[int] = None, learning_rate: float = 1e-3,
                      lr_decay_rate: float = 0.98, every: int = VAE_UPDATE_EVERY) -> float:
    """The learning rate train_vae.py trains batch `global_step` (0-based) with.

    ExponentialLR(gamma=lr_decay_rate) stepped at every update before that batch; like torch's
    ExponentialLR, the rate is multiplied once per step (not `lr * gamma ** n`, which can differ in
    the last bits).
    """
    lr = learning_rate
    for _ in range(vae_updates_before(global_step, batches_per_epoch, every)):
        lr = lr * lr_decay_rate
    return lr


def dalle_plateau_scheduler(optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.ReduceLROnPlateau:
    """train_dalle.py's `--lr_decay` scheduler: ReduceLROnPlateau with `PLATEAU_DEFAULTS`.

    DALLE-pytorch calls `scheduler.step(loss)` once per epoch, after the epoch's last batch, with that
    batch's loss (averaged over the workers); the learning rate halves after 11 epochs in a row
    without a relative improvement of 1e-4 over the best, then stays for a 10-epoch cooldown; never
    below 1e-6.
    """
    return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, **PLATEAU_DEFAULTS)


def _update_points(lo: int, hi: int, batches_per_epoch: Optional[int], every: int) -> Iterator[int]:
    """The update steps g with lo <= g < hi (those `vae_update_steps` yields), in order."""
    if batches_per_epoch is None:
        yield from range(-(-lo // every) * every, hi, every)
        return
    epoch, i = divmod(lo, batches_per_epoch)
    start, first = epoch * batches_per_epoch, -(-i // every) * every
    while start < hi:
        for j in range(first, batches_per_epoch, every):
            if start + j >= hi:
                return
            yield start + j
        start, first = start + batches_per_epoch, 0


class AnnealedTemperature:
    """`vae_temperature` as a function of the global step, carried forward between calls.

    `temperature(g)` equals `vae_temperature(g, ...)` bit for bit (the same multiplications in the
    same order). Consecutive steps cost O(1); asking for an earlier step than the last one starts
    again from step 0, so the value only depends on `g` (a resumed run gets the same temperatures).
    """

    def __init__(self, *, batches_per_epoch: Optional[int] = None, starting_temp: float = 1.0,
                 temp_min: float = 0.5, anneal_rate: float = 1e-6, every: int = VAE_UPDATE_EVERY) -> None:
        _check_counters(0, batches_per_epoch, every)
        self.batches_per_epoch, self.every = batches_per_epoch, every
        self.starting_temp, self.temp_min, self.anneal_rate = starting_temp, temp_min, anneal_rate
        self._step, self._temp = 0, starting_temp  # the temperature batch `_step` is trained with

    def __call__(self, global_step: int) -> float:
        _check_counters(global_step, self.batches_per_epoch, self.every)
        if global_step < self._step:
            self._step, self._temp = 0, self.starting_temp
        temp = self._temp
        for g in _update_points(self._step, global_step, self.batches_per_epoch, self.every):
            temp = anneal_temperature(temp, g, temp_min=self.temp_min, anneal_rate=self.anneal_rate)
        self._step, self._temp = global_step, temp
        return temp
