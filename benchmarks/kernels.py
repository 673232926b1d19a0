"""One weight product of a decode step, through each kernel this package has (and the ones it passed over).

    python benchmarks/kernels.py                      # 4096 x 512 (the community model's feed-forward), batch 1 / 8 / 64
    python benchmarks/kernels.py --shape 1536 512     # another (out, in)
    python benchmarks/kernels.py --quick              # a smoke test

µs per product, the median of several rounds, each round calling the kernel on 16 different weights in
turn so that they stream from memory as a decode step's do (a single weight called again and again
sits in cache and measures the per-call cost instead).  The "ours" rows are the products a decode step
makes (`nn.quantized.layer_product` through a `PackedLinears`, with the activations' quantization where
the mode has one); the others are the alternatives, kernel calls alone.  The last column says whether
a row's result is independent of the batch (the server needs that; "-" for the kernel calls alone, whose
inputs are constant).  Prints the CPU and its units
(AMX, VNNI, avx512_bf16): these tables differ by CPU kind (docs/benchmarks.md).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.generate import cpu_name  # noqa: E402
from dalle_pytorch.nn.packed import PackedLinears, pack_weight, packed_kernel_runs, packed_linear, rowwise_linear  # noqa: E402
from dalle_pytorch.nn.quantized import QuantizedLinear, int_mm_pays, layer_product  # noqa: E402


def time_us(fn, calls: int, rounds: int) -> float:
    """Median µs per call of fn(i) for i in range(calls), over `rounds` rounds, after a warm-up round."""
    for i in range(calls):
        fn(i)
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for i in range(calls):
            fn(i)
        times.append((time.perf_counter() - t0) / calls)
    return 1e6 * statistics.median(times)


def batch_invariant(fn, x) -> bool:
    """Whether row 0 of fn(x) equals fn(x[:1]) and fn(x.flip(0)) row -1: the row's result alone."""
    full = fn(x)
    return bool(torch.equal(full[:1], fn(x[:1])) and torch.equal(full[:1], fn(x.flip(0))[-1:]))


def quantized(weights: list, mode: str, group: int = 64) -> list:
    """Each weight as a QuantizedLinear of `mode` (made once: the layers do not depend on the batch)."""
    layers = []
    for w in weights:
        linear = nn.Linear(w.shape[1], w.shape[0], bias=False)
        linear.weight.data.copy_(w)
        layers.append(QuantizedLinear.from_linear(linear, mode, group))
    return layers


