"""A run's resumable state: where it is (`Progress`) and everything else a training-state file holds
(optimizer, scheduler, grad scaler, every rank's RNG), captured and restored by `RunState`.

The file is written by `dalle_pytorch.io.training_state` (tensors and primitives only, so it loads
with weights_only=True); `--resume` continues bit-exactly when the world size, batch size,
gradient accumulation and seed are unchanged, and approximately otherwise.
"""
from __future__ import annotations

import argparse
import dataclasses
from typing import Any

import torch

from dalle_pytorch.errors import TrainingError
from dalle_pytorch.train.distributed import DistEnv
from dalle_pytorch.train.parallel import ParallelModel
from dalle_pytorch.train.rng import capture_rng, restore_rng, seed_all

__all__ = ["STATE_FORMAT", "STATE_VERSION", "Progress", "RunState"]

STATE_FORMAT = "dalle_pytorch/training-state"
STATE_VERSION = 1


@dataclasses.dataclass
class Progress:
    """Where a run is; saved in every training state."""

    step: int = 0  # optimizer steps done
    epoch: int = 0
    batches_in_epoch: int = 0  # micro-batches of the current epoch consumed (this process)
    samples_seen: int = 0  # over all processes
    nonfinite_total: int = 0  # steps skipped for a non-finite loss or gradient
    nonfinite_run: int = 0  # ... of them in a row, up to now
    skipped_files: set = dataclasses.field(default_factory=set)  # bad samples met so far
    skipped_total: int = 0


class RunState:
    """Captures and restores the resumable state of a run (all ranks call `state_dict`: it is collective)."""

    def __init__(self, args: argparse.Namespace, env: DistEnv, kind: str, model: ParallelModel,
                 optimizer: torch.optim.Optimizer, scheduler: Any, scaler: torch.amp.GradScaler,
                 progress: Progress) -> None:
        self.args, self.env, self.kind = args, env, kind
        self.model, self.optimizer, self.scheduler, self.scaler = model, optimizer, scheduler, scaler
        self.progress = progress

    def state_dict(self) -> dict:
        p, args, env = self.progress, self.args, self.env
        opt_sd = self.model.optimizer_state(self.optimizer)
        rngs = env.all_gather_object(capture_rng(env.device))
        return {
            "format": STATE_FORMAT,
            "version": STATE_VERSION,
            "kind": self.kind,
            "step": p.step,
            "epoch": p.epoch,
            "batches_in_epoch": p.batches_in_epoch,
            "samples_seen": p.samples_seen,
            "batch_size": args.batch_size,
            "ga_steps": args.ga_steps,
            "world_size": env.world_size,
            "seed": args.seed,
            "optimizer": opt_sd,
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
            "rng": rngs,
            "nonfinite_total": p.nonfinite_total,
            "nonfinite_consecutive": p.nonfinite_run,
            "skipped_files": sorted(p.skipped_files),
            "skipped_total": p.skipped_total,
        }

    def load_state_dict(self, state: dict, path: str) -> list[str]:
        """Restore everything from `state` (read from `path`); returns notes worth printing."""
        args, env, p = self.args, self.env, self.progress
        notes = []
        if state.get("format") != STATE_FORMAT:
            raise TrainingError(f"{path} is not a training state of this package")
        if state.get("kind") != self.kind:
            raise TrainingError(f"the run folder holds a {state.get('kind')} run; this script trains a {self.kind}")
        self.model.load_optimizer_state(self.optimizer, state["optimizer"])
        scheduler, optimizer = self.scheduler, self.optimizer
        scheduler.load_state_dict(state["scheduler"])
        if any(b != args.learning_rate for b in scheduler.base_lrs):
            # a new --learning_rate applies from here on, at the schedule's current position
            notes.append(f"note: --learning_rate {args.learning_rate} replaces the interrupted run's "
                         f"{scheduler.base_lrs[0]}")
            factor = scheduler.lr_lambdas[0](scheduler.last_epoch)
            scheduler.base_lrs = [args.learning_rate for _ in optimizer.param_groups]
            for group in optimizer.param_groups:
                group["initial_lr"] = args.learning_rate
                group["lr"] = args.learning_rate * factor
            scheduler._last_lr = [g["lr"] for g in optimizer.param_groups]
        if state.get("scaler") and self.scaler.is_enabled():
            self.scaler.load_state_dict(state["scaler"])
        p.step = int(state["step"])
        p.epoch = int(state["epoch"])
        p.batches_in_epoch = int(state["batches_in_epoch"])
        p.samples_seen = int(state.get("samples_seen", 0))
        p.nonfinite_total = int(state.get("nonfinite_total", 0))
        p.nonfinite_run = int(state.get("nonfinite_consecutive", 0))
        p.skipped_files = set(state.get("skipped_files", []))
        p.skipped_total = int(state.get("skipped_total", len(p.skipped_files)))
        same_layout = (state.get("world_size") == env.world_size and state.get("batch_size") == args.batch_size
                       and state.get("ga_steps") == args.ga_steps and state.get("seed") == args.seed)
        if not same_layout:
            notes.append(
                "note: world size / batch size / ga_steps / seed differ from the interrupted run; the data order "
                "and RNG streams continue approximately, not exactly")
            if state.get("batch_size") and state.get("world_size"):
                seen = p.batches_in_epoch * state["batch_size"] * state["world_size"]
                per_step = args.batch_size * env.world_size * args.ga_steps
                p.batches_in_epoch = (seen // per_step) * args.ga_steps
        rngs = state.get("rng") or []
        if len(rngs) == env.world_size and same_layout:
            restore_rng(rngs[env.rank], env.device)
        else:
            seed_all(args.seed + env.rank + 7919 * p.step)
        return notes
