"""DALLE-pytorch's distributed-backend flags, mapped onto this package's DDP (one rule for both scripts).

DALLE-pytorch runs distributed through DeepSpeed (`deepspeed train_dalle.py ... --deepspeed`, or
`--distributed_backend deepspeed`) or Horovod (`horovodrun ... --distributed_backend horovod`).
This package trains with PyTorch DDP / FSDP2 and reads the launcher's RANK / WORLD_SIZE /
LOCAL_RANK / MASTER_ADDR / MASTER_PORT environment, which torchrun and the `deepspeed` launcher both
set. So:

- DeepSpeed commands run unchanged, as DDP (DeepSpeed itself is not imported: no ZeRO, and
  `--fp16` is autocast with a GradScaler). `--batch_size` keeps DeepSpeed's meaning, the global
  batch of one optimizer step (`train_batch_size`): each process takes
  batch_size / (ga_steps x processes) samples per micro-batch. With `--wds` DALLE-pytorch fed
  batch_size / processes samples per micro-batch (not divided by ga_steps), and so does this.
- Horovod is refused with the equivalent torchrun command.
- `--deepspeed_config` is ignored: DALLE-pytorch passed its own settings, which took precedence.
- `--local_rank` is ignored: the environment's LOCAL_RANK is used, as DALLE-pytorch did.
"""
from __future__ import annotations

import argparse
import os
import shlex
import sys

from dalle_pytorch.distributed import DistEnv
from dalle_pytorch.errors import TrainingError

__all__ = ["apply_backend_args", "uses_deepspeed"]

# flags that only select the backend (dropped from the suggested torchrun command); value-taking first
_BACKEND_VALUE_FLAGS = ("--distributed_backend", "--distr_backend", "--deepspeed_config", "--deepscale_config",
                        "--local_rank", "--local-rank")
_BACKEND_SWITCHES = ("--deepspeed", "--deepscale", "--deepspeed_mpi")


def uses_deepspeed(args: argparse.Namespace) -> bool:
    """Whether the command asks for DeepSpeed (`--deepspeed`, `--deepscale` or `--distributed_backend deepspeed`)."""
    return bool(args.deepspeed or args.deepscale or args.distributed_backend == "deepspeed")


def torchrun_command(argv: list[str], processes: str) -> str:
    """The torchrun command line that runs `argv` (script and flags) without its backend flags."""
    kept, skip = [], False
    for arg in argv[1:]:
        if skip:
            skip = False
            continue
        name = arg.split("=", 1)[0]
        if name in _BACKEND_VALUE_FLAGS:
            skip = "=" not in arg
            continue
        if name in _BACKEND_SWITCHES:
            continue
        kept.append(arg)
    return shlex.join(["torchrun", "--nproc_per_node", processes, os.path.basename(argv[0]), *kept])


def apply_backend_args(args: argparse.Namespace, env: DistEnv, argv: list[str] | None = None) -> list[str]:
    """Map the backend flags onto this run (changes `args.batch_size` under DeepSpeed); returns notes to print.

    Raises TrainingError for Horovod and for a DeepSpeed global batch that does not split evenly.
    """
    argv = sys.argv if argv is None else argv
    notes = []
    if args.distributed_backend == "horovod":
        size = os.environ.get("HOROVOD_SIZE") or os.environ.get("OMPI_COMM_WORLD_SIZE") or "N"
        raise TrainingError(f"--distributed_backend horovod: Horovod is not supported; launch the same training with "
                            f"torchrun (DDP, same per-process --batch_size): {torchrun_command(argv, size)}")
    if args.deepspeed_config or args.deepscale_config:
        notes.append("note: --deepspeed_config is ignored (DALLE-pytorch's own DeepSpeed settings took precedence "
                     "over it too)")
    if not uses_deepspeed(args):
        return notes
    world, ga, bs = env.world_size, args.ga_steps, args.batch_size
    per_step = world if args.wds else world * ga  # processes (x micro-batches) that share the global batch
    if bs % per_step:
        split = "processes" if args.wds else "--ga_steps x processes"
        raise TrainingError(f"--deepspeed: --batch_size {bs} is DeepSpeed's global batch per optimizer step; it must "
                            f"be a multiple of {split} = {per_step}")
    args.deepspeed_batch_size = bs
    args.batch_size = bs // per_step
    seen = args.batch_size * ga * world
    notes.append(f"note: --deepspeed runs as DDP over {world} process(es) (DeepSpeed itself is not used); "
                 f"--batch_size {bs} is the global batch as under DeepSpeed: {args.batch_size} per process per "
                 f"micro-batch x {ga} micro-batch(es) x {world} = {seen} samples per optimizer step")
    return notes
