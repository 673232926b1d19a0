"""A run's resumable state: where it is (`Progress`) and everything else a training-state file holds
(optimizer, scheduler, grad scaler, every rank's RNG), captured and restored by `RunState`.

The file is written by `dalle_pytorch.checkpoint.training_state` (tensors and primitives only, so it loads
with weights_only=True); a resumed run continues bit-exactly when the world size, batch size,
gradient accumulation and seed are unchanged, and approximately otherwise.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Optional

import torch

from dalle_pytorch.distributed import DistEnv
from dalle_pytorch.errors import TrainingError
from dalle_pytorch.train.config import TrainConfig
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
    last_loss: Optional[float] = None  # of the last step (lr_decay steps on it at the epoch's end)


class RunState:
    """Captures and restores the resumable state of a run (all ranks call `state_dict`: it is collective)."""

    def __init__(self, config: TrainConfig, env: DistEnv, kind: str, model: ParallelModel,
                 optimizer: torch.optim.Optimizer, scheduler: Any, scaler: torch.amp.GradScaler,
                 progress: Progress) -> None:
        self.loop, self.optim, self.env, self.kind = config.loop, config.optim, env, kind
        self.model, self.optimizer, self.scheduler, self.scaler = model, optimizer, scheduler, scaler
        self.progress = progress

    def state_dict(self) -> dict:
        p, loop, env = self.progress, self.loop, self.env
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
            "batch_size": loop.batch_size,
            "ga_steps": loop.ga_steps,
            "world_size": env.world_size,
            "seed": loop.seed,
            "optimizer": opt_sd,
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
            "rng": rngs,
            "nonfinite_total": p.nonfinite_total,
            "nonfinite_consecutive": p.nonfinite_run,
            "skipped_files": sorted(p.skipped_files),
            "skipped_total": p.skipped_total,
            "last_loss": p.last_loss,
        }

    def load_state_dict(self, state: dict, path: str) -> list[str]:
        """Restore everything from `state` (read from `path`); returns notes worth printing."""
        loop, env, p = self.loop, self.env, self.progress
        learning_rate = self.optim.learning_rate
        notes = []
        if state.get("format") != STATE_FORMAT:
            raise TrainingError(f"{path} is not a training state of this package")
        if state.get("kind") != self.kind:
            raise TrainingError(f"the run folder holds a {state.get('kind')} run; this script trains a {self.kind}")
        self.model.load_optimizer_state(self.optimizer, state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        old_lr = self.scheduler.peak_lr
        if self.scheduler.set_peak_lr(learning_rate):
            # a new learning_rate applies from here on, at the schedule's current position
            notes.append(f"note: `learning_rate` {learning_rate} replaces the interrupted run's {old_lr}")
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
        p.last_loss = None if state.get("last_loss") is None else float(state["last_loss"])
        same_layout = (state.get("world_size") == env.world_size and state.get("batch_size") == loop.batch_size
                       and state.get("ga_steps") == loop.ga_steps and state.get("seed") == loop.seed)
        if not same_layout:
            notes.append(
                "note: world size / `batch_size` / `ga_steps` / `seed` differ from the interrupted run; the data order "
                "and RNG streams continue approximately, not exactly")
            if state.get("batch_size") and state.get("world_size"):
                seen = p.batches_in_epoch * state["batch_size"] * state["world_size"]
                per_step = loop.batch_size * env.world_size * loop.ga_steps
                p.batches_in_epoch = (seen // per_step) * loop.ga_steps
        rngs = state.get("rng") or []
        if len(rngs) == env.world_size and same_layout:
            restore_rng(rngs[env.rank], env.device)
        else:
            seed_all(loop.seed + env.rank + 7919 * p.step)
        return notes

    def load_dalle_pytorch_state(self, training: dict, steps_per_epoch: Optional[int]) -> list[str]:
        """Start where a DALLE-pytorch train_dalle.py file left off, as its `dalle_path` does.

        training: `LoadedCheckpoint.training` (epoch, opt_state, scheduler_state, param_names).
        Restores the Adam state (moments and step counts) into our AdamW (weight decay 0 is Adam),
        its learning rate, the lr_decay plateau counters (only with lr_decay, as there) and the
        epoch: the run continues at the start of that epoch, step epoch x steps_per_epoch.
        Returns the notes to print.
        """
        p = self.progress
        done = []
        opt_state = training.get("opt_state")
        if opt_state:
            lr = self._load_dalle_pytorch_optimizer(opt_state, training["param_names"])
            done.append(f"its Adam state (learning rate {lr:g})")
        scheduler_state = training.get("scheduler_state")
        if scheduler_state and self.scheduler.plateau:
            self.scheduler.load_plateau_counters(scheduler_state)
            done.append("its `lr_decay` plateau counters")
        elif scheduler_state:
            done.append("not its `lr_decay` scheduler state (this run has no `lr_decay`; DALLE-pytorch ignores it too)")
        epoch = int(training.get("epoch") or 0)
        if epoch:
            p.epoch = epoch
            p.step = epoch * steps_per_epoch if steps_per_epoch else 0
            self.scheduler.skip_to(p.step)
            done.append(f"its epoch: continuing at epoch {epoch}, step {p.step}")
        return [f"`dalle_path` (a DALLE-pytorch file): restored its weights, {', '.join(done)}" if done else
                "`dalle_path` (a DALLE-pytorch file): restored its weights (it holds no optimizer state or epoch)"]

    def _load_dalle_pytorch_optimizer(self, opt_state: dict, names: list[str]) -> float:
        """Put a DALLE-pytorch Adam state dict (one group, parameters by index) into our optimizer; its lr."""
        groups = opt_state.get("param_groups")
        states = opt_state.get("state")
        if not (isinstance(groups, list) and len(groups) == 1 and isinstance(groups[0], dict)
                and isinstance(states, dict)):
            raise TrainingError("`dalle_path`: its 'opt_state' is not the state dict of a one-group Adam optimizer "
                                "(as DALLE-pytorch's train_dalle.py writes)")
        indices = groups[0].get("params")
        if not isinstance(indices, list) or list(indices) != list(range(len(names))):
            held = len(indices) if isinstance(indices, list) else "?"
            raise TrainingError(f"`dalle_path`: its optimizer holds {held} parameters but the model has {len(names)} "
                                "trainable ones; the file's opt_state does not belong to its weights")
        params = dict(self.model.model.named_parameters())
        trainable = sum(1 for p in params.values() if p.requires_grad)
        if len(names) != trainable:
            raise TrainingError(f"`dalle_path`: DALLE-pytorch's optimizer held {len(names)} parameters but the model "
                                f"has {trainable} trainable ones; its opt_state cannot be matched")
        by_name = {}
        for index, state in states.items():
            if not isinstance(index, int) or not 0 <= index < len(names) or not isinstance(state, dict):
                raise TrainingError(f"`dalle_path`: its opt_state has an entry {index!r} that is not a parameter index")
            name = names[index]
            for key in ("exp_avg", "exp_avg_sq"):
                value = state.get(key)
                if not isinstance(value, torch.Tensor) or value.shape != params[name].shape:
                    raise TrainingError(f"`dalle_path`: opt_state's {key} of parameter {index} ({name}) should be a "
                                        f"tensor of shape {tuple(params[name].shape)}")
            by_name[name] = state
        lr = groups[0].get("lr")
        if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr > 0:
            raise TrainingError(f"`dalle_path`: its optimizer's learning rate {lr!r} is not a positive number")
        ours = self.model.optimizer_state(self.optimizer)  # our groups (decay / no decay) and settings, by name
        ours["state"] = by_name
        for group in ours["param_groups"]:
            for key in ("betas", "eps", "amsgrad"):
                if key in groups[0]:
                    group[key] = groups[0][key]
        self.model.load_optimizer_state(self.optimizer, ours)
        self.scheduler.continue_from_lr(float(lr))
        return float(lr)
