"""What the side-by-side workers measure the same way: benchmarks/compare.py's (this package) and
benchmarks/dalle_pytorch_ref.py's (DALLE-pytorch, in its own venv, which imports this file too:
standard library only).

- `rss_mb`, `peak_rss_mb`: this process's resident memory now and at its peak;
- `time_first_call`: when a function (the sampler) is first called in each timed generation.
"""
from __future__ import annotations

import resource
import time


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM: unlike ru_maxrss, not inherited across exec
    from the parent that spawned it)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024


def time_first_call(module, name: str) -> list:
    """Wrap `module.<name>`; returns a list `marks`: append None before each timed call, and after it
    the last mark holds the time.perf_counter() of the wrapped function's first call within it (the
    first sampled image code of a generation marks its first token)."""
    marks: list = []
    original = getattr(module, name)

    def timed(*args, **kwargs):
        out = original(*args, **kwargs)
        if marks and marks[-1] is None:
            marks[-1] = time.perf_counter()
        return out

    setattr(module, name, timed)
    return marks
