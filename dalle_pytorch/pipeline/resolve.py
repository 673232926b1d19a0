"""Where a run's model comes from and what it runs on: the demo model shipped with the package
(`demo_path`), `--dalle_path` (`resolve_checkpoint`), `--device` and `--dtype` (`resolve_device`,
`resolve_dtype`).  Re-exported by `text_to_image` and `dalle_pytorch.pipeline`."""
from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Optional

import torch

from dalle_pytorch.errors import GenerationError, setting
from dalle_pytorch.formats.files import PathLike

__all__ = ["DEMO", "DEMO_FILE", "DTYPES", "demo_path", "resolve_checkpoint", "resolve_device", "resolve_dtype"]

#: The `--dalle_path` value (and default) that selects the demo model shipped with the package.
DEMO = "demo"
DEMO_FILE = "dalle.safetensors"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def demo_path() -> Path:
    """The demo model file shipped inside the package (`dalle_pytorch/demo/dalle.safetensors`)."""
    ref = resources.files("dalle_pytorch").joinpath("demo", DEMO_FILE)
    path = Path(str(ref))
    if not path.is_file():
        raise GenerationError(
            f"the demo model {str(path)!r} is missing from this installation; reinstall the package or train it "
            "with scripts/train_demo.sh"
        )
    return path


def resolve_checkpoint(dalle_path: Optional[PathLike]) -> tuple[Path, bool]:
    """`--dalle_path`: None or 'demo' -> (the packaged demo file, True); otherwise (the path, False).

    Raises GenerationError when the file does not exist (a file literally named 'demo' in the
    current folder takes precedence over the packaged model).
    """
    if dalle_path is None or (dalle_path == DEMO and not Path(DEMO).exists()):
        return demo_path(), True
    path = Path(dalle_path).expanduser()
    if not path.exists():
        raise GenerationError(f"{setting('dalle_path')} {str(dalle_path)!r} does not exist (use {setting('dalle_path')} "
                              "demo for the demo model)")
    if path.is_dir():
        raise GenerationError(f"{setting('dalle_path')} {str(dalle_path)!r} is a folder; give the checkpoint file")
    return path, False


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' -> cuda if available, else Apple's mps if available, else cpu; anything else is passed to
    torch.device (mps is untested: the project's machines have none)."""
    mps = getattr(torch.backends, "mps", None)
    has_mps = bool(mps is not None and mps.is_available())
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "mps" if has_mps else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise GenerationError(f"{setting('device')} {name!r} is not a device torch knows ({e})") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise GenerationError(f"{setting('device')} {name!r}: CUDA is not available on this machine "
                              f"(use {setting('device')} cpu)")
    if device.type == "mps" and not has_mps:
        raise GenerationError(f"{setting('device')} {name!r}: this PyTorch has no usable MPS device "
                              "(Apple GPUs only; use "
                              f"{setting('device')} cpu)")
    return device


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """'float32' | 'bfloat16' | 'float16'; float16 is refused on CPU (use bfloat16 there)."""
    if name not in DTYPES:
        raise GenerationError(f"{setting('dtype')} must be one of {', '.join(DTYPES)}, got {name!r}")
    if name == "float16" and device.type == "cpu":
        raise GenerationError(f"{setting('dtype')} float16 is not supported on CPU (half-precision matmuls are slow or "
                              "missing "
                              f"there); use {setting('dtype')} bfloat16 or float32, or a CUDA device")
    return DTYPES[name]
