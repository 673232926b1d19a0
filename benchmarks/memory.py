"""What reading the KV cache costs on this machine: the part of a decode step that grows with the position.

    python benchmarks/memory.py          # about ten seconds on 2 CPU cores

1. Read bandwidth (`tensor.sum()`) against the size of the buffer read: where the caches end.
2. One layer's single-query attention over L cached keys (batch 4, 4 heads, dim_head 64, fp32,
   the benchmark model of benchmarks/generate.py), cycling over 4 layers' KV buffers as a step
   does: `scaled_dot_product_attention`, the same as two matmuls and a softmax, and a plain
   `sum()` over the same keys and values (the cost of reading them once).
docs/benchmarks.md records a run.
"""
from __future__ import annotations

import argparse
import itertools
import time

import torch
import torch.nn.functional as F


def per_call(fn, n: int) -> float:
    for _ in range(max(2, n // 20)):
        fn()
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n


def bandwidth(sizes_mb=(1, 2, 4, 8, 16, 32, 64, 256)) -> dict:
    out = {}
    for mb in sizes_mb:
        x = torch.randn(int(mb * 2**20 / 4))
        out[mb] = mb / 1024 / per_call(x.sum, max(5, int(2000 / mb)))
    return out


def attention(lengths=(40, 500, 1000), b=4, h=4, d=64, layers=4) -> dict:
    """{n: {"mb": MB of K and V one layer reads, "sdpa" / "matmuls" / "read": seconds per call}}"""
    s = max(lengths) + 58
    caches = [(torch.randn(b, h, s, d), torch.randn(b, h, s, d)) for _ in range(layers)]
    q = torch.randn(b, h, 1, d)
    out = {}
    for n in lengths:
        turn = itertools.count()

        def kv():
            k, v = caches[next(turn) % layers]
            return k.narrow(2, 0, n), v.narrow(2, 0, n)

        def sdpa():
            k, v = kv()
            return F.scaled_dot_product_attention(q, k, v)

        def matmuls():
            k, v = kv()
            return torch.matmul(torch.matmul(q, k.transpose(-1, -2)).mul_(d**-0.5).softmax(-1), v)

        def read():
            k, v = kv()
            return k.sum() + v.sum()

        out[n] = {name: per_call(fn, 200) for name, fn in (("sdpa", sdpa), ("matmuls", matmuls), ("read", read))}
        out[n]["mb"] = 2 * b * h * n * d * 4 / 2**20
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    from generate import cpu_name  # benchmarks/generate.py, beside this file

    print(f"torch {torch.__version__}, cpu ({torch.get_num_threads()} threads, {cpu_name()})")
    for mb, gbs in bandwidth().items():
        print(f"read bandwidth, {mb:>4} MB buffer {gbs:10.1f} GB/s")
    for n, row in attention().items():
        mb = row.pop("mb")
        cells = "  ".join(f"{k} {v * 1e6:7.1f} us" for k, v in row.items())
        print(f"attention over {n:>4} keys ({mb:4.1f} MB of K and V): {cells}  sdpa/read {row['sdpa'] / row['read']:.2f}x")


if __name__ == "__main__":
    main()
