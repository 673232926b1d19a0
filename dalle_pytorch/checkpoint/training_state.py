"""Training-state files: optimizer, scheduler, scaler and RNG states, step counters and data positions.

A torch file that holds only tensors, Python primitives and containers, so that it loads with
`weights_only=True` (no code from the file runs). Writes are atomic.
"""
from __future__ import annotations

import io
import os
from collections import OrderedDict
from typing import Any

import torch

from dalle_pytorch.errors import CheckpointError
from dalle_pytorch.formats.files import PathLike, atomic_write_bytes, regular_file
from dalle_pytorch.formats.pt_files import torch_load

__all__ = ["save_training_state", "load_training_state"]


_PLAIN = (type(None), bool, int, float, complex, str, bytes)


def _check_plain(obj: Any, where: str) -> None:
    """Only what torch.load(weights_only=True) reads back: tensors, primitives, dict/list/tuple of them."""
    if isinstance(obj, torch.Tensor) or type(obj) in _PLAIN or isinstance(obj, (torch.Size, torch.dtype, torch.device)):
        return
    if type(obj) in (dict, OrderedDict):
        for k, v in obj.items():
            if type(k) not in _PLAIN:
                raise TypeError(f"training state key {where}[{k!r}] is a {type(k).__name__}; keys must be str/int/...")
            _check_plain(v, f"{where}[{k!r}]")
        return
    if type(obj) in (list, tuple):
        for i, v in enumerate(obj):
            _check_plain(v, f"{where}[{i}]")
        return
    raise TypeError(f"training state entry {where} is a {type(obj).__name__}; only tensors, numbers, strings, bytes, "
                    "None and dict/list/tuple of them can be stored (convert numpy arrays with torch.from_numpy, "
                    "RNG states to tensors, objects to their state_dict())")


def save_training_state(path: PathLike, state: dict) -> None:
    """Atomically save resumable training state with torch.save.

    state: a dict of tensors, Python primitives and dict/list/tuple containers: optimizer /
    scheduler / grad-scaler state_dicts, step, RNG states (as tensors), data position, ...
    Anything else (numpy arrays, arbitrary objects) raises TypeError before anything is written,
    so the file always loads with `load_training_state` (weights_only=True).
    """
    if not isinstance(state, dict):
        raise TypeError(f"training state must be a dict, got {type(state).__name__}")
    _check_plain(state, "state")
    buf = io.BytesIO()  # serialised in memory first: torch's file writer reports a full disk as "unexpected pos"
    torch.save(state, buf)
    atomic_write_bytes(path, buf.getvalue())


def load_training_state(path: PathLike, map_location: Any = None) -> dict:
    """Read a file written by `save_training_state` (torch.load with weights_only=True: no code runs)."""
    path = os.fspath(regular_file(path, "training state"))
    state = torch_load(path, map_location=map_location)
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: a training state file holds a dict, found a {type(state).__name__}")
    return state
