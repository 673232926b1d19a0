"""`dalle_pytorch.distributed_utils`: DALLE-pytorch's optional-distribution API, over torchrun.

DALLE-pytorch's scripts call, in this order: `wrap_arg_parser(parser)` (adds `--distributed_backend`
/ `--distr_backend`, and `--deepspeed`), `set_backend_from_args(args)` (sets and returns the module's
`backend`, and `is_distributed`), then the backend's `initialize()`, `is_root_worker()`,
`get_world_size()`, `get_rank()`, `check_batch_size(n)`, `distribute(...)`, `average_all(t)` and
`local_barrier()`; `using_backend(X)` tests which backend is in use. The module-level `backend` and
`is_distributed` are DALLE-pytorch's design (its scripts read them), kept here.

Backends: `DummyBackend` (one process, the default, as DALLE-pytorch's) and `TorchrunBackend`
(`--distributed_backend torchrun`, or chosen when started by torchrun with WORLD_SIZE > 1:
the process group of `dalle_pytorch.distributed.init_distributed`, the model wrapped in
DistributedDataParallel). DeepSpeed and Horovod are not backends of this package: selecting one is
a one-line error that says to run under torchrun. `DeepSpeedBackend` and `HorovodBackend` exist as
names, so that `using_backend(distributed_utils.DeepSpeedBackend)` is False as it is for
DALLE-pytorch's scripts run without them.
"""
from __future__ import annotations

import os
from typing import Optional

import torch

from dalle_pytorch.distributed import DistEnv, init_distributed

__all__ = ["wrap_arg_parser", "set_backend_from_args", "using_backend", "require_set_backend", "BACKENDS",
           "DistributedBackend", "DummyBackend", "TorchrunBackend", "DeepSpeedBackend", "HorovodBackend",
           "backend", "is_distributed"]

#: whether we are distributed (set by set_backend_from_args)
is_distributed: Optional[bool] = None
#: the backend in use (set by set_backend_from_args)
backend: Optional["DistributedBackend"] = None


class DistributedBackend:
    """The backend API DALLE-pytorch's scripts call (its `DistributedBackend`'s public methods)."""

    BACKEND_NAME = "abstract"
    ROOT_RANK = 0

    def __init__(self) -> None:
        self.is_initialized = False
        self.env = DistEnv()

    def has_backend(self) -> bool:
        return True

    def wrap_arg_parser(self, parser):
        return parser

    def initialize(self) -> None:
        self._initialize()
        self.is_initialized = True

    def _initialize(self) -> None:
        pass

    def require_init(self) -> None:
        if not self.is_initialized:
            raise RuntimeError(f"the {self.BACKEND_NAME} backend has not been initialized: call "
                               "distributed_utils.backend.initialize() at the start of the script")

    def get_world_size(self) -> int:
        self.require_init()
        return self.env.world_size

    def get_rank(self) -> int:
        self.require_init()
        return self.env.rank

    def get_local_rank(self) -> int:
        self.require_init()
        return self.env.local_rank

    def is_root_worker(self) -> bool:
        return self.get_rank() == self.ROOT_RANK

    def is_local_root_worker(self) -> bool:
        return self.get_local_rank() == self.ROOT_RANK

    def check_batch_size(self, batch_size: int) -> None:
        if batch_size < self.get_world_size():
            raise ValueError(f"batch size can't be smaller than number of processes ({batch_size} < "
                             f"{self.get_world_size()})")

    def local_barrier(self) -> None:
        self.require_init()
        self.env.barrier()

    def distribute(self, args=None, model=None, optimizer=None, model_parameters=None, training_data=None,
                   lr_scheduler=None, **kwargs):
        """(model engine, optimizer, dataloader, lr scheduler), wrapped for the backend."""
        self.require_init()
        return self._distribute(model, optimizer, training_data, lr_scheduler)

    def _distribute(self, model, optimizer, training_data, lr_scheduler):
        return model, optimizer, training_data, lr_scheduler

    def average_all(self, tensor: torch.Tensor) -> torch.Tensor:
        """The mean of `tensor` over all processes (a new tensor where distributed)."""
        self.require_init()
        if self.env.world_size == 1:
            return tensor
        total = self.env.all_reduce_sum(tensor.detach().clone())
        return total / self.env.world_size


