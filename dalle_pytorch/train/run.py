"""The entry point of both training scripts: `run(config, build_task)`.

    train_vae.py:    run(TrainConfig(task=VaeConfig(...), ...), vae_task)
    train_dalle.py:  run(TrainConfig(task=DalleConfig(...), ...), dalle_task)

`run` works alone or under torchrun: it sets up the distributed environment, checks the task's
inputs, finds the run folder's newest checkpoint pair (an existing run needs `resume`), builds the
task, trains it with `Trainer` and tears the process group down cleanly. The command lines build
the config from their flags and show its errors as one line (dalle_pytorch/cli/).
"""
from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
from typing import Any, Callable, Optional, Sequence

from dalle_pytorch.checkpoint.ours import load_checkpoint
from dalle_pytorch.checkpoint.training_state import load_training_state
from dalle_pytorch.distributed import init_distributed
from dalle_pytorch.errors import CheckpointError, TrainingError, name_fields
from dalle_pytorch.formats.files import write_text
from dalle_pytorch.train.backends import split_global_batch
from dalle_pytorch.train.checkpoints import CheckpointManager, CheckpointPoint
from dalle_pytorch.train.config import TrainConfig
from dalle_pytorch.train.precision import check_precision
from dalle_pytorch.train.rng import seed_all
from dalle_pytorch.train.runlog import counted
from dalle_pytorch.train.tasks import TaskBuilder
from dalle_pytorch.train.trainer import Trainer

__all__ = ["run", "check_optional_packages", "continues_run"]


def run(config: TrainConfig, build_task: TaskBuilder, *, notes: Sequence[str] = (),
        name_setting: Optional[Callable[[str], str]] = None) -> dict:
    """Train the task `build_task(config, env, resumed)` builds, as `config` says; returns the run summary.

    Works alone or under torchrun. `notes` are printed when training starts; console lines name
    settings as `name_setting(field)` (default: the field's name; the scripts show their flags).
    Raises TrainingError for configuration problems, non-finite divergence and unwritable checkpoints.
    """
    check_optional_packages(config)
    env = init_distributed(config.compute.device)
    task = trainer = None

    def say(line: str) -> None:
        if env.is_main:
            print(name_fields(line, name_setting), flush=True)

    try:
        notes = list(notes)
        if config.compute.deepspeed:
            loop, more = split_global_batch(config.loop, env.world_size, config.streaming)
            deepspeed_batch_size, notes = config.loop.batch_size, notes + more
            config = dataclasses.replace(config, loop=loop)
        check_precision(config.compute.precision, env.device)
        if config.compute.fsdp and not env.distributed:
            raise TrainingError("`fsdp` shards the model across processes: launch with torchrun --nproc_per_node N "
                                "(N >= 2), or drop `fsdp`")
        if config.task is not None:
            config.task.check_inputs()  # a missing data folder or model file first, before the run folder
        run_dir = config.outputs.run_dir
        if env.is_main:
            os.makedirs(run_dir, exist_ok=True)
        env.barrier()
        manager = CheckpointManager(run_dir, config.outputs.keep_last)
        if env.is_main:
            removed = manager.clean_temporary_files()
            if removed:
                say(f"removed {counted(len(removed), 'temporary file')} left by an interrupted run: "
                    f"{', '.join(removed[:5])}")
        env.barrier()
        point = manager.latest()
        seen = env.all_gather_object(point.step if point is not None else None)
        if len(set(seen)) != 1:
            raise TrainingError(f"the ranks see different checkpoints in {run_dir} (steps {seen}); the output folder "
                                "must be on a file system shared by all nodes")
        resume = config.outputs.resume
        if point is not None and not resume and continues_run(config, point):
            # DALLE-pytorch's "resume": dalle_path pointing at this run's newest model continues the run (exactly)
            resume = True
            notes.append("`dalle_path` is this run's newest model: continuing the run exactly, as with `resume`")
        if point is not None and not resume:
            raise TrainingError(f"{run_dir} already holds a training run (newest checkpoint: step {point.step}). "
                                "Set `resume` to continue it, or choose another `output_dir` / `name`.")
        state = resumed = None
        if resume and point is not None:
            state, resumed = newest_loadable(manager, say)
        elif resume:
            say(f"`resume`: no training state in {run_dir} yet; starting a new run")
        seed_all(config.loop.seed)  # identical initial weights on every rank
        with env.main_first():
            task = build_task(config, env, resumed)
        trainer = Trainer(config, env, task, run_dir, manager, state, notes=notes, name_setting=name_setting)
        if env.is_main and not trainer.complete:
            settings = dict(config.settings(), resume=resume, world_size=env.world_size, kind=task.kind)
            if config.compute.deepspeed:
                settings["deepspeed_batch_size"] = deepspeed_batch_size
            write_text(os.path.join(run_dir, "config.json"), json.dumps(settings, indent=2) + "\n")
        result = trainer.fit()
        env.barrier()  # every rank reaches teardown together
        return result
    finally:
        task = trainer = None  # released before the group goes (env.close collects them)
        env.close()


def check_optional_packages(config: TrainConfig) -> None:
    """Fail before any work when an optional package a setting needs is missing."""
    needs = [("tensorboard", config.outputs.tensorboard, "tensorboard"), ("wandb", config.outputs.wandb, "wandb"),
             ("wds", config.streaming, "webdataset")]
    for name, wanted, module in needs:
        if wanted and importlib.util.find_spec(module) is None:
            raise TrainingError(f"`{name}` needs the optional package '{module}': pip install {module}")


def newest_loadable(manager: CheckpointManager, say: Callable[[str], None]) -> tuple[tuple[CheckpointPoint, dict], Any]:
    """The newest checkpoint pair that loads (model and training state), saying which were skipped and why."""
    problems = []
    for point in manager.candidates():
        try:
            resumed = load_checkpoint(point.model, map_location="cpu")
            state = load_training_state(point.state, map_location="cpu")
        except (CheckpointError, OSError) as e:
            problems.append(f"step {point.step}: {e}")
            say(f"`resume`: skipping the checkpoint pair of step {point.step}: {e}")
            continue
        if problems:
            say(f"`resume`: continuing from step {point.step}, the newest pair that loads")
        return (point, state), resumed
    raise TrainingError(f"`resume`: no checkpoint pair in {manager.dir} loads; {'; '.join(problems[:3])}")


def continues_run(config: TrainConfig, point: CheckpointPoint) -> bool:
    """Whether `dalle_path` is the newest model of the run folder (its final model or newest checkpoint)."""
    path = getattr(config.task, "dalle_path", None)
    if not path or not os.path.isfile(path):
        return False
    return os.path.samefile(path, point.model)
