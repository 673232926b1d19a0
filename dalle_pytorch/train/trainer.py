"""`Trainer`: runs one `Task`: loops over its data, steps the optimizer, logs, writes checkpoint pairs
and sample images, and resumes exactly.

Non-finite losses or gradients skip the optimizer step (counted); more than `max_nonfinite` in a
row stop the run.  Checkpoint pairs (model file + training state) are written with
`CheckpointManager`; the JSONL log and console lines with `RunLogger`.
"""
from __future__ import annotations

import json
import math
import os
import time
import warnings
from typing import Any, Callable, Optional

import torch

from dalle_pytorch.checkpoint.ours import save as save_model
from dalle_pytorch.checkpoint.training_state import save_training_state
from dalle_pytorch.distributed import DistEnv
from dalle_pytorch.errors import TrainingError, name_fields
from dalle_pytorch.formats.files import is_disk_full
from dalle_pytorch.train.checkpoints import CheckpointManager, CheckpointPoint, link_file, replicas_in_sync
from dalle_pytorch.train.config import TrainConfig
from dalle_pytorch.train.curves import refresh_curves
from dalle_pytorch.train.flops import FLOPS_DEPTH, count_flops, flops_report
from dalle_pytorch.train.loader import EpochData, batch_len, to_device
from dalle_pytorch.train.optim import LRSchedule, build_optimizer
from dalle_pytorch.train.parallel import ParallelModel
from dalle_pytorch.train.precision import autocast
from dalle_pytorch.train.rng import seed_all
from dalle_pytorch.train.runlog import RunLogger, write_summary
from dalle_pytorch.train.state import Progress, RunState
from dalle_pytorch.train.tasks import Task

__all__ = ["Trainer"]


