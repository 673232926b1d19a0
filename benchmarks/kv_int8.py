"""Would an int8 KV cache pay? One decode step's attention of one layer over fp32, bf16 and int8 keys and values.

    python benchmarks/kv_int8.py

Issue #24's optional item says: measure before keeping it. This times the attention of a single query
(one decode step, one layer: 8 heads of 64, the community model's) over a cache of L positions for a
batch of b rows, side by side in one process:
- fp32 cache, `F.scaled_dot_product_attention` (today's eager step);
- fp32 cache and bf16 cache, the two products written as reductions and compiled (as
  `nn.attention.attend_one`, which the compiled step uses over a bf16 cache), accumulating in fp32;
- int8 cache with one scale per (row, head, position) (absmax over the head's 64 channels), eager and
  compiled (the dequantization fused into the reductions);
and the int8 result's largest deviation from fp32 SDPA's. No model: a prototype of the read side only
(writing the cache would quantize one position per step).
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.generate import cpu_name  # noqa: E402

HEADS, DIM_HEAD = 8, 64


def best_us(fn, calls: int = 20, rounds: int = 3) -> float:
    for _ in range(3):
        fn()
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, (time.perf_counter() - start) / calls)
    return best * 1e6


def attend(q, k, v):
    s = torch.einsum("bhqd,bhld->bhql", q, k.float()) * DIM_HEAD ** -0.5
    return torch.einsum("bhql,bhld->bhqd", s.softmax(-1), v.float())


def attend_int8(q, k8, k_scale, v8, v_scale):
    """k8, v8 (b, h, L, d) int8; k_scale, v_scale (b, h, L, 1): k = k8 * k_scale."""
    s = torch.einsum("bhqd,bhld->bhql", q, k8.to(q.dtype)) * k_scale.transpose(-1, -2) * DIM_HEAD ** -0.5
    return torch.einsum("bhql,bhld->bhqd", s.softmax(-1) * v_scale.transpose(-1, -2), v8.to(q.dtype))


def quantize(t):
    scale = t.abs().amax(-1, keepdim=True).clamp_min(1e-8) / 127
    return (t / scale).round().to(torch.int8), scale


def main() -> None:
    torch.set_num_threads(2)
    torch._dynamo.config.recompile_limit = 64  # one graph per (batch, positions, dtype): 12 here
    print(f"CPU: {cpu_name()}, 2 threads, torch {torch.__version__}; one layer's attention of one decode step, "
          f"{HEADS} heads of {DIM_HEAD}, µs (best of 3 x 20)\n")
    print("| batch | positions | fp32 KV MB | fp32 SDPA | fp32 compiled | bf16 compiled | int8 eager | int8 compiled "
          "| int8 compiled vs bf16 compiled | int8 max abs error |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    compiled, compiled_int8 = torch.compile(attend, dynamic=False), torch.compile(attend_int8, dynamic=False)
    g = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        for batch in (1, 8, 64):
            for positions in (384, 1152):  # the community model's 128 + 16 x 16, and 128 + 32 x 32
                q = torch.randn(batch, HEADS, 1, DIM_HEAD, generator=g)
                k, v = (torch.randn(batch, HEADS, positions, DIM_HEAD, generator=g) for _ in range(2))
                kb, vb = k.bfloat16(), v.bfloat16()
                (k8, ks), (v8, vs) = quantize(k), quantize(v)
                times = [best_us(lambda: F.scaled_dot_product_attention(q, k, v)), best_us(lambda: compiled(q, k, v)),
                         best_us(lambda: compiled(q, kb, vb)), best_us(lambda: attend_int8(q, k8, ks, v8, vs)),
                         best_us(lambda: compiled_int8(q, k8, ks, v8, vs))]
                err = (compiled_int8(q, k8, ks, v8, vs) - F.scaled_dot_product_attention(q, k, v)).abs().max().item()
                mb = 2 * k.numel() * 4 / 1e6
                print(f"| {batch} | {positions} | {mb:.0f} | " + " | ".join(f"{t:.0f}" for t in times)
                      + f" | {times[2] / times[4]:.2f}x | {err:.1e} |", flush=True)


if __name__ == "__main__":
    main()
