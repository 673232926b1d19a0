"""The model as the training loop drives it: one process, DDP or FSDP2 (and torch.compile on top).

`ParallelModel` wraps the single-device model the task built (model code never wraps itself) and
answers what the loop needs in every mode alike: the module to call, the no-sync context for
gradient accumulation, the full weights (gathered under FSDP) and the optimizer state keyed by
parameter names (so a run can resume with another number of processes).
"""
from __future__ import annotations

import contextlib
import copy
import warnings
from typing import Any, Callable

import torch
from torch import nn

from dalle_pytorch.distributed import DistEnv
from dalle_pytorch.errors import TrainingError
from dalle_pytorch.models.dalle import DALLE
from dalle_pytorch.models.dalle_pytorch_keys import native_state_dict
from dalle_pytorch.models.vae import DiscreteVAE
from dalle_pytorch.train.loader import to_device

__all__ = ["ParallelModel", "fsdp_units", "unused_parameters"]


def fsdp_units(model: nn.Module) -> list[nn.Module]:
    """Submodules sharded as separate FSDP units: those whose forward is called (not just their weights)."""
    if isinstance(model, DALLE):
        return [*model.transformer.attns, *model.transformer.ffs, model.vae]
    if isinstance(model, DiscreteVAE):
        return [model.encoder, model.decoder]
    return []


def unused_parameters(model: nn.Module, loss_fn: Callable, batch: Any, device: torch.device) -> list[str]:
    """Trainable parameters that get no gradient in one forward/backward of `batch` (RNG state untouched)."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        loss, _ = loss_fn(model, to_device(batch, device), 0)
        loss.float().backward()
    unused = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    model.zero_grad(set_to_none=True)
    return unused


class ParallelModel:
    """Wraps `model` for `env`: mode "single", "ddp" or "fsdp" (`fsdp=True`, under torchrun).

    Attributes:
        model: the single-device model (its parameters are the ones the optimizer updates).
        train_model: what the loss is computed with (DDP wrapper, FSDP module, compiled or not).
        mode: "single" | "ddp" | "fsdp".
        params: the trainable parameters.
        notes: lines worth printing at start (e.g. DDP's unused parameters).
    """

    def __init__(self, model: nn.Module, env: DistEnv, *, fsdp: bool, compile: bool,
                 loss_fn: Callable, dummy_batch: Callable[[], Any]) -> None:
        self.model, self.env = model, env
        self.notes: list[str] = []
        self.shadow = None  # FSDP: a full copy on rank 0, for saving and sampling
        self.ddp = None
        if fsdp:
            from torch.distributed.device_mesh import init_device_mesh
            from torch.distributed.fsdp import fully_shard

            # the model's branches return views that are never modified in place, so this warning does not apply
            warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module .* returned a view tensor")
            if env.is_main:
                self.shadow = copy.deepcopy(model).cpu()
            model.to(env.device)
            mesh = init_device_mesh(env.device.type, (env.world_size,))
            for unit in fsdp_units(model):
                fully_shard(unit, mesh=mesh)
            fully_shard(model, mesh=mesh)
            wrapped: nn.Module = model
            self.mode = "fsdp"
        elif env.distributed:
            from torch.nn.parallel import DistributedDataParallel as DDP

            model.to(env.device)
            unused = unused_parameters(model, loss_fn, dummy_batch(), env.device)
            if unused:
                self.notes.append(f"DDP: {len(unused)} parameters get no gradient (e.g. {unused[0]}); "
                                  "using find_unused_parameters=True")
            wrapped = self.ddp = DDP(model, device_ids=[env.device.index] if env.device.type == "cuda" else None,
                                     find_unused_parameters=bool(unused))
            self.mode = "ddp"
        else:
            model.to(env.device)
            wrapped = model
            self.mode = "single"
        self.train_model = torch.compile(wrapped) if compile else wrapped
        self.params = [p for p in model.parameters() if p.requires_grad]

    def sync(self, last: bool):
        """No gradient all-reduce on the micro-batches before the last one of a step."""
        if self.mode == "ddp" and not last:
            return self.ddp.no_sync()
        if self.mode == "fsdp":
            self.model.set_requires_gradient_sync(last)
        return contextlib.nullcontext()

    # -- weights ------------------------------------------------------------------------------------

    def full_model(self) -> nn.Module:
        """A module with the full weights (collective under FSDP; the result is valid on rank 0)."""
        if self.mode != "fsdp":
            return self.model
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        with native_state_dict():  # FSDP2 maps the state dict's names onto the parameters' (ours)
            sd = get_model_state_dict(self.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if self.env.is_main:
            self.shadow.load_state_dict(sd)
        return self.shadow

    def full_state_dict(self) -> dict:
        """This rank's view of the full weights (every rank gets them; used to compare replicas)."""
        if self.mode == "fsdp":
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

            with native_state_dict():
                return get_model_state_dict(self.model, options=StateDictOptions(full_state_dict=True))
        with native_state_dict():
            return self.model.state_dict()

    # -- optimizer state by parameter names --------------------------------------------------------

    def _param_names(self, optimizer: torch.optim.Optimizer) -> list[list[str]]:
        names = {id(p): n for n, p in self.model.named_parameters()}
        return [[names[id(p)] for p in group["params"]] for group in optimizer.param_groups]

    def optimizer_state(self, optimizer: torch.optim.Optimizer) -> dict:
        """The full optimizer state keyed by parameter names (the same for single / DDP / FSDP runs)."""
        if self.mode == "fsdp":
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

            with native_state_dict():
                return get_optimizer_state_dict(self.model, optimizer,
                                                options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        sd = optimizer.state_dict()
        groups = self._param_names(optimizer)
        flat = [n for names in groups for n in names]
        return {"state": {flat[i]: v for i, v in sd["state"].items()},
                "param_groups": [{**g, "params": names} for g, names in zip(sd["param_groups"], groups)]}

    def load_optimizer_state(self, optimizer: torch.optim.Optimizer, sd: dict) -> None:
        groups = self._param_names(optimizer)
        saved = [list(g["params"]) for g in sd["param_groups"]]
        if [sorted(g) for g in saved] != [sorted(g) for g in groups]:
            raise TrainingError("the optimizer state does not match the model's trainable parameters; was the "
                                "run started with a different model?")
        if self.mode == "fsdp":
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

            with native_state_dict():
                set_optimizer_state_dict(self.model, optimizer, sd, options=StateDictOptions(full_state_dict=True))
            return
        index = {n: i for i, n in enumerate(n for names in groups for n in names)}
        optimizer.load_state_dict({
            "state": {index[n]: v for n, v in sd["state"].items()},
            "param_groups": [{**g, "params": [index[n] for n in names]}
                             for g, names in zip(sd["param_groups"], groups)],
        })