class Trainer:
    """Trains `task` as `config` says, in `run_dir`; `resume` is the checkpoint pair to continue from (and its
    state). Console lines name settings as `name_setting(field)` (default: the field's name)."""

    def __init__(self, config: TrainConfig, env: DistEnv, task: Task, run_dir: str,
                 manager: CheckpointManager, resume: Optional[tuple[CheckpointPoint, dict]],
                 notes: Optional[list[str]] = None, name_setting: Optional[Callable[[str], str]] = None) -> None:
        self.config, self.env, self.task = config, env, task
        compute, loop = config.compute, config.loop
        self.run_dir, self.manager = run_dir, manager
        self.samples_dir = os.path.join(run_dir, "samples")
        task.model.train()
        self.model = ParallelModel(task.model, env, fsdp=compute.fsdp, compile=compute.compile, loss_fn=task.loss_fn,
                                   dummy_batch=task.dummy_batch)
        self.notes: list[str] = list(notes or []) + list(task.info) + self.model.notes
        # reduced precision: the fused AdamW kernel (not bit-identical to the default loop, which fp32 keeps);
        # not under FSDP2, whose sharded parameters go through the default loop
        fused = compute.precision != "fp32" and not compute.fsdp and env.device.type in ("cpu", "cuda")
        self.optimizer = build_optimizer(task.model, config.optim, fused=fused)
        self.scaler = torch.amp.GradScaler(env.device.type, enabled=compute.precision == "fp16")

        self.data = EpochData(task.data, env, loop)
        self.total = self.data.total_steps
        if task.set_steps_per_epoch is not None:  # schedules that count steps within the epoch
            task.set_steps_per_epoch(self.data.steps_per_epoch)
        self.scheduler = LRSchedule(self.optimizer, config.optim, self.total, self.data.steps_per_epoch)

        self.progress = Progress()
        self.state = RunState(config, env, task.kind, self.model, self.optimizer, self.scheduler, self.scaler,
                              self.progress)
        self.resume_step: Optional[int] = None
        if resume is not None:
            point, state = resume
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                self.notes += self.state.load_state_dict(state, point.state)
            self.resume_step = self.progress.step
            if not self.data.map_style:
                self.progress.batches_in_epoch = 0
                self.notes.append("note: streaming data resumes at a fresh stream position (not exact)")
        else:
            seed_all(loop.seed + env.rank)
            if task.start_state is not None:  # dalle_path, a DALLE-pytorch file: its optimizer, schedule, epoch
                self.notes += self.state.load_dalle_pytorch_state(task.start_state, self.data.steps_per_epoch)
        self.flops_step: Optional[int] = None
        if compute.flops_profiler:
            wanted = compute.flops_profiler_step
            self.flops_step = min(wanted, self.total - 1) if self.total is not None else wanted
        self.last_saved = self.progress.step if resume is not None else -1
        self.epochs_completed = 0
        self._tick = time.time()
        #: a resumed run that had already reached its length: nothing is trained or written
        self.complete = resume is not None and self.total is not None and self.progress.step >= self.total
        self.name_setting = name_setting
        self.logger = None if self.complete else RunLogger(run_dir, config, env, self.resume_step, name_setting)

    # -- checkpoints and images ---------------------------------------------------------------------

    def save(self) -> str:
        """Write the checkpoint pair of the current step (all ranks call this)."""
        env, step = self.env, self.progress.step
        env.barrier()
        model = self.model.full_model()
        state = self.state.state_dict()
        model_path, state_path = self.manager.pair(step)
        error: Optional[BaseException] = None
        if env.is_main:
            try:
                os.makedirs(self.manager.dir, exist_ok=True)
                meta = {"step": step, "epoch": self.progress.epoch, "run": self.config.outputs.name,
                        "kind": self.task.kind}
                save_model(model, model_path, tokenizer=self.task.tokenizer, metadata=meta)
                save_training_state(state_path, state)
                self.manager.commit(step)
                refresh_curves(self.run_dir)  # curves.png, when matplotlib is installed
            except Exception as e:  # noqa: BLE001 - reported on every rank below
                error = e
        if not env.all_ok(error is None):
            if env.is_main:
                self.manager.discard(step)  # a model file without its state (or the reverse) is no checkpoint
            last = self.manager.latest()
            where = f"; the last good checkpoint is {last.model} (step {last.step})" if last else ""
            if error is not None and is_disk_full(error):
                previous = (f"the previous checkpoint {last.model} (step {last.step}) is intact" if last
                            else "no earlier checkpoint exists")
                raise TrainingError(f"{error}; {previous}. Free some space and continue with `resume`") from error
            if isinstance(error, ValueError) and "non-finite" in str(error):
                raise TrainingError(f"stopping at step {step}: the weights have become non-finite (NaN/inf), "
                                    f"so no checkpoint was written{where}. Lower `learning_rate`, use "
                                    "`clip_grad_norm` or `precision` fp32, and resume from there.") from error
            if error is not None:
                raise TrainingError(f"could not write the checkpoint of step {step}: {error}") from error
            raise TrainingError(f"rank 0 could not write the checkpoint of step {step}")
        self.last_saved = step
        self.logger.event("checkpoint", step=step, model=os.path.relpath(model_path, self.run_dir))
        return model_path

    def _images(self, aux: Any) -> None:
        task = self.task
        if task.image_fn is None:
            return
        model = self.model.full_model() if task.image_needs_model else task.model
        if self.env.is_main:
            os.makedirs(self.samples_dir, exist_ok=True)
            step = self.progress.step
            result = task.image_fn(model, step, aux, os.path.join(self.samples_dir, f"step_{step:08d}"))
            if result:
                path, caption = result
                self.logger.event("images", step=step, path=os.path.relpath(path, self.run_dir), caption=caption)
                self.logger.image(path, step, caption)

    # -- the loop -------------------------------------------------------------------------------------

    def fit(self) -> dict:
        """Train to `max_steps` / `epochs`; returns the run summary."""
        if self.complete:
            return self._already_complete()
        try:
            return self._loop()
        finally:
            self.logger.close()

    def _already_complete(self) -> dict:
        """Resuming a run that already reached its length: say so and change nothing."""
        p = self.progress
        if self.env.is_main:
            print(name_fields(f"{self.run_dir}: the run is already complete (step {p.step} of {self.total}); nothing "
                              "to do. Set a larger `max_steps` / `epochs` to train further.", self.name_setting),
                  flush=True)
        try:
            with open(os.path.join(self.run_dir, "summary.json"), encoding="utf-8") as f:
                return json.load(f)
        except (OSError, ValueError):
            return {"kind": self.task.kind, "steps": p.step, "complete": True}

    def _loop(self) -> dict:
        loop, env, task, log, p = self.config.loop, self.env, self.task, self.logger, self.progress
        ga = loop.ga_steps
        resuming = self.resume_step is not None
        log.event("resume" if resuming else "start", step=p.step, epoch=p.epoch, kind=task.kind,
                  world_size=env.world_size, device=str(env.device), mode=self.model.mode, total_steps=self.total)
        for line in self.notes:
            log.print(line)
        log.print(f"training {task.kind} on {env.world_size} x {env.device.type} ({self.model.mode}), "
                  f"{loop.batch_size * ga * env.world_size} samples per step"
                  + (f", {self.data.steps_per_epoch} steps per epoch" if self.data.steps_per_epoch else "")
                  + (f", {self.total} steps" if self.total else "")
                  + (f"; resuming at step {p.step} (epoch {p.epoch})" if resuming else ""))
        if env.is_main and not self.config.outputs.no_progress:
            from tqdm.auto import tqdm

            log.bar = tqdm(total=self.total, initial=p.step, desc=task.kind, dynamic_ncols=True)

        start_time = self._tick = time.time()
        last_loss = None
        done = self.total is not None and p.step >= self.total
        while not done:
            pending: list = []
            got_any = False
            for item in self.data.batches(p.epoch, p.batches_in_epoch):
                got_any = True
                pending.append(item)
                if len(pending) < ga:
                    continue
                last_loss = self._step(pending)
                pending = []
                if self.total is not None and p.step >= self.total:
                    done = True
                    break
            if done and not (self.data.map_style and p.batches_in_epoch >= self.data.steps_per_epoch * ga):
                break  # stopped inside an epoch
            if not done and not self.data.map_style and not got_any:
                raise TrainingError("the data stream produced no batches (empty or unreadable shards?)")
            p.epoch += 1
            p.batches_in_epoch = 0
            self.scheduler.epoch_end(p.last_loss)  # lr_decay: once per epoch, on its last step's loss
            if done or (self.total is None and p.epoch >= loop.epochs):
                break

        epoch_done = self.data.map_style and p.batches_in_epoch >= self.data.steps_per_epoch * ga
        self.epochs_completed = p.epoch + (1 if epoch_done else 0)
        if self.last_saved != p.step and p.step > 0:
            self.save()
        return self._finish(start_time, last_loss)

    def _step(self, micro_batches: list) -> float:
        """One optimizer step over `micro_batches` (gradient accumulation); returns the mean loss."""
        outputs, env, task, p = self.config.outputs, self.env, self.task, self.progress
        ga = len(micro_batches)
        lr = self.optimizer.param_groups[0]["lr"]
        every = outputs.sample_every
        want_images = bool(every and task.image_fn is not None and (p.step + 1) % every == 0)
        if p.step == self.flops_step:
            with count_flops(depth=FLOPS_DEPTH) as counter:
                loss_sum, finite_local, new_skips, aux, samples = self._forward_backward(micro_batches, want_images)
            self._flops(counter, samples)
        else:
            loss_sum, finite_local, new_skips, aux, samples = self._forward_backward(micro_batches, want_images)
        p.batches_in_epoch += ga

        fresh = [f for f in new_skips if f not in p.skipped_files]
        p.skipped_files.update(fresh)
        stats = torch.stack([
            torch.where(finite_local, loss_sum / ga, 0.0),
            (~finite_local).float(),
            torch.tensor(float(len(fresh)), device=env.device),
            torch.tensor(float(samples), device=env.device),
        ])
        env.all_reduce_sum(stats)
        loss_total, nonfinite_count, skipped, samples_all = stats.tolist()  # the step's one read of its results
        nonfinite = nonfinite_count > 0
        p.skipped_total += int(skipped)
        p.samples_seen += int(samples_all)
        loss_value = float("nan") if nonfinite else loss_total / env.world_size
        p.last_loss = loss_value

        grad_norm = None
        if not nonfinite:
            if self.scaler.is_enabled():
                self.scaler.unscale_(self.optimizer)
            clip = self.config.optim.clip_grad_norm
            max_norm = clip if clip > 0 else float("inf")
            norm = torch.nn.utils.clip_grad_norm_(self.model.params, max_norm)
            if hasattr(norm, "full_tensor"):
                norm = norm.full_tensor()
            grad_norm = float(norm.item())
            if not math.isfinite(grad_norm) and not self.scaler.is_enabled():
                nonfinite = True
        if nonfinite:
            self.optimizer.zero_grad(set_to_none=True)
            p.nonfinite_total += 1
            p.nonfinite_run += 1
        else:
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.optimizer.zero_grad(set_to_none=True)
            p.nonfinite_run = 0
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "scheduler.step() before optimizer.step()" on a skip
            self.scheduler.step()
        p.step += 1

        dt = max(time.time() - self._tick, 1e-9)  # data loading + compute since the previous step
        record = {"event": "step", "step": p.step, "epoch": p.epoch, "loss": loss_value, "lr": lr,
                  "grad_norm": grad_norm, "samples_per_sec": samples_all / dt,
                  "nonfinite_steps": p.nonfinite_total, "skipped_samples": p.skipped_total}
        if nonfinite:
            record["skipped_step"] = True
        if task.log_fn is not None:
            record.update(task.log_fn(p.step - 1))
        self._report(record, loss_value, lr, nonfinite, fresh)

        if want_images:
            self._images(aux)
        if outputs.save_every_steps and p.step % outputs.save_every_steps == 0:
            self.save()
        self._tick = time.time()
        return loss_value

    def _forward_backward(self, micro_batches: list, want_images: bool):
        """Losses and gradients of one step's micro-batches: (loss sum, all finite (a bool tensor), skipped files, aux,
        samples)."""
        precision, env, task, p = self.config.compute.precision, self.env, self.task, self.progress
        ga = len(micro_batches)
        loss_sum = torch.zeros((), device=env.device)
        finite_local = torch.ones((), dtype=torch.bool, device=env.device)  # read once, with the step's stats
        new_skips: list[str] = []
        aux = None
        samples = 0
        for i, (batch, skipped) in enumerate(micro_batches):
            last = i == ga - 1
            if skipped:
                new_skips.extend(skipped)
            batch = to_device(batch, env.device)
            samples += batch_len(batch)
            with self.model.sync(last):
                with autocast(precision, env.device):
                    loss, micro_aux = task.loss_fn(self.model.train_model, batch, p.step)
                loss = loss.float()
                finite_local &= torch.isfinite(loss.detach())
                self.scaler.scale(loss / ga).backward()
            loss_sum += loss.detach()
            if last and want_images:
                aux = micro_aux
        return loss_sum, finite_local, new_skips, aux, samples

    def _flops(self, counter, samples: int) -> None:
        """flops_profiler: print and log the FLOPs of the step just counted (this process)."""
        step, log = self.progress.step, self.logger
        lines, total = flops_report(counter, samples)
        log.event("flops", step=step, flops=total, samples=samples)
        log.print(f"`flops_profiler`: step {step} (forward + backward of {samples} samples on this process):")
        for line in lines:
            log.print("  " + line)

    def _report(self, record: dict, loss_value: float, lr: float, nonfinite: bool, fresh: list[str]) -> None:
        loop, p, log = self.config.loop, self.progress, self.logger
        log.write(record)
        if log.bar is not None:
            log.bar.update(1)
            log.bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{lr:.2e}", refresh=False)
        if nonfinite:
            log.print(f"step {p.step}: non-finite loss or gradient; optimizer step skipped "
                      f"({p.nonfinite_run} in a row, {p.nonfinite_total} in total)")
            if p.nonfinite_run > loop.max_nonfinite:
                last = self.manager.latest()
                where = f" The last checkpoint is {last.model} (step {last.step})." if last else ""
                raise TrainingError(
                    f"stopping at step {p.step}: the loss was non-finite (NaN/inf) for {p.nonfinite_run} "
                    f"steps in a row, more than `max_nonfinite` {loop.max_nonfinite}.{where} Try a lower "
                    "`learning_rate`, `warmup_steps`, `clip_grad_norm`, or `precision` fp32/bf16 instead of fp16.")
        elif p.step % self.config.outputs.log_every == 0 and log.bar is None:
            log.print(f"epoch {p.epoch} step {p.step}: loss {loss_value:.5f} lr {lr:.3e}")
        if fresh and self.env.is_main:
            log.print(f"skipped bad samples: {', '.join(fresh)} ({p.skipped_total} so far)")

    def _finish(self, start_time: float, last_loss: Optional[float]) -> dict:
        env, p = self.env, self.progress
        final_path = os.path.join(self.run_dir, f"{self.config.outputs.name}.safetensors")
        point = self.manager.latest()
        if env.is_main and point is not None:
            link_file(point.model, final_path)
        summary = {
            "kind": self.task.kind,
            "steps": p.step,
            "epochs_completed": self.epochs_completed,
            "samples_seen": p.samples_seen,
            "final_loss": last_loss,
            "nonfinite_steps": p.nonfinite_total,
            "skipped_samples": p.skipped_total,
            "skipped_files": sorted(p.skipped_files),
            "world_size": env.world_size,
            "mode": self.model.mode,
            "seconds": time.time() - start_time,
            "model": final_path if point is not None else None,
            "replicas_in_sync": None,
        }
        if env.distributed:
            summary["replicas_in_sync"] = replicas_in_sync(self.run_dir, env, self.model.full_state_dict())
        if env.is_main:
            write_summary(self.logger, self.run_dir, summary)
        return summary
