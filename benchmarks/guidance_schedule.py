"""Guidance schedules (issue #28) on the demo model: images/s and colour accuracy per schedule.

    python benchmarks/guidance_schedule.py [--seeds 2] [--images 2] [--threads 2]

For each setting (no guidance; cond_scale 3 constant, interval:0:0.5, interval:0.5:1, linear), every one of the
90 demo captions gets `--images` images per seed (one batch of 90 x images rows, 2x that where guided), cached
eager decoding; reported: images/s (best of the seeds' wall times), the row-tokens the cached steps fed per
image (rows x tokens of every `DALLE.step` after the prefill, counted with a spy; plain decoding feeds 63 per
row: an interval's end saves the null rows' steps, its start moves them into one catch-up step), and
the background / shape colour accuracy (tests/pipeline/test_demo.py's measure), averaged over the seeds.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.generate import cpu_name  # noqa: E402

SETTINGS = [("no guidance", 1.0, "constant"), ("constant 3", 3.0, "constant"), ("interval:0:0.5 at 3", 3.0, "interval:0:0.5"),
            ("interval:0.5:1 at 3", 3.0, "interval:0.5:1"), ("linear to 3", 3.0, "linear")]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--images", type=int, default=2, help="images per caption per seed")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    from dalle_pytorch.checkpoint import load_checkpoint
    from dalle_pytorch.pipeline.text_to_image import demo_path
    from dalle_pytorch.synthetic import caption, combinations
    from tests.pipeline.test_demo import _check

    loaded = load_checkpoint(demo_path())
    model, tok = loaded.model.eval(), loaded.tokenizer
    captions = [caption(*c) for c in combinations()]
    text = tok.tokenize(captions, model.text_seq_len)
    n = len(captions) * args.images
    print(f"{cpu_name()}, {args.threads} threads, torch {torch.__version__}; demo model ({model.image_seq_len} codes), "
          f"{len(captions)} captions x {args.images} images x {args.seeds} seeds, top_k 0.9, cached eager steps")
    rows = [0]
    real_step = model.step

    def counting_step(tokens, start, cache, **kwargs):
        rows[0] += tokens.shape[0] * tokens.shape[1]
        return real_step(tokens, start, cache, **kwargs)

    model.step = counting_step
    model.generate_images(text[:4], num_images=1, filter_thres=0.9, cond_scale=3.0)  # warm-up (first call's packing)
    print("| setting | images/s | row-tokens fed per image | background right | shape colour right |")
    print("| --- | --- | --- | --- | --- |")
    for name, scale, schedule in SETTINGS:
        best, bg, fg = float("inf"), 0.0, 0.0
        for seed in range(1, args.seeds + 1):
            rows[0] = 0
            start = time.perf_counter()
            codes = model.generate_images(text, num_images=args.images, filter_thres=0.9, cond_scale=scale,
                                          cond_schedule=schedule, return_codes=True,
                                          generator=torch.Generator().manual_seed(seed))
            best = min(best, time.perf_counter() - start)
            with torch.inference_mode():
                report = _check(model.vae.decode(codes).clamp(0, 1), captions, args.images)
            bg += sum(r[0] for r in report.values()) / len(report) / args.seeds
            fg += sum(r[1] for r in report.values()) / len(report) / args.seeds
        print(f"| {name} | {n / best:.0f} | {rows[0] / n:.0f} | {bg:.1%} | {fg:.1%} |", flush=True)


if __name__ == "__main__":
    main()
