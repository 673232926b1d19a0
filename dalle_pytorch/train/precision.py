"""Mixed precision: which precisions a device can train in, and the autocast context (`ComputeConfig.precision`;
DALLE-pytorch's fp16 and amp flags become one of them on the command line: cli/train_flags.py)."""
from __future__ import annotations

import contextlib

import torch

from dalle_pytorch.errors import TrainingError

__all__ = ["check_precision", "autocast"]

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def check_precision(precision: str, device: torch.device) -> None:
    """Refuse precision settings the device cannot run, with what to use instead."""
    if precision == "fp16" and device.type != "cuda":
        raise TrainingError(
            "`precision` fp16 needs a CUDA GPU: float16 autocast with loss scaling (GradScaler) is not "
            f"supported on {device.type.upper()}. Use `precision` bf16 (or fp32) on CPU."
        )
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise TrainingError("`precision` bf16: this GPU does not support bfloat16; use `precision` fp16 or fp32")


def autocast(precision: str, device: torch.device):
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=_DTYPES[precision])
