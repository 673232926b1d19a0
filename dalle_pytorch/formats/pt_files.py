"""Reading torch pickles safely: `torch_load` (weights_only=True, failures as CheckpointErrors) and
`pickle_globals`, which lists what a pickle would import without running it (for error messages).
"""
from __future__ import annotations

import io
import pickle
import pickletools
import zipfile
from typing import Any

import torch

from dalle_pytorch.errors import CheckpointError

__all__ = ["pickle_globals", "torch_load"]

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
