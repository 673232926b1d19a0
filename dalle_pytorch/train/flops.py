"""`flops_profiler` (`ComputeConfig`): the floating-point operations of one training step, counted by PyTorch.

DALLE-pytorch's flag switched on DeepSpeed's flops profiler at step 200. Here
`torch.utils.flop_counter.FlopCounterMode` counts the matmuls, convolutions and attention products
that the forward and backward passes of one optimizer step really run (on this process, every
micro-batch of the step), per module; the optimizer update and elementwise ops are not counted.
"""
from __future__ import annotations

from torch.utils.flop_counter import FlopCounterMode

__all__ = ["FLOPS_DEPTH", "count_flops", "flops_report"]

FLOPS_DEPTH = 3  # module levels in the report (e.g. DALLE > transformer > attns.0)


def count_flops(depth: int = FLOPS_DEPTH) -> FlopCounterMode:
    """A context manager that counts the FLOPs run inside it (no printing; see `flops_report`)."""
    return FlopCounterMode(display=False, depth=depth)


def _fmt(flops: int) -> str:
    for unit, scale in (("TFLOP", 1e12), ("GFLOP", 1e9), ("MFLOP", 1e6), ("kFLOP", 1e3)):
        if flops >= scale:
            return f"{flops / scale:.3f} {unit}"
    return f"{flops} FLOP"


def flops_report(counter: FlopCounterMode, samples: int) -> tuple[list[str], int]:
    """(lines to print, total FLOPs): the total, per sample, and per module (largest first)."""
    total = int(counter.get_total_flops())
    lines = [f"total {_fmt(total)}" + (f", {_fmt(total // samples)} per sample" if samples else "")]
    per_module = []
    for name, ops in counter.get_flop_counts().items():
        if name == "Global" or not ops:
            continue
        per_module.append((sum(ops.values()), name))
    for flops, name in sorted(per_module, key=lambda x: (-x[0], x[1])):
        share = 100.0 * flops / total if total else 0.0
        lines.append(f"{name}: {_fmt(flops)} ({share:.1f}%)")
    return lines, total