class DummyBackend(DistributedBackend):
    """One process (DALLE-pytorch's default): rank 0 of 1, everything returned as it is."""

    BACKEND_NAME = "Dummy"


class TorchrunBackend(DistributedBackend):
    """The processes torchrun started: one process group (gloo on the CPU, nccl on CUDA); `distribute`
    wraps the model in DistributedDataParallel."""

    BACKEND_NAME = "torchrun"

    def _initialize(self) -> None:
        self.env = init_distributed(os.environ.get("DALLE_PYTORCH_DEVICE", "auto"))

    def _distribute(self, model, optimizer, training_data, lr_scheduler):
        if model is not None and self.env.world_size > 1:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.env.device.index] if self.env.device.type == "cuda" else None
            model = DistributedDataParallel(model, device_ids=ids)
        return model, optimizer, training_data, lr_scheduler


class _Refused(DistributedBackend):
    def has_backend(self) -> bool:
        return False


class DeepSpeedBackend(_Refused):
    """A name only: DeepSpeed is not a backend of this package (run under torchrun)."""

    BACKEND_NAME = "DeepSpeed"


class HorovodBackend(_Refused):
    """A name only: Horovod is not a backend of this package (run under torchrun)."""

    BACKEND_NAME = "Horovod"


BACKENDS = [DummyBackend(), TorchrunBackend(), DeepSpeedBackend(), HorovodBackend()]


def wrap_arg_parser(parser):
    """Add `--distributed_backend` (`--distr_backend`) and `--deepspeed` to an argparse parser; returns it."""
    parser.add_argument("--distributed_backend", "--distr_backend", type=str, default=None,
                        help="which distributed backend to use (torchrun, or none); do not distribute by default")
    parser.add_argument("--deepspeed", action="store_true",
                        help="DeepSpeed is not supported by dalle_pytorch: run the script under torchrun instead")
    return parser


def set_backend_from_args(args):
    """Set and return the backend `args` select (`wrap_arg_parser`'s flags); torchrun's when torchrun
    started this process with WORLD_SIZE > 1 and no backend was named."""
    global is_distributed, backend
    name = getattr(args, "distributed_backend", None)
    if getattr(args, "deepspeed", False):
        name = DeepSpeedBackend.BACKEND_NAME
    if not name and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        name = TorchrunBackend.BACKEND_NAME
    if not name:
        is_distributed, backend = False, BACKENDS[0]
        return backend
    for candidate in BACKENDS:
        if candidate.BACKEND_NAME.lower() == str(name).lower():
            if not candidate.has_backend():
                raise ValueError(f"the {candidate.BACKEND_NAME} backend is not supported by dalle_pytorch; run the "
                                 "script under torchrun instead (torchrun --nproc_per_node N script.py ...)")
            is_distributed, backend = candidate.BACKEND_NAME != DummyBackend.BACKEND_NAME, candidate
            if is_distributed:
                print(f"Using {backend.BACKEND_NAME} for distributed execution")  # as DALLE-pytorch's scripts print
            return backend
    raise ValueError(f"unknown distributed backend {name!r}; known: torchrun (or none)")


def require_set_backend() -> None:
    if backend is None:
        raise RuntimeError("the distributed backend is not set: call distributed_utils.set_backend_from_args "
                           "at the start of the script")


def using_backend(test_backend) -> bool:
    """Whether the backend in use is `test_backend` (a backend class or its name)."""
    require_set_backend()
    if isinstance(test_backend, str):
        return backend.BACKEND_NAME == test_backend
    return isinstance(backend, test_backend)
