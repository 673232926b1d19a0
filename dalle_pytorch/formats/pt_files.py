"""Weights out of torch pickles (.pt, .ckpt, .pkl), safely.

- `torch_load`: torch.load(weights_only=True), its failures as CheckpointErrors naming what the
  pickle wanted to import (`pickle_globals`, found without running anything);
- over `safe_pickle.TorchFile` (which never imports what a pickle names): `read_lightning_state_dict`
  (a Lightning checkpoint's `state_dict`, its shapes checked before any tensor is read) and
  `module_tensors` (the state dict of a pickled nn.Module, e.g. OpenAI's dVAE);
- `check_state_dict_shapes`: names and shapes against a model's, before anything is allocated.
"""
from __future__ import annotations

import io
import pickle
import pickletools
import zipfile
from typing import Any, Collection, Mapping

import torch

from dalle_pytorch.errors import CheckpointError
from dalle_pytorch.formats.files import PathLike
from dalle_pytorch.formats.safe_pickle import LIGHTNING_PLACEHOLDERS, MAX_MODULE_DEPTH, StandIn, TensorRef, TorchFile

__all__ = ["pickle_globals", "torch_load", "module_tensors", "check_state_dict_shapes", "read_lightning_state_dict"]

_SAFE_GLOBAL_PREFIXES = ("torch.", "collections.OrderedDict", "_codecs.encode", "builtins.")


def pickle_globals(path: str) -> list[str]:
    """Names a pickle imports (GLOBAL / STACK_GLOBAL), found by parsing its opcodes without running them."""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as z:
                names = [n for n in z.namelist() if n.endswith("data.pkl")]
                if not names:
                    return []
                data = z.read(names[0])
        else:
            with open(path, "rb") as f:
                data = f.read(64 << 20)
        found, strings = [], []
        for op, arg, _ in pickletools.genops(io.BytesIO(data)):
            if op.name in ("GLOBAL", "INST") and isinstance(arg, str):
                found.append(arg.replace(" ", "."))
            elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                found.append(f"{strings[-2]}.{strings[-1]}")
            if isinstance(arg, str):
                strings.append(arg)
        return found
    except Exception:  # not a pickle, or damaged: nothing to report
        return []


def _reason(e: BaseException) -> str:
    """The informative line of a (long, boilerplate-laden) torch.load error."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    for ln in lines:
        if ln.startswith(("Unsupported", "Unpickler error", "Could not find", "Trying to")):
            return ln
    return lines[0] if lines else type(e).__name__


def torch_load(path: str, map_location: Any = "cpu") -> Any:
    """torch.load(weights_only=True) with its failures turned into CheckpointErrors."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        unsafe = [g for g in pickle_globals(path) if not g.startswith(_SAFE_GLOBAL_PREFIXES)]
        if unsafe:
            raise CheckpointError(
                f"{path}: refusing to unpickle arbitrary code: the file asks to import {_listed(sorted(set(unsafe)))}, "
                "which plain tensors and containers never need. Nothing from it was executed. Only load it with "
                "torch.load(weights_only=False) if you trust its author, then re-save the weights as plain tensors."
            ) from None
        raise CheckpointError(
            f"{path}: not a readable checkpoint: torch.load(weights_only=True) could not read it (corrupted, not a "
            "torch/safetensors file, or a pickle that needs code to load, which this loader refuses to unpickle): "
            f"{_reason(e)}"
        ) from None
    except (FileNotFoundError, IsADirectoryError, PermissionError, MemoryError):
        raise
    except Exception as e:  # RuntimeError (bad zip), EOFError, SafetensorError (torch.load delegates *.safetensors), ...
        raise CheckpointError(f"{path}: cannot read this torch file; it is truncated or corrupted ({_reason(e)})") from e


def _listed(names: list[str], few: int = 5) -> str:
    shown = ", ".join(names[:few])
    return shown + (f", ... ({len(names) - few} more)" if len(names) > few else "")


