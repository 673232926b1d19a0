"""Seconds per code on a canvas larger than the trained grid against the trained grid, side by side.

    python benchmarks/canvas.py              # demo + bench models, batch 1 and 8 (about a minute)
    python benchmarks/canvas.py --quick      # demo, batch 1

For each model, batch and canvas: wall clock of `generate_images(canvas=...)` per code, and how the
codes were computed (one-token steps while the window stays, window prefills when it moves, and
the prefill's tokens per code), against plain cached decoding of the trained grid. A prefill runs
the window's prefix (up to I - 1 codes) in one multi-token step: at small batch it streams the
weights once like a step, so it costs a few steps, not hundreds. Models as benchmarks/speculative.py's
("demo": 8 x 8 codes; "bench": dim 256, depth 4, 16 x 16 codes, random weights).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.generate import cpu_name  # noqa: E402
from benchmarks.speculative import load  # noqa: E402
from dalle_pytorch.generation.canvas import CanvasStats  # noqa: E402


def timed(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(f"CPU: {cpu_name()}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    models = ["demo"] if args.quick else ["demo", "bench"]
    batches = [1] if args.quick else [1, 8]
    print("| model | batch | canvas (codes) | s per code | x trained grid | steps | prefills | prefill tokens per code |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for name in models:
        model, text, sampling = load(name)
        f = model.fmap_size
        kw = dict(filter_thres=sampling.filter_thres, return_codes=True)
        for batch in batches:
            def plain():
                model.generate_images(text, num_images=batch, generator=torch.Generator().manual_seed(0), **kw)

            base = timed(plain, 3) / (f * f)
            print(f"| {name} | {batch} | {f}x{f} (trained, plain decoding) | {base * 1e3:.2f} ms | 1.00x | "
                  f"{f * f - 1} | 0 | 0 |")
            for canvas in ((f, 2 * f), (2 * f, f), (2 * f, 2 * f)):
                stats = CanvasStats()

                def run(stats=None, canvas=canvas):
                    model.generate_images(text, num_images=batch, canvas=canvas, stats=stats,
                                          generator=torch.Generator().manual_seed(0), **kw)

                run(stats)
                n = canvas[0] * canvas[1]
                per = timed(run, 2 if name == "demo" else 1) / n
                print(f"| {name} | {batch} | {canvas[0]}x{canvas[1]} | {per * 1e3:.2f} ms | {per / base:.2f}x | "
                      f"{stats.steps} | {stats.prefills} | {stats.prefill_tokens / max(stats.codes, 1):.1f} |", flush=True)


if __name__ == "__main__":
    main()
