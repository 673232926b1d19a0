"""The entry point of both training scripts: `run(args, build_task)` and `cli(main, parse_args)`.

    train_vae.py:    run(args, vae_task)
    train_dalle.py:  run(args, dalle_task)

`run` works alone or under torchrun: it sets up the distributed environment, finds the run folder's
newest checkpoint pair (an existing run needs --resume), builds the task, trains it with `Trainer`
and tears the process group down cleanly.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import sys
from typing import Any, Callable

from dalle_pytorch.checkpoint.ours import load_checkpoint
from dalle_pytorch.checkpoint.training_state import load_training_state
from dalle_pytorch.distributed import init_distributed
from dalle_pytorch.errors import CheckpointError, TrainingError
from dalle_pytorch.formats.files import write_text
from dalle_pytorch.train.args import check_common_args, check_optional_packages
from dalle_pytorch.train.backends import apply_backend_args
from dalle_pytorch.train.checkpoints import CheckpointManager, CheckpointPoint
from dalle_pytorch.train.datasets import DatasetError
from dalle_pytorch.train.precision import check_precision, resolve_precision
from dalle_pytorch.train.rng import seed_all
from dalle_pytorch.train.runlog import jsonable
from dalle_pytorch.train.tasks import TaskBuilder
from dalle_pytorch.train.trainer import Trainer

__all__ = ["run", "cli"]


def run(args: argparse.Namespace, build_task: TaskBuilder) -> dict:
    """Train the task `build_task(args, env, resumed)` builds, as configured by `args`; returns the run summary.

    Works alone or under torchrun. Raises TrainingError for configuration problems, non-finite
    divergence and unwritable checkpoints.
    """
    check_common_args(args)
    check_optional_packages(args)
    env = init_distributed(args.device)
    task = trainer = None
    try:
        notes = apply_backend_args(args, env)
        args.precision, note = resolve_precision(args.precision, args.fp16, args.amp, env.device)
        notes += [note] if note else []
        check_precision(args.precision, env.device)
        if args.fsdp and not env.distributed:
            raise TrainingError("--fsdp shards the model across processes: launch with torchrun "
                                "--nproc_per_node N (N >= 2), or drop --fsdp")
        run_dir = os.path.abspath(args.output_dir or os.path.join("runs", args.name))
        if env.is_main:
            os.makedirs(run_dir, exist_ok=True)
        env.barrier()
        manager = CheckpointManager(run_dir, args.keep_last)
        if env.is_main:
            removed = manager.clean_temporary_files()
            if removed:
                print(f"removed {len(removed)} temporary files left by an interrupted run: {', '.join(removed[:5])}",
                      flush=True)
        env.barrier()
        point = manager.latest()
        seen = env.all_gather_object(point.step if point is not None else None)
        if len(set(seen)) != 1:
            raise TrainingError(f"the ranks see different checkpoints in {run_dir} (steps {seen}); the output folder "
                                "must be on a file system shared by all nodes")
        if point is not None and not args.resume and continues_run(args, point):
            # DALLE-pytorch's "resume": --dalle_path pointing at this run's newest model continues the run (exactly)
            args.resume = True
            notes.append("--dalle_path is this run's newest model: continuing the run exactly (as --resume)")
        if point is not None and not args.resume:
            raise TrainingError(f"{run_dir} already holds a training run (newest checkpoint: step {point.step}). "
                                "Pass --resume to continue it, or choose another --output_dir / --name.")
        resume = resumed = None
        if args.resume and point is not None:
            resume, resumed = _newest_loadable(manager, env.is_main)
        elif args.resume and env.is_main:
            print(f"--resume: no training state in {run_dir} yet; starting a new run", flush=True)
        seed_all(args.seed)  # identical initial weights on every rank
        with env.main_first():
            task = build_task(args, env, resumed)
        trainer = Trainer(args, env, task, run_dir, manager, resume, notes=notes)
        if env.is_main and not trainer.complete:
            config = {k: v for k, v in vars(args).items() if jsonable(v)}
            config.update(world_size=env.world_size, kind=task.kind)
            write_text(os.path.join(run_dir, "config.json"), json.dumps(config, indent=2) + "\n")
        result = trainer.fit()
        env.barrier()  # every rank reaches teardown together
        return result
    finally:
        # Release the model, its DDP/FSDP wrapper and their pending gloo work while the interpreter
        # is fully alive: gloo threads still holding such work at interpreter exit abort the process
        # ("terminate called without an active exception"; see pytorch/pytorch#179291).
        task = trainer = None
        gc.collect()
        env.close()


def _newest_loadable(manager: CheckpointManager, verbose: bool) -> tuple[tuple[CheckpointPoint, dict], Any]:
    """The newest checkpoint pair that loads (model and training state), saying which were skipped and why."""
    problems = []
    for point in manager.candidates():
        try:
            resumed = load_checkpoint(point.model, map_location="cpu")
            state = load_training_state(point.state, map_location="cpu")
        except (CheckpointError, OSError) as e:
            problems.append(f"step {point.step}: {e}")
            if verbose:
                print(f"--resume: skipping the checkpoint pair of step {point.step}: {e}", flush=True)
            continue
        if problems and verbose:
            print(f"--resume: continuing from step {point.step}, the newest pair that loads", flush=True)
        return (point, state), resumed
    raise TrainingError(f"--resume: no checkpoint pair in {manager.dir} loads ({'; '.join(problems[:3])})")


#: errors a training script reports as one line (the traceback with --debug or DALLE_PYTORCH_DEBUG=1)
REPORTED = (TrainingError, CheckpointError, DatasetError, OSError, ImportError)


def continues_run(args: argparse.Namespace, point: CheckpointPoint) -> bool:
    """Whether `--dalle_path` is the newest model of the run folder (its final model or newest checkpoint)."""
    path = getattr(args, "dalle_path", None)
    if not path or not os.path.isfile(path):
        return False
    return os.path.samefile(path, point.model)


def cli(main: Callable[[argparse.Namespace], Any], parse_args: Callable[[], argparse.Namespace]) -> int:
    """Run a script's ``main``; a configuration, checkpoint, data or file problem is one ``error:`` line
    (exit status 1), with the full traceback when --debug or DALLE_PYTORCH_DEBUG=1 is given."""
    args = parse_args()
    debug = bool(getattr(args, "debug", False)) or os.environ.get("DALLE_PYTORCH_DEBUG", "") not in ("", "0")
    try:
        main(args)
    except REPORTED as e:
        if debug:
            raise
        print(f"error: {one_line(e)} (--debug shows the traceback)", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        print("interrupted; continue with --resume (from the last checkpoint)", file=sys.stderr, flush=True)
        return 130
    return 0


def one_line(error: BaseException) -> str:
    """The message of `error` on one line (an error raised in a DataLoader worker carries its traceback:
    keep its last line, the original message)."""
    text = str(error).strip()
    if "Original Traceback" in text:
        text = text.splitlines()[-1]
        text = text.split(": ", 1)[1] if ": " in text else text
    return " ".join(text.split())
