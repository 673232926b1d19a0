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

from dalle_pytorch.errors import TrainingError
from dalle_pytorch.io.checkpoint import load_checkpoint
from dalle_pytorch.io.files import write_text
from dalle_pytorch.io.training_state import load_training_state
from dalle_pytorch.train.args import check_common_args, check_optional_packages
from dalle_pytorch.train.checkpoints import CheckpointManager
from dalle_pytorch.train.distributed import init_distributed
from dalle_pytorch.train.precision import check_precision
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
        check_precision(args.precision, env.device)
        if args.fsdp and not env.distributed:
            raise TrainingError("--fsdp shards the model across processes: launch with torchrun "
                                "--nproc_per_node N (N >= 2), or drop --fsdp")
        run_dir = os.path.abspath(args.output_dir or os.path.join("runs", args.name))
        if env.is_main:
            os.makedirs(run_dir, exist_ok=True)
        env.barrier()
        manager = CheckpointManager(run_dir, args.keep_last)
        point = manager.latest()
        seen = env.all_gather_object(point.step if point is not None else None)
        if len(set(seen)) != 1:
            raise TrainingError(f"the ranks see different checkpoints in {run_dir} (steps {seen}); the output folder "
                                "must be on a file system shared by all nodes")
        if point is not None and not args.resume:
            raise TrainingError(f"{run_dir} already holds a training run (newest checkpoint: step {point.step}). "
                                "Pass --resume to continue it, or choose another --output_dir / --name.")
        resume = resumed = None
        if args.resume and point is not None:
            resumed = load_checkpoint(point.model, map_location="cpu")
            resume = (point, load_training_state(point.state, map_location="cpu"))
        elif args.resume and env.is_main:
            print(f"--resume: no training state in {run_dir} yet; starting a new run", flush=True)
        seed_all(args.seed)  # identical initial weights on every rank
        with env.main_first():
            task = build_task(args, env, resumed)
        if env.is_main:
            config = {k: v for k, v in vars(args).items() if jsonable(v)}
            config.update(world_size=env.world_size, kind=task.kind)
            write_text(os.path.join(run_dir, "config.json"), json.dumps(config, indent=2) + "\n")
        trainer = Trainer(args, env, task, run_dir, manager, resume)
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


def cli(main: Callable[[argparse.Namespace], Any], parse_args: Callable[[], argparse.Namespace]) -> int:
    """Run a script's ``main`` with clean error messages for TrainingError (exit status 1)."""
    try:
        main(parse_args())
    except TrainingError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        print("interrupted; continue with --resume (from the last checkpoint)", file=sys.stderr, flush=True)
        return 130
    return 0
