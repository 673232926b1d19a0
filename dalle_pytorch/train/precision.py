"""Mixed precision: which precisions a device can train in, and the autocast context."""
from __future__ import annotations

import contextlib
from typing import Optional

import torch

from dalle_pytorch.errors import TrainingError

__all__ = ["check_precision", "resolve_precision", "autocast"]

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_precision(precision: Optional[str], fp16: bool, amp: bool,
                      device: torch.device) -> tuple[str, Optional[str]]:
    """The precision `--precision` / DALLE-pytorch's `--fp16` / `--amp` ask for on `device`, and a note.

    --fp16: float16 autocast with loss scaling (DALLE-pytorch cast the model to half without
    DeepSpeed, and used DeepSpeed's fp16 mixed precision with it); --amp (Apex O1 there): float16
    autocast + GradScaler on CUDA, bfloat16 autocast on CPU. Raises TrainingError when they contradict
    an explicit --precision, and for --fp16 on a CPU.
    """
    mapped, note = None, None
    if fp16:
        mapped = "fp16"
        if device.type != "cuda":
            raise TrainingError("--fp16 (float16 mixed precision) needs a CUDA GPU; on CPU use --amp or "
                                "--precision bf16")
        note = ("note: --fp16 trains with float16 autocast and loss scaling (fp32 master weights), not "
                "DALLE-pytorch's model.half()")
    elif amp:
        mapped = "fp16" if device.type == "cuda" else "bf16"
        how = "float16 autocast with loss scaling" if mapped == "fp16" else "bfloat16 autocast (float16 needs CUDA)"
        note = f"note: --amp is mixed precision here: {how} (Apex O1 in DALLE-pytorch)"
    if precision is not None and mapped is not None and precision != mapped:
        flag = "--fp16" if fp16 else "--amp"
        raise TrainingError(f"{flag} means --precision {mapped} here, which contradicts --precision {precision}: "
                            "give only one")
    return precision or mapped or "fp32", note


def check_precision(precision: str, device: torch.device) -> None:
    """Refuse precision settings the device cannot run, with what to use instead."""
    if precision == "fp16" and device.type != "cuda":
        raise TrainingError(
            "--precision fp16 needs a CUDA GPU: float16 autocast with loss scaling (GradScaler) is not "
            f"supported on {device.type.upper()}. Use --precision bf16 (or fp32) on CPU."
        )
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise TrainingError("--precision bf16: this GPU does not support bfloat16; use --precision fp16 or fp32")


def autocast(precision: str, device: torch.device):
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=_DTYPES[precision])
