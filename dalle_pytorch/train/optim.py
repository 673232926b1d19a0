"""The optimizer (AdamW, no weight decay on biases / norms / scales) and the learning-rate schedule."""
from __future__ import annotations

import argparse
import math
from typing import Optional

import torch
from torch import nn

from dalle_pytorch.errors import TrainingError

__all__ = ["build_optimizer", "build_scheduler", "lr_multiplier"]


def build_optimizer(model: nn.Module, args: argparse.Namespace) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim < 2 or name.endswith("bias") or ".norm" in name or "scale" in name.rsplit(".", 1)[-1]:
            no_decay.append(p)
        else:
            decay.append(p)
    groups = [g for g in ({"params": decay, "weight_decay": args.weight_decay},
                          {"params": no_decay, "weight_decay": 0.0}) if g["params"]]
    if not groups:
        raise TrainingError("the model has no trainable parameters")
    return torch.optim.AdamW(groups, lr=args.learning_rate)


def lr_multiplier(step: int, *, schedule: str, warmup_steps: int = 0, total_steps: Optional[int] = None,
                  decay_rate: float = 0.98, decay_every: int = 100) -> float:
    """Factor on the peak learning rate for the optimizer step after ``step`` completed steps.

    Linear warmup over ``warmup_steps``, then ``constant`` (1), ``cosine`` (1 -> 0 at ``total_steps``)
    or ``exponential`` (``decay_rate ** (steps since warmup // decay_every)``).
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
        return decay_rate ** (after // decay_every)
    raise ValueError(f"unknown lr schedule {schedule!r}")


def build_scheduler(optimizer, args, total_steps: Optional[int]):
    if args.lr_schedule == "cosine" and total_steps is None:
        raise TrainingError("--lr_schedule cosine needs the run length: pass --max_steps (the streaming "
                            "--wds data has no known epoch length)")
    schedule, warmup, decay_rate, decay_every = args.lr_schedule, args.warmup_steps, args.lr_decay_rate, args.lr_decay_every

    def factor(step: int) -> float:
        return lr_multiplier(step, schedule=schedule, warmup_steps=warmup, total_steps=total_steps,
                             decay_rate=decay_rate, decay_every=decay_every)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
