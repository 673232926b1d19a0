"""The optimizer (AdamW, no weight decay on biases / norms / scales) and the learning-rate schedule.

`LRSchedule` is the one object the trainer steps: per optimizer step (`lr_multiplier`: warmup, then
constant, cosine, or DALLE-pytorch train_vae.py's exponential cadence) or, with train_dalle.py's
`lr_decay`, DALLE-pytorch's ReduceLROnPlateau, stepped once per epoch with the epoch's last loss.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn

from dalle_pytorch.errors import TrainingError
from dalle_pytorch.train.config import OptimConfig
from dalle_pytorch.train.schedules import dalle_plateau_scheduler, vae_updates_before

__all__ = ["build_optimizer", "LRSchedule", "lr_multiplier"]


def build_optimizer(model: nn.Module, optim: OptimConfig, fused: bool = False) -> torch.optim.Optimizer:
    """AdamW at `optim.learning_rate`, with `optim.weight_decay` on the weight matrices only.

    fused: torch's fused AdamW kernel (one pass over each tensor: 2.7x faster than the default per-tensor loop
    on a 79M-parameter CPU model), whose updates differ from the default's in the last bit; the trainer asks
    for it under bf16 / fp16 only, so fp32 runs keep their exact loss curves."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim < 2 or name.endswith("bias") or ".norm" in name or "scale" in name.rsplit(".", 1)[-1]:
            no_decay.append(p)
        else:
            decay.append(p)
    groups = [g for g in ({"params": decay, "weight_decay": optim.weight_decay},
                          {"params": no_decay, "weight_decay": 0.0}) if g["params"]]
    if not groups:
        raise TrainingError("the model has no trainable parameters")
    return torch.optim.AdamW(groups, lr=optim.learning_rate, fused=True if fused else None)


def lr_multiplier(step: int, *, schedule: str, warmup_steps: int = 0, total_steps: Optional[int] = None,
                  decay_rate: float = 0.98, decay_every: int = 100, steps_per_epoch: Optional[int] = None) -> float:
    """Factor on the peak learning rate for the optimizer step after ``step`` completed steps.

    Linear warmup over ``warmup_steps``, then ``constant`` (1), ``cosine`` (1 -> 0 at ``total_steps``)
    or ``exponential``: DALLE-pytorch train_vae.py's ExponentialLR cadence, ``decay_rate ** n`` with
    n the decays after steps ``warmup_steps .. step - 1`` whose index within their epoch
    (``steps_per_epoch``; None: one endless epoch) is a multiple of ``decay_every``, the first step
    of every epoch included (`schedules.vae_updates_before`).
    """
    if warmup_steps and step < warmup_steps:
        return (step + 1) / warmup_steps
    after = step - warmup_steps
    if schedule == "constant":
        return 1.0
    if schedule == "cosine":
        span = max(1, (total_steps or 1) - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, after / span)))
    if schedule == "exponential":
        n = vae_updates_before(step, steps_per_epoch, decay_every) - vae_updates_before(warmup_steps, steps_per_epoch,
                                                                                        decay_every)
        return decay_rate ** n
    raise ValueError(f"unknown lr schedule {schedule!r}")


# ReduceLROnPlateau counters a training state (ours, or DALLE-pytorch's `scheduler_state`) may set;
# its settings are DALLE-pytorch's constants and never come from a file
_PLATEAU_COUNTERS = {"best": float, "num_bad_epochs": int, "cooldown_counter": int, "last_epoch": int}


