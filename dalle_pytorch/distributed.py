"""The distributed environment of a training run (``torchrun``: RANK / WORLD_SIZE / LOCAL_RANK).

:class:`DistEnv` (rank, world size, device, the few collectives the training loop uses, process-group
teardown) and :func:`init_distributed` (device choice; gloo on CPU, nccl on CUDA).
"""
from __future__ import annotations

import contextlib
import dataclasses
import gc
import os
from typing import Any, Callable

import torch
import torch.distributed as dist

from dalle_pytorch.errors import TrainingError


@dataclasses.dataclass
class DistEnv:
    """Where this process runs: rank, world size and device (a single process is rank 0 of 1)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = dataclasses.field(default_factory=lambda: torch.device("cpu"))
    owns_group: bool = False

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.distributed:
            if self.device.type == "cuda":
                dist.barrier(device_ids=[self.device.index])
            else:
                dist.barrier()

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.distributed:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def all_gather_object(self, obj: Any) -> list:
        if not self.distributed:
            return [obj]
        out: list = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def all_ok(self, ok: bool) -> bool:
        """True on every rank when `ok` is True on every rank."""
        if not self.distributed:
            return ok
        flag = torch.tensor([0.0 if ok else 1.0], device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.SUM)
        return float(flag.item()) == 0.0

    @contextlib.contextmanager
    def main_first(self):
        """Run the body on rank 0 first (e.g. to build a dataset index cache), then on the others."""
        if not self.is_main:
            self.barrier()
        yield
        if self.is_main:
            self.barrier()

    def on_main(self, fn: Callable[[], Any]) -> Any:
        """fn() on rank 0 alone (its result there, None elsewhere), the others waiting for it; if it fails, every
        rank raises (rank 0 its error, the others a TrainingError saying so), so none waits for ever."""
        result, error = None, None
        if self.is_main:
            try:
                result = fn()
            except Exception as e:
                error = e
        ok = self.all_ok(error is None)  # a collective: the others wait here until rank 0 is done
        if error is not None:
            raise error
        if not ok:
            raise TrainingError("process 0 failed (its message is above)")
        return result

    def close(self) -> None:
        """Destroy the process group this environment made (callers on a clean exit `barrier()` first, so
        every rank reaches teardown together).  Garbage (models, wrappers, their pending gloo work) is
        collected first, while the interpreter is fully alive: gloo threads still holding such work at
        interpreter exit abort the process ("terminate called without an active exception";
        pytorch/pytorch#179291)."""
        if self.owns_group and dist.is_available() and dist.is_initialized():
            gc.collect()
            dist.destroy_process_group()
            self.owns_group = False


def mps_available() -> bool:
    """Whether this PyTorch can use Apple's Metal GPU (MPS)."""
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def device_type(device: str = "auto") -> str:
    """The kind of device `init_distributed(device)` picks for this process: "cuda", "mps" or "cpu".

    `auto` is CUDA when available, else Apple's MPS when available (one process only: torch.distributed
    has no MPS backend), else the CPU. Raises TrainingError for a device that is not there.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if device == "cuda" and not torch.cuda.is_available():
        raise TrainingError("`device` cuda was asked for but no CUDA GPU is available: use `device` cpu")
    if device == "mps" and not mps_available():
        raise TrainingError("`device` mps was asked for but this PyTorch has no usable MPS device (Apple GPUs only): "
                            "use `device` cpu")
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    use_mps = not use_cuda and (device == "mps" or (device == "auto" and world == 1 and mps_available()))
    if use_mps and world > 1:
        raise TrainingError("several processes cannot share an MPS device (torch.distributed has no MPS backend): "
                            "run one process, or use `device` cpu under torchrun")
    return "cuda" if use_cuda else "mps" if use_mps else "cpu"


def init_distributed(device: str = "auto") -> DistEnv:
    """Read torchrun's environment, pick the device (`device_type`) and (for WORLD_SIZE > 1) init the
    process group: gloo on CPU, nccl on CUDA; with CUDA each process uses GPU LOCAL_RANK. MPS is
    untested here (the project's machines have none).
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    kind = device_type(device)
    use_cuda, use_mps = kind == "cuda", kind == "mps"
    if use_cuda:
        dev = torch.device("cuda", local_rank % torch.cuda.device_count())
        torch.cuda.set_device(dev)
    elif use_mps:
        dev = torch.device("mps")
    else:
        dev = torch.device("cpu")
    env = DistEnv(rank=rank, world_size=world, local_rank=local_rank, device=dev)
    if world > 1 and not dist.is_initialized():
        if use_cuda:
            dist.init_process_group("nccl", device_id=dev)
        else:
            dist.init_process_group("gloo")
        env.owns_group = True
    return env