def kernels(weights: list, bf: list, quant: dict, batch: int) -> dict:
    """name -> fn(x, i): the product of x with weight i, for each kernel that runs on this CPU.
    bf: the weights in bf16; quant: (mode, group) -> `quantized(weights, mode, group)`."""
    out = {
        "fp32 `F.linear`": lambda x, i: F.linear(x, weights[i]),
        "fp32 `rowwise_linear`": lambda x, i: rowwise_linear(x, weights[i]),
        "bf16 `F.linear`": lambda x, i: F.linear(x.to(torch.bfloat16), bf[i]),
        "bf16 `rowwise_linear`": lambda x, i: rowwise_linear(x.to(torch.bfloat16), bf[i]),
    }
    packs32 = [pack_weight(w, batch) for w in weights]
    out["fp32 packed oneDNN"] = lambda x, i: packed_linear(x, packs32[i])
    if packed_kernel_runs(torch.bfloat16):
        packs16 = [pack_weight(w, batch) for w in bf]
        out["bf16 packed oneDNN"] = lambda x, i: packed_linear(x.to(torch.bfloat16), packs16[i])

    def ours(layers: list):
        packs = PackedLinears(batch)  # the int4 kernel's layouts, made at the first product of each layer
        return lambda x, i: layer_product(x, layers[i], None, packs)

    int8 = quant[("int8", 64)]
    out["int8 ours (per-token int8 activations, " + ("`torch._int_mm`)" if int_mm_pays() else "float sums)")] = ours(int8)
    codes = [layer.qweight.t() for layer in int8]
    q = torch.ones(batch, weights[0].shape[1], dtype=torch.int8)
    out["int8 `torch._int_mm` alone (no activation quantization)"] = lambda x, i: torch._int_mm(q, codes[i])
    out["int8 weight-only `_weight_int8pack_mm` (gpt-fast's CPU int8)"] = (
        lambda x, i: torch.ops.aten._weight_int8pack_mm(x, int8[i].qweight, int8[i].scale))
    try:
        onednn = [torch.ops.onednn.qlinear_prepack(layer.qweight, [batch, weights[0].shape[1]]) for layer in int8]
        u8 = torch.full((batch, weights[0].shape[1]), 128, dtype=torch.uint8)
        zeros = torch.zeros(weights[0].shape[0], dtype=torch.int64)
        out["int8 oneDNN `qlinear_pointwise` alone (u8 x s8, prepacked; fp32 out)"] = (
            lambda x, i: torch.ops.onednn.qlinear_pointwise(u8, 0.01, 128, onednn[i], int8[i].scale, zeros, None,
                                                            1.0, 0, torch.float32, "none", [], ""))
    except (RuntimeError, AttributeError):  # no oneDNN int8 in this PyTorch
        pass
    for (mode, group), layers in quant.items():
        if mode == "int4":
            out[f"int4 ours, group {group} (`_weight_int4pack_mm_for_cpu`, bf16 activations)"] = ours(layers)
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", type=int, nargs=2, default=(4096, 512), metavar=("OUT", "IN"))
    p.add_argument("--batches", type=int, nargs="+", default=(1, 8, 64))
    p.add_argument("--weights", type=int, default=16, help="different weights called in turn")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="a small shape, batch 1 and 4, 2 weights (smoke test)")
    args = p.parse_args(argv)
    if args.quick:
        args.shape, args.batches, args.weights, args.rounds = (256, 128), (1, 4), 2, 2
    torch.set_num_threads(args.threads)
    out_f, in_f = args.shape
    g = torch.Generator().manual_seed(0)
    weights = [torch.randn(out_f, in_f, generator=g) / in_f ** 0.5 for _ in range(args.weights)]
    print(f"CPU: {cpu_name()}, {args.threads} threads, torch {torch.__version__}")
    print(f"one {out_f} x {in_f} product, {args.weights} weights in turn, median of {args.rounds} rounds, µs\n")
    bf = [w.to(torch.bfloat16) for w in weights]
    quant = {(mode, group): quantized(weights, mode, group) for mode, group in (("int8", 64), ("int4", 32), ("int4", 64), ("int4", 128))}
    table: dict = {}
    invariant: dict = {}
    with torch.inference_mode():
        for batch in args.batches:
            x = torch.randn(batch, in_f, generator=g)
            for name, fn in kernels(weights, bf, quant, batch).items():
                try:
                    table.setdefault(name, {})[batch] = time_us(lambda i: fn(x, i), args.weights, args.rounds)
                    if batch == max(args.batches):
                        invariant[name] = None if "alone" in name else batch_invariant(lambda y: fn(y, 0), x)
                except RuntimeError as e:
                    table.setdefault(name, {})[batch] = f"fails: {str(e).splitlines()[0][:60]}"
    print("| kernel | " + " | ".join(f"batch {b}" for b in args.batches) + " | a row's result independent of the batch |")
    print("| --- | " + " | ".join("---" for _ in args.batches) + " | --- |")
    for name, row in table.items():
        cells = " | ".join(f"{row[b]:.0f}" if isinstance(row.get(b), float) else str(row.get(b, "-")) for b in args.batches)
        inv = invariant.get(name)
        print(f"| {name} | {cells} | {'-' if inv is None else 'yes' if inv else 'no'} |", flush=True)


if __name__ == "__main__":
    main()
