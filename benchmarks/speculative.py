"""Speculative Jacobi decoding against plain cached decoding, side by side in one run.

    python benchmarks/speculative.py                  # demo + bench models, batch 1 / 4 / 16 / 64 (a few minutes)
    python benchmarks/speculative.py --quick          # a smoke test (demo, batch 1, K = 8)
    python benchmarks/speculative.py --model community --batch 1 8   # the step cost of the community-size model

For each model and batch: forward passes per image and wall clock of `generate_images` with
`speculative=K` (each draft prior) against plain decoding, the same seeds; the acceptance rate by
image row; and the cost of one K-token verify step against a one-token step (what a window adds to
the weight-streaming floor of a small batch).  Models:
- "demo": the shipped demo model (8 x 8 codes of 128, trained on the synthetic shapes);
- "bench": benchmarks/generate.py's model (dim 256, depth 4, 16 x 16 codes of 512), random weights: the
  worst case for acceptance (nothing to predict);
- "community": dim 512, depth 16, 16 x 16 codes of 1024, random weights (step costs only, by default);
- "photos": benchmarks/photo_model.py's model trained on real photographs (--checkpoint).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.generate import cpu_name  # noqa: E402
from dalle_pytorch import DALLE, DiscreteVAE  # noqa: E402
from dalle_pytorch.checkpoint import load_checkpoint  # noqa: E402
from dalle_pytorch.generation import decode  # noqa: E402
from dalle_pytorch.generation.sampling import SamplingConfig  # noqa: E402
from dalle_pytorch.generation.speculative import DRAFT_PRIORS, DecodeStats  # noqa: E402
from dalle_pytorch.pipeline import demo_path  # noqa: E402


def load(name: str, checkpoint=None):
    """(model, text (1, T) of a caption, sampling)."""
    if name == "photos":  # benchmarks/photo_model.py's model, trained on real photographs
        if checkpoint is None:
            raise SystemExit("--model photos needs --checkpoint (benchmarks/photo_model.py writes it)")
        d = load_checkpoint(checkpoint)
        text = d.tokenizer.tokenize(["a photo of a cat"], d.model.text_seq_len)
        return d.model, text, SamplingConfig(filter_thres=0.9)
    if name == "demo":
        d = load_checkpoint(demo_path())
        text = d.tokenizer.tokenize(["a red circle on a blue background"], d.model.text_seq_len)
        return d.model, text, SamplingConfig(filter_thres=0.9)
    torch.manual_seed(0)
    dim, depth, heads, tokens, text_len = (256, 4, 4, 512, 32) if name == "bench" else (512, 16, 8, 1024, 128)
    vae = DiscreteVAE(image_size=32, num_layers=1, num_tokens=tokens, codebook_dim=16, hidden_dim=8)
    model = DALLE(dim=dim, vae=vae, num_text_tokens=10000, text_seq_len=text_len, depth=depth, heads=heads,
                  dim_head=64).eval()
    text = torch.randint(1, 10000, (1, text_len), generator=torch.Generator().manual_seed(0))
    return model, text, SamplingConfig(filter_thres=0.9)


def run(model, text, sampling, batch, window, prior="left", seed=0, codes_out=None, positions=False):
    stats = DecodeStats(positions=positions)
    t0 = time.perf_counter()
    codes = decode.generate_codes(model, text, sampling, num_images=batch, generator=torch.Generator().manual_seed(seed),
                                  speculative=window, draft_prior=prior, stats=stats)
    if codes_out is not None:
        codes_out.append(codes)
    return time.perf_counter() - t0, stats


def acceptance_by_region(model, text, sampling, window, prior, seeds=8):
    """Accepted / verified drafts at batch 1 over `seeds` images, split by where the position is: the
    first image row (next to the caption), positions whose code equals the one to its left or above
    ("flat": backgrounds, shape interiors), and the others ("edges")."""
    f = model.fmap_size
    totals = {"first row": [0, 0], "flat": [0, 0], "edges": [0, 0]}
    for seed in range(seeds):
        out = []
        _, st = run(model, text, sampling, 1, window, prior, seed=seed, codes_out=out, positions=True)
        codes = out[0][0]
        for c in range(model.image_seq_len):
            v, a = int(st.verified_at[c]), int(st.accepted_at[c])
            if c < f:
                region = "first row"
            else:
                same = codes[c] == codes[c - f] or (c % f and codes[c] == codes[c - 1])
                region = "flat" if bool(same) else "edges"
            totals[region][0] += a
            totals[region][1] += v
    return {k: (a / v if v else None, v) for k, (a, v) in totals.items()}


def step_cost(model, batch, t, repeat=5):
    """Seconds of one cached step of t tokens per row at batch `batch`, halfway through the image."""
    with torch.inference_mode():
        cache = model.setup_cache(batch, rewind=t)
        text = torch.randint(1, model.num_user_text_tokens, (batch, model.text_seq_len))
        half = model.image_seq_len // 2
        codes = torch.randint(0, model.num_image_tokens, (batch, half + t))
        model.prefill(model.text_ids(text), codes[:, :half], cache)
        start = torch.full((batch,), model.text_len + half - 1)
        times = []
        for _ in range(repeat + 1):
            t0 = time.perf_counter()
            model.step(codes[:, half - 1 : half - 1 + t], start, cache, length=int(start.max()) + t)
            times.append(time.perf_counter() - t0)
    return min(times[1:])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", nargs="+", default=["demo", "bench"], choices=["demo", "bench", "community", "photos"])
    p.add_argument("--checkpoint", help="the photos model's file (benchmarks/photo_model.py)")
    p.add_argument("--batch", type=int, nargs="+", default=[1, 4, 16, 64])
    p.add_argument("--window", type=int, nargs="+", default=[4, 8, 16])
    p.add_argument("--priors", nargs="+", default=list(DRAFT_PRIORS), choices=DRAFT_PRIORS)
    p.add_argument("--seeds", type=int, default=2, help="seeds per measurement (wall clock: the median)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps_only", action="store_true", help="only the step costs (no generation)")
    p.add_argument("--quick", action="store_true", help="a smoke test: demo, batch 1 and 4, K = 8")
    args = p.parse_args(argv)
    if args.quick:
        args.model, args.batch, args.window, args.priors, args.seeds = ["demo"], [1], [8], ["left"], 1
    torch.set_num_threads(args.threads)
    print(f"# {cpu_name()}, torch {torch.__version__}, {args.threads} threads, load {os.getloadavg()[0]:.2f}")
    for name in args.model:
        model, text, sampling = load(name, args.checkpoint)
        steps_only = args.steps_only or name == "community"
        print(f"\n## {name}: {model.image_seq_len} codes of {model.num_image_tokens}, "
              f"dim {model.transformer.dim}, depth {model.transformer.depth}")
        print("\n| batch | K-token step / 1-token step (ms) | " + " | ".join(f"K={k}" for k in args.window) + " |")
        print("| --- | --- | " + " | ".join("---" for _ in args.window) + " |")
        for b in args.batch:
            one = step_cost(model, b, 1)
            ratios = [f"{step_cost(model, b, k) / one:.2f}x" for k in args.window]
            print(f"| {b} | {one * 1e3:.1f} | " + " | ".join(ratios) + " |")
        if steps_only:
            continue
        run(model, text, sampling, 1, None)  # warm up (packs the weights, first allocations)
        print("\n| batch | plain: passes, s | " + " | ".join(f"K={k} {pr}: passes, s, speed-up"
                                                         for k in args.window for pr in args.priors) + " |")
        print("| --- | --- | " + " | ".join("---" for _ in args.window for _ in args.priors) + " |")
        for b in args.batch:
            plain = [run(model, text, sampling, b, None, seed=s) for s in range(args.seeds)]
            t_plain = statistics.median(t for t, _ in plain)
            cells = []
            for k in args.window:
                for prior in args.priors:
                    spec = [run(model, text, sampling, b, k, prior, seed=s) for s in range(args.seeds)]
                    t_spec = statistics.median(t for t, _ in spec)
                    passes = statistics.mean(st.forward_passes for _, st in spec)
                    cells.append(f"{passes:.1f}, {t_spec:.2f}, {t_plain / t_spec:.2f}x")
            passes_plain = plain[0][1].forward_passes
            print(f"| {b} | {passes_plain}, {t_plain:.2f} | " + " | ".join(cells) + " |")
        # acceptance by image row, batch 1, the first window and prior
        _, st = run(model, text, sampling, 1, args.window[0], args.priors[0], positions=True)
        f = model.fmap_size
        by_row = []
        for r in range(f):
            v = int(st.verified_at[r * f : (r + 1) * f].sum())
            a = int(st.accepted_at[r * f : (r + 1) * f].sum())
            by_row.append(f"{a / v:.2f}" if v else "-")
        print(f"\nacceptance by image row (K={args.window[0]}, {args.priors[0]}, batch 1): " + " ".join(by_row))
        regions = acceptance_by_region(model, text, sampling, args.window[0], args.priors[0],
                                       seeds=2 if args.quick else 8)
        print("acceptance by region (accepted / verified drafts, batch 1, several seeds): " + "; ".join(
            f"{k} {r:.2f} of {n}" if r is not None else f"{k} -" for k, (r, n) in regions.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
