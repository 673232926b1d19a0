"""DALLE-pytorch's DeepSpeed runs on this package's DDP: `ComputeConfig.deepspeed` (one rule for both scripts).

DALLE-pytorch runs distributed through DeepSpeed (`deepspeed train_dalle.py ... --deepspeed`) or
Horovod. This package trains with PyTorch DDP / FSDP2 and reads the launcher's RANK / WORLD_SIZE /
LOCAL_RANK / MASTER_ADDR / MASTER_PORT environment, which torchrun and the `deepspeed` launcher both
set, so DeepSpeed commands run unchanged, as DDP (DeepSpeed itself is not imported: no ZeRO, and fp16
is autocast with a GradScaler). What stays is the meaning of the batch size: with `deepspeed`,
`batch_size` is DeepSpeed's global batch of one optimizer step (`train_batch_size`), and each process
takes batch_size / (ga_steps x processes) samples per micro-batch (`split_global_batch`). With
streaming (WebDataset) data DALLE-pytorch fed batch_size / processes samples per micro-batch (not
divided by ga_steps), and so does this. The launcher flags themselves (Horovod, which is refused,
`--deepspeed_config`, `--local_rank`) are the command line's: dalle_pytorch/cli/train_flags.py.
"""
from __future__ import annotations

import dataclasses

from dalle_pytorch.errors import TrainingError
from dalle_pytorch.train.config import LoopConfig

__all__ = ["split_global_batch"]


def split_global_batch(loop: LoopConfig, world_size: int, streaming: bool = False) -> tuple[LoopConfig, list[str]]:
    """DeepSpeed's global batch `loop.batch_size` as this run's per-process micro-batch: (the loop settings
    with that batch_size, notes to print). Raises TrainingError when it does not split evenly."""
    ga, bs = loop.ga_steps, loop.batch_size
    per_step = world_size if streaming else world_size * ga  # processes (x micro-batches) sharing the batch
    if bs % per_step:
        split = "processes" if streaming else "`ga_steps` x processes"
        raise TrainingError(f"`deepspeed`: `batch_size` {bs} is DeepSpeed's global batch per optimizer step; it must "
                            f"be a multiple of {split} = {per_step}")
    per_process = bs // per_step
    seen = per_process * ga * world_size
    note = (f"note: `deepspeed` runs as DDP over {world_size} process(es) (DeepSpeed itself is not used); "
            f"`batch_size` {bs} is the global batch as under DeepSpeed: {per_process} per process per "
            f"micro-batch x {ga} micro-batch(es) x {world_size} = {seen} samples per optimizer step")
    return dataclasses.replace(loop, batch_size=per_process), [note]