class LRSchedule:
    """The learning-rate schedule of a run.

    Per step: a LambdaLR over `lr_multiplier` (`lr_schedule`, `warmup_steps`, `lr_decay_rate`,
    `lr_decay_every` of `OptimConfig`). With `lr_decay` (train_dalle.py, as DALLE-pytorch): ReduceLROnPlateau with
    `PLATEAU_DEFAULTS`, stepped by `epoch_end(loss)` with the last step's loss (averaged over the
    ranks) and untouched by `step()`.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, optim: OptimConfig, total_steps: Optional[int],
                 steps_per_epoch: Optional[int]) -> None:
        self.optimizer = optimizer
        self.plateau = optim.lr_decay  # OptimConfig refuses it with a per-step schedule or warmup
        self.peak_lr = optim.learning_rate
        if self.plateau:
            self.scheduler = dalle_plateau_scheduler(optimizer)
            return
        if optim.lr_schedule == "cosine" and total_steps is None:
            raise TrainingError("`lr_schedule` cosine needs the run length: set `max_steps` (streaming data has no "
                                "known epoch length)")
        schedule, warmup, rate, every = optim.lr_schedule, optim.warmup_steps, optim.lr_decay_rate, optim.lr_decay_every

        def factor(step: int) -> float:
            return lr_multiplier(step, schedule=schedule, warmup_steps=warmup, total_steps=total_steps,
                                 decay_rate=rate, decay_every=every, steps_per_epoch=steps_per_epoch)

        self.scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)

    def step(self) -> None:
        """After every optimizer step (skipped ones included)."""
        if not self.plateau:
            self.scheduler.step()

    def epoch_end(self, loss: Optional[float]) -> None:
        """After every epoch, with the loss of its last step (`lr_decay` only)."""
        if self.plateau and loss is not None:
            self.scheduler.step(loss)

    def state_dict(self) -> dict:
        if self.plateau:
            return {"plateau": {k: self.scheduler.state_dict()[k] for k in _PLATEAU_COUNTERS},
                    "lrs": [g["lr"] for g in self.optimizer.param_groups], "peak_lr": self.peak_lr}
        return self.scheduler.state_dict()

    def load_state_dict(self, state: dict) -> None:
        if self.plateau != ("plateau" in state):
            raise TrainingError("the run was started " + ("without" if self.plateau else "with")
                                + " `lr_decay`; resume it with the same learning-rate settings")
        if not self.plateau:
            self.scheduler.load_state_dict(state)
            self.peak_lr = self.scheduler.base_lrs[0]
            return
        self.load_plateau_counters(state["plateau"])
        self.set_lr(float(state["lrs"][0]))
        self.peak_lr = float(state["peak_lr"])

    def load_plateau_counters(self, counters: dict) -> None:
        """Restore ReduceLROnPlateau's counters (ours or DALLE-pytorch's `scheduler_state`); other keys are ignored."""
        for key, kind in _PLATEAU_COUNTERS.items():
            value = counters.get(key)
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise TrainingError(f"the scheduler state's {key!r} must be a number, got {value!r}")
            setattr(self.scheduler, key, kind(value))

    def set_lr(self, lr: float) -> None:
        """Make `lr` the current learning rate (the plateau schedule continues from it)."""
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.scheduler._last_lr = [lr for _ in self.optimizer.param_groups]

    def continue_from_lr(self, lr: float) -> None:
        """Continue with `lr` as the current learning rate: a restored optimizer's, as DALLE-pytorch resumes."""
        if self.plateau:
            self.set_lr(lr)
        else:
            self.set_peak_lr(lr)

    def skip_to(self, step: int) -> None:
        """Place a per-step schedule at `step` (a run that starts after `step` steps elsewhere)."""
        if self.plateau:
            return
        sched = self.scheduler
        sched.last_epoch = step
        for group, base, fn in zip(self.optimizer.param_groups, sched.base_lrs, sched.lr_lambdas):
            group["lr"] = base * fn(step)
        sched._last_lr = [g["lr"] for g in self.optimizer.param_groups]

    def set_peak_lr(self, lr: float) -> Optional[str]:
        """Use `lr` as the peak learning rate from the schedule's current point on; a note when it changes."""
        old = self.peak_lr
        if lr == old:
            return None
        self.peak_lr = lr
        if self.plateau:  # keep the reductions made so far
            self.set_lr(self.optimizer.param_groups[0]["lr"] * lr / old)
        else:
            sched = self.scheduler
            factor = sched.lr_lambdas[0](sched.last_epoch)
            sched.base_lrs = [lr for _ in self.optimizer.param_groups]
            for group in self.optimizer.param_groups:
                group["initial_lr"] = lr
                group["lr"] = lr * factor
            sched._last_lr = [g["lr"] for g in self.optimizer.param_groups]
        return f"note: the learning rate {lr} replaces {old} from here on"
