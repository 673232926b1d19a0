"""One DALLE training step (forward + backward + clip + Adam), ours against DALLE-pytorch 1.6.6, each against
its FLOP floor, side by side in one run.

    bash benchmarks/dalle_pytorch_ref.sh                 # the reference venv, once (/work/ref/venv-perf)
    python benchmarks/train_step.py                      # bench + community, full + the four-pattern mix
    python benchmarks/train_step.py --models bench --compile

The models are benchmarks/dalle_pytorch_ref.py's MODELS ("bench": dim 256, depth 4, text 32; "community":
dim 512, depth 16, text 128; 16 x 16 codes, rotary and token shift as its DALLE constructor defaults), with
random weights written by DALLE-pytorch and loaded by ours (the same weights: the first losses must agree).
Attention "full" on every layer, or the mix full, axial_row, axial_col, conv_like cycled over the layers.
Codes are given directly (no VAE in the step). Ours: fp32 eager, bf16 autocast eager, and with --compile
bf16 autocast under torch.compile. Best of --repeat steps after two warm-up steps.

The floor of a step: its FLOPs (counted by torch's FlopCounterMode over our forward + backward: matmuls and
attention products, attention counted as if unmasked) at the matmul rate measured here in that precision (a
(batch x tokens, dim) x (dim, 8 dim) product, the feed-forward's, best of 5); the optimizer and elementwise work
are not in it. docs/benchmarks.md records a run.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.generate import cpu_name  # noqa: E402
from dalle_pytorch.checkpoint import load_checkpoint  # noqa: E402

MIX = "full,axial_row,axial_col,conv_like"
BATCH = {"bench": 8, "community": 4}


def matmul_rate(m: int, k: int, n: int, dtype: torch.dtype) -> float:
    a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
    for _ in range(2):
        a @ b
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * m * k * n / best


def our_step(model, text, codes, params, opt, precision: str, compiled):
    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = compiled(text, codes, return_loss=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 0.5)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(loss.detach())
    return step


def best_of(step, repeat: int) -> tuple[float, float]:
    first = step()
    step()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return min(times), first


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="bench,community")
    p.add_argument("--attn", default=f"full;{MIX}", help="';'-separated attention-type lists")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--compile", action="store_true")
    p.add_argument("--ref_python", default="/work/ref/venv-perf/bin/python")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    ref = [args.ref_python, "-P", str(ROOT / "benchmarks" / "dalle_pytorch_ref.py")]
    work = Path(tempfile.mkdtemp(prefix="train_step_"))
    print(f"torch {torch.__version__}, {cpu_name()}, {args.threads} threads, load average {os.getloadavg()[0]:.2f}",
          flush=True)
    print("| model | attention | batch | DALLE-pytorch fp32 | ours fp32 | ours bf16 | ours bf16 compiled | "
          "fp32 / floor | bf16 / floor | GFLOP |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for model_name in args.models.split(","):
        for attn in args.attn.split(";"):
            path = work / f"{model_name}-{attn.replace(',', '_')}.pt"
            subprocess.run([*ref, "make", model_name, str(path), attn], check=True)
            spec = {"checkpoint": str(path), "batch": BATCH[model_name], "threads": args.threads, "repeat": args.repeat}
            theirs = json.loads(subprocess.run([*ref, "train", json.dumps(spec)], check=True, capture_output=True,
                                               text=True).stdout.strip().splitlines()[-1])
            model = load_checkpoint(path).model.train()
            b, T = spec["batch"], model.text_seq_len
            g = torch.Generator().manual_seed(0)
            text = torch.randint(1, model.num_user_text_tokens - T, (b, T), generator=g)
            codes = torch.randint(0, model.num_image_tokens, (b, model.image_seq_len), generator=g)
            from torch.utils.flop_counter import FlopCounterMode
            counter = FlopCounterMode(display=False)
            with counter:
                model(text, codes, return_loss=True).backward()
            model.zero_grad(set_to_none=True)
            flops = counter.get_total_flops()
            rows = b * (T + model.image_seq_len)
            rate = {dt: matmul_rate(rows, model.config.dim, 8 * model.config.dim, getattr(torch, dt)) for dt in ("float32", "bfloat16")}
            params = [q for q in model.parameters() if q.requires_grad]
            results = {}
            for name, precision, compiled in (("fp32", "fp32", False), ("bf16", "bf16", False),
                                              ("bf16c", "bf16", True)):
                if compiled and not args.compile:
                    continue
                opt = torch.optim.Adam(params, lr=3e-4)
                fn = torch.compile(model) if compiled else model
                results[name] = best_of(our_step(model, text, codes, params, opt, precision, fn), args.repeat)
                model = load_checkpoint(path).model.train()  # fresh weights for the next precision
                params = [q for q in model.parameters() if q.requires_grad]
            ours32, first = results["fp32"]
            if abs(first - theirs["first_loss"]) > 1e-3 * abs(first):
                print(f"warning: first losses differ: ours {first:.6f}, DALLE-pytorch {theirs['first_loss']:.6f}")
            floor32, floor16 = flops / rate["float32"], flops / rate["bfloat16"]
            d = theirs["seconds"]
            comp = (f"{results['bf16c'][0]:.3f} s ({d / results['bf16c'][0]:.2f}x)" if "bf16c" in results else "-")
            bf16_best = min(results["bf16"][0], results.get("bf16c", (float("inf"),))[0])
            print(f"| {model_name} | {attn} | {b} | {d:.3f} s | {ours32:.3f} s ({d / ours32:.2f}x) | "
                  f"{results['bf16'][0]:.3f} s ({d / results['bf16'][0]:.2f}x) | {comp} | {ours32 / floor32:.2f}x | "
                  f"{bf16_best / floor16:.2f}x | {flops / 1e9:.1f} |", flush=True)
    print(f"matmul rates (the floors): fp32 {rate['float32'] / 1e9:.0f} GFLOP/s, bf16 {rate['bfloat16'] / 1e9:.0f} "
          "GFLOP/s (last model's shape)")


if __name__ == "__main__":
    main()