def module_tensors(root: StandIn, what: str = "module") -> dict[str, TensorRef]:
    """The state dict of a pickled nn.Module held as StandIns: {'blocks.input.w': TensorRef, ...}.

    Walks each module's `_parameters`, `_buffers` and `_modules` (as nn.Module.state_dict does;
    None entries are skipped). Raises ValueError for anything that is not a module tree.
    """
    out: dict[str, TensorRef] = {}
    seen: set[int] = set()

    def walk(node: Any, prefix: str, depth: int) -> None:
        if not isinstance(node, StandIn) or not isinstance(node.state, dict):
            raise ValueError(f"{what}: {prefix or 'the root'} is not a pickled module ({node!r})")
        if id(node) in seen or depth > MAX_MODULE_DEPTH:
            raise ValueError(f"{what}: {prefix or 'the root'} appears twice or nests too deep in the module tree")
        seen.add(id(node))
        for field in ("_parameters", "_buffers"):
            entries = node.state.get(field, {})
            if not isinstance(entries, dict):
                raise ValueError(f"{what}: {prefix}{field} is not a dict")
            for name, value in entries.items():
                if value is None:
                    continue
                if not isinstance(name, str) or not isinstance(value, TensorRef):
                    raise ValueError(f"{what}: {prefix}{name!s} is not a tensor ({type(value).__name__})")
                out[prefix + name] = value
        children = node.state.get("_modules", {})
        if not isinstance(children, dict):
            raise ValueError(f"{what}: {prefix}_modules is not a dict")
        for name, child in children.items():
            if child is not None:
                if not isinstance(name, str):
                    raise ValueError(f"{what}: a submodule name {name!r} is not a string")
                walk(child, f"{prefix}{name}.", depth + 1)

    walk(root, "", 0)
    return out


def check_state_dict_shapes(found: Mapping[str, Any], expected: Mapping[str, torch.Size], what: str) -> None:
    """Raise ValueError unless `found` has exactly the names of `expected`, with the same shapes."""
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} ({', '.join(missing[:4])}{', ...' if len(missing) > 4 else ''})")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} ({', '.join(unexpected[:4])}"
                         f"{', ...' if len(unexpected) > 4 else ''})")
        raise ValueError(f"{what}: the weights do not fit the model built from its config: {'; '.join(parts)}")
    for name, shape in expected.items():
        if tuple(found[name].shape) != tuple(shape):
            raise ValueError(f"{what}: {name} has shape {tuple(found[name].shape)} in the file, "
                             f"{tuple(shape)} in the model built from its config")
        if not found[name].dtype.is_floating_point:
            raise ValueError(f"{what}: {name} is {found[name].dtype}, not a floating-point tensor")


def read_lightning_state_dict(path: PathLike, expected: Mapping[str, torch.Size], drop_prefixes: Collection[str] = (),
                              what: str = "checkpoint") -> dict[str, torch.Tensor]:
    """The float32 `state_dict` of a (Lightning) checkpoint, checked against `expected` shapes first.

    The file is a pickled dict with a `state_dict` entry ({name: tensor}); its other entries
    (optimizer states, callbacks, hyper_parameters...) are ignored and never read, and may name
    Lightning / OmegaConf classes (see LIGHTNING_PLACEHOLDERS). Names starting with one of
    `drop_prefixes` are dropped; the rest must match `expected` exactly (names and shapes) before
    any tensor memory is allocated.
    """
    with TorchFile(path, what) as f:
        obj = f.load(placeholders=LIGHTNING_PLACEHOLDERS)
        if not isinstance(obj, dict) or not isinstance(obj.get("state_dict"), dict):
            raise ValueError(f"{what} {f.path!r}: not a checkpoint: expected a dict with a 'state_dict' entry, "
                             f"got {type(obj).__name__}")
        found: dict[str, TensorRef] = {}
        for name, value in obj["state_dict"].items():
            if not isinstance(name, str) or not isinstance(value, TensorRef):
                raise ValueError(f"{what} {f.path!r}: state_dict entry {name!r} is a {type(value).__name__}, "
                                 "not a tensor")
            if not name.startswith(tuple(drop_prefixes)):
                found[name] = value
        check_state_dict_shapes(found, expected, f"{what} {f.path!r}")
        return {name: f.read(found[name]).float() for name in expected}
