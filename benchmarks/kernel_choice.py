"""The decode step's weight kernels: the measured choice (the default) against each fixed choice, side by side.

    python benchmarks/kernel_choice.py                   # demo, bench, community models (a few minutes)
    python benchmarks/kernel_choice.py --models demo     # one model

For each model and batch, whole `generate_images` calls (return_codes, cached, fp32, eager) with
pack_weights=None (the default: per weight shape the packed oneDNN kernel, or the row-wise one where
`nn.packed.KernelChoices` timed it faster at each of its reference batches), True (every weight packed) and False
(F.linear, the BLAS), interleaved, best of `--rounds`. Then the choices the process made, with the
timings behind them. Models: "demo" (the shipped one, 8 x 8 codes), "bench" (dim 256, depth 4) and
"community" (dim 512, depth 16) with random weights, as benchmarks/speculative.py makes them.
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
from dalle_pytorch.nn.packed import REFERENCE_BATCHES, KernelChoices  # noqa: E402

BATCHES = {"demo": (1, 4, 16), "bench": (1, 4, 64), "community": (1, 8)}
MODES = (("measured", None), ("packed", True), ("F.linear", False))


def time_call(model, text, batch: int, pack_weights) -> float:
    t0 = time.perf_counter()
    model.generate_images(text, return_codes=True, num_images=batch, filter_thres=0.9,
                          generator=torch.Generator().manual_seed(0), pack_weights=pack_weights)
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=list(BATCHES), choices=list(BATCHES))
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(f"CPU: {cpu_name()}, {args.threads} threads, torch {torch.__version__}; best of {args.rounds}, ms per call\n")
    print("| model | batch | measured (default) | all packed | F.linear | packed / measured | F.linear / measured |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name in args.models:
        model, text, _ = load(name)
        for batch in BATCHES[name]:
            time_call(model, text, batch, None)  # warm-up (and the default's timings, once per shape)
            best = {m: float("inf") for m, _ in MODES}
            for _ in range(args.rounds):
                for m, pw in MODES:
                    best[m] = min(best[m], time_call(model, text, batch, pw))
            ms = {m: 1e3 * t for m, t in best.items()}
            print(f"| {name} | {batch} | {ms['measured']:.0f} | {ms['packed']:.0f} | {ms['F.linear']:.0f} | "
                  f"{ms['packed'] / ms['measured']:.2f}x | {ms['F.linear'] / ms['measured']:.2f}x |", flush=True)
    print("\nThe choices (`KernelChoices.for_process().table()`: µs per product, packed / row-wise, at each of "
          f"REFERENCE_BATCHES = {REFERENCE_BATCHES}):\n")
    print("| weight | " + " | ".join(f"batch {b}" for b in REFERENCE_BATCHES) + " | kernel |")
    print("| --- | " + " | ".join("---" for _ in REFERENCE_BATCHES) + " | --- |")
    for r in KernelChoices.for_process().table():
        cells = " | ".join(f"{p:.1f} / {w:.1f}" for p, w in zip(r["packed_us"], r["rowwise_us"]))
        print(f"| {r['shape'][0]} x {r['shape'][1]} {r['dtype']} | {cells} | {'packed' if r['packed'] else 'row-wise'} |")


if __name__ == "__main__":
    main()
