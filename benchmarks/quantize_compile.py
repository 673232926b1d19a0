"""Quantized decoding eager and under torch.compile, against fp32 eager, side by side (one process per mode).

    python benchmarks/quantize_compile.py                 # fp32, int8, int4 on the community model, batch 1
    python benchmarks/quantize_compile.py --modes int8    # one mode

For each mode, `generate_images` of one image of the community-size model (dim 512, depth 16, text_seq_len
128, 16 x 16 codes of 1024, random weights) eager and with compile=True: the first call (for compile, the
compile itself) and the best of three calls after it.  Each mode runs in a fresh process, so one mode's
compiled graphs and memory do not touch another's.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.generate import cpu_name  # noqa: E402


def worker(mode: str, threads: int) -> dict:
    from dalle_pytorch import DALLE, DiscreteVAE, quantize

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    vae = DiscreteVAE(image_size=32, num_layers=1, num_tokens=1024, codebook_dim=16, hidden_dim=8)
    model = DALLE(dim=512, vae=vae, num_text_tokens=10000, text_seq_len=128, depth=16, heads=8, dim_head=64).eval()
    if mode != "fp32":
        quantize(model, mode)
    text = torch.randint(1, 10000, (1, 128), generator=torch.Generator().manual_seed(0))
    out = {}
    for name, kw in (("eager", {}), ("compile", {"compile": True})):
        def call():
            t0 = time.perf_counter()
            model.generate_images(text, return_codes=True, filter_thres=0.9, generator=torch.Generator().manual_seed(0),
                                  **kw)
            return time.perf_counter() - t0
        first = call()
        out[name] = {"first_s": first, "best_s": min(call() for _ in range(3))}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--modes", nargs="+", default=["fp32", "int8", "int4"])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.threads)))
        return
    print(f"CPU: {cpu_name()}, {args.threads} threads, torch {torch.__version__}; community model, batch 1, one image")
    results = {}
    for mode in args.modes:
        proc = subprocess.run([sys.executable, __file__, "--worker", mode, "--threads", str(args.threads)],
                              capture_output=True, text=True, check=True)
        results[mode] = json.loads(proc.stdout.strip().splitlines()[-1])
    base = results.get("fp32", {}).get("eager", {}).get("best_s")
    print("| mode | eager s / image | x fp32 eager | compile=True s / image | x fp32 eager | first compile call |")
    print("| --- | --- | --- | --- | --- | --- |")
    for mode, r in results.items():
        e, c = r["eager"]["best_s"], r["compile"]["best_s"]
        ratio = (lambda t: f"{base / t:.2f}x") if base else (lambda t: "-")
        print(f"| {mode} | {e:.2f} | {ratio(e)} | {c:.2f} | {ratio(c)} | {r['compile']['first_s']:.0f} s |")


if __name__ == "__main__":
    main()
