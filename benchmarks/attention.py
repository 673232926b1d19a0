"""Training-time attention kernels per pattern: the efficient kernel vs dense attention with the
pattern's mask (and, for block-sparse, flex_attention with a block mask), side by side.

    python benchmarks/attention.py [--fmap 32] [--text_len 33] [--bf16]

Times one forward + backward of an attention layer (dim 256, 4 heads of 64, batch 4) over the
whole sequence, fp32 (or under bf16 autocast with --bf16, as training with --precision bf16 runs it), best of 3.  All kernels compute the same function (tests/nn/test_patterns.py).
"""
from __future__ import annotations

import argparse
import time

import torch

from dalle_pytorch.nn.attention import Attention
from dalle_pytorch.nn.patterns import PatternSpec, draw_random_blocks


def time_fwd_bwd(fn, x, repeat=3, bf16=False):
    best = float("inf")
    for _ in range(repeat + 1):  # the first run warms up
        xx = x.detach().requires_grad_()
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            y = fn(xx)
        y.float().square().mean().backward()
        best = min(best, time.perf_counter() - t0)
    return best


def time_fwd(fn, x, repeat=3):
    best = float("inf")
    for _ in range(repeat + 1):
        t0 = time.perf_counter()
        fn(x)
        best = min(best, time.perf_counter() - t0)
    return best


def flex_sparse(attn: Attention):
    """flex_attention over the same pattern: a block mask from the pattern itself (eager / compiled)."""
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    pattern = attn.pattern
    n = pattern.shape[0]

    def mask_mod(b, h, q, k):
        return pattern[q, k]

    block_mask = create_block_mask(mask_mod, None, None, n - 1, n - 1, device="cpu", BLOCK_SIZE=attn.spec.block_size)

    def run(x, kernel):
        q, k, v = attn._qkv(x, None)
        return attn._out(kernel(q, k, v, block_mask=block_mask, scale=attn.scale))

    return run, flex_attention


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--fmap", type=int, default=32)
    parser.add_argument("--text_len", type=int, default=33)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--compile_flex", action="store_true", help="also time torch.compile(flex_attention)")
    parser.add_argument("--bf16", action="store_true", help="under bf16 autocast (training's --precision bf16)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    n = args.text_len + args.fmap**2
    x = torch.randn(4, n - 1, 256)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {n - 1} positions, batch 4, dim 256, 4x64 heads, "
          f"{'bf16 autocast' if args.bf16 else 'fp32'}")
    for t in ("axial_row", "axial_col", "conv_like", "sparse"):
        rb = draw_random_blocks(n, 16, n // 16 // 4, seed=0) if t == "sparse" else ()
        spec = PatternSpec(t, args.text_len, args.fmap, random_blocks=rb)
        torch.manual_seed(0)
        attn = Attention(256, heads=4, dim_head=64, dropout=0.0, stable=False, spec=spec, kernel="pattern")
        fast = time_fwd_bwd(lambda v: attn(v, masked=False), x, bf16=args.bf16)
        dense = time_fwd_bwd(lambda v: attn(v, masked=True), x, bf16=args.bf16)
        density = attn.pattern[: n - 1, : n - 1].float().mean().item() * 2  # share of the causal triangle
        print(f"{t:<10} pattern density {density:5.1%} of causal | kernel {fast * 1e3:8.1f} ms | "
              f"dense masked {dense * 1e3:8.1f} ms | dense / kernel {dense / fast:5.2f}x")
        if t == "sparse" and not args.bf16:
            run, kernel = flex_sparse(attn)
            try:
                time_fwd_bwd(lambda v: run(v, kernel), x, repeat=1)
            except NotImplementedError as err:  # torch 2.13 on CPU: no backward
                print(f"{'':<10} flex_attention cannot train here: {err}")
            with torch.no_grad():
                ours = time_fwd(lambda v: attn(v, masked=False), x)
                flex = time_fwd(lambda v: run(v, kernel), x, repeat=1)
                print(f"{'':<10} forward only: kernel {ours * 1e3:8.1f} ms | flex_attention (eager) {flex * 1e3:8.1f} ms")
                if args.compile_flex:
                    compiled = torch.compile(kernel)
                    flexc = time_fwd(lambda v: run(v, compiled), x)
                    print(f"{'':<10} forward only: flex_attention (compiled) {flexc * 1e3:8.1f} ms")


if __name__ == "__main__":
    main()
