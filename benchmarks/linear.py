"""A decode step's weight products: F.linear against the packed weights of `packed.PackedLinears`.

    python benchmarks/linear.py            # the bench and community models' shapes, batch 1-64
    python benchmarks/linear.py --quick    # a smoke test

A cached decode step multiplies `batch` rows by each weight matrix once. Both kernels run side by
side, alternating, on the same inputs (µs per product, the median of several rounds); the ratio
is F.linear's time over the packed one's. docs/benchmarks.md records a run.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from dalle_pytorch.nn.packed import PackedLinears, packing_available

# (model, out, in): the step's products (qkv without bias, out, feed-forward in and out, logit rows)
SHAPES = [("bench", 768, 256), ("bench", 256, 256), ("bench", 2048, 256), ("bench", 256, 1024), ("bench", 512, 256),
          ("community", 1536, 512), ("community", 512, 512), ("community", 4096, 512), ("community", 512, 2048),
          ("community", 1024, 512)]


def per_call_us(fn, calls: int) -> float:
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - t0) / calls * 1e6


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    if not packing_available(torch.device("cpu"), dtype):
        sys.exit("this PyTorch has no oneDNN packed-linear operators")
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from generate import cpu_name

    print(f"torch {torch.__version__}, {args.threads} threads, {args.dtype}, {cpu_name()}, OMP_WAIT_POLICY "
          f"{os.environ.get('OMP_WAIT_POLICY', 'default')}, load average {os.getloadavg()[0]:.2f}")
    shapes = SHAPES[:2] if args.quick else SHAPES
    batches = (1, 4) if args.quick else (1, 4, 16, 64)
    calls, rounds = (20, 2) if args.quick else (100, 5)
    print("\n| model | weight (out x in) | batch | F.linear µs | packed µs | F.linear / packed |")
    print("| --- | --- | --- | --- | --- | --- |")
    g = torch.Generator().manual_seed(0)
    totals = {}
    for model, out, inp in shapes:
        w = torch.randn(out, inp, generator=g).to(dtype)
        bias = torch.randn(out, generator=g).to(dtype)
        for b in batches:
            x = torch.randn(b, 1, inp, generator=g).to(dtype)
            packed = PackedLinears(b)
            with torch.inference_mode():
                plain_fn, packed_fn = (lambda: F.linear(x, w, bias)), (lambda: packed.linear(x, w, bias))
                plain_fn(), packed_fn()  # warm up (packs the weight)
                plain, fast = [], []
                for _ in range(rounds):
                    plain.append(per_call_us(plain_fn, calls))
                    fast.append(per_call_us(packed_fn, calls))
            p, f = statistics.median(plain), statistics.median(fast)
            totals.setdefault((model, b), [0.0, 0.0])
            totals[(model, b)][0] += p
            totals[(model, b)][1] += f
            print(f"| {model} | {out} x {inp} | {b} | {p:.1f} | {f:.1f} | **{p / f:.2f}x** |", flush=True)
    print("\nOne of each product (a layer's four and the logit rows):")
    for (model, b), (p, f) in totals.items():
        print(f"- {model}, batch {b}: F.linear {p:.0f} µs, packed {f:.0f} µs: **{p / f:.2f}x**")


if __name__ == "__main__":
    main()
