"""Generation throughput on a GPU: eager, compile="static" with CUDA graphs, bf16; batch 1, 8, 64.

    bash benchmarks/gpu.sh [OUT.md]       # the prepared run (< 8 minutes); or:
    python benchmarks/gpu.py --out OUT.md [--budget 420]

Both models of benchmarks/compare.py ("bench" and "community"), random weights, ours only (the
reference venv is CPU-only).  Variants per model and batch:
- eager fp32, eager bf16 (`generate_images`, the library's own loop);
- graphs fp32 / graphs bf16: the static-shape decode step (`length=None`: every step attends over
  the whole preallocated cache, masked by the pattern row) compiled with
  `torch.compile(mode="reduce-overhead")`, i.e. inductor plus CUDA-graph capture, the KV and
  shift buffers marked as static addresses so that their in-place writes stay inside the graph.
Every timing synchronises the device.  Compiled variants stop being started once `--budget`
seconds have passed (each row says so), so the whole run fits its slot.  A variant that fails is
reported with its error instead of stopping the run.
"""
from __future__ import annotations

import argparse
import sys
import time
import traceback
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

MODELS = {  # as benchmarks/dalle_pytorch_ref.py's MODELS, built by our constructor
    "bench": dict(dim=256, depth=4, heads=4, dim_head=64, num_text_tokens=10000, text_seq_len=32, num_tokens=512),
    "community": dict(dim=512, depth=16, heads=8, dim_head=64, num_text_tokens=10000, text_seq_len=128, num_tokens=1024),
}


def build(name: str, device, dtype):
    from dalle_pytorch import DALLE, DiscreteVAE

    cfg = dict(MODELS[name])
    torch.manual_seed(0)
    vae = DiscreteVAE(image_size=32, num_layers=1, num_tokens=cfg.pop("num_tokens"), codebook_dim=16, hidden_dim=8)
    return DALLE(vae=vae, **cfg).eval().to(device=device, dtype=dtype)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def graphs_generate(model, text, step, generator, cache):
    """generate_images' decode loop (cond_scale 1, no priming) around a compiled static step.
    cache: one InferenceCache per model and batch, reused (reset) by every call so that the
    captured graphs always see the same buffers."""
    from dalle_pytorch.generation.sampling import SamplingConfig, sample

    b = text.shape[0]
    cache.reset()
    last = model.prefill(model.text_ids(text), None, cache)[:, model.num_text_tokens:]
    codes = torch.empty(b, model.image_seq_len, dtype=torch.long, device=text.device)
    positions = torch.arange(model.transformer.seq_len, device=text.device)
    for t in range(model.image_seq_len):
        codes[:, t] = sample(last.float(), SamplingConfig(filter_thres=0.5), generator, vocab_size=model.total_tokens)
        if t + 1 < model.image_seq_len:
            last = step(codes[:, t].clone(), positions[model.text_len + t], cache, length=None)
            last = last.clone()  # a CUDA-graph output is overwritten by the next replay
    return model.vae.decode(codes)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--out", default="gpu-benchmark.md")
    parser.add_argument("--budget", type=float, default=420.0, help="seconds after which no compiled variant starts")
    parser.add_argument("--batches", default="1,8,64")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    from generate import cpu_name

    start = time.perf_counter()
    torch._dynamo.config.recompile_limit = 64  # one graph per model, dtype and batch
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    lines = [f"torch {torch.__version__}, {name}", "",
             "| model | batch | variant | seconds per generation | images/s | first call (compile, capture) s | note |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    print("\n".join(lines), flush=True)
    batches = [int(b) for b in args.batches.split(",")]
    for model_name in MODELS:
        for dtype in (torch.float32, torch.bfloat16):
            model = build(model_name, device, dtype)
            tag = "fp32" if dtype == torch.float32 else "bf16"
            step = torch.compile(model.decode_step, mode="reduce-overhead", dynamic=False)
            for b in batches:
                text = torch.randint(1, 10000, (b, model.text_seq_len), generator=torch.Generator().manual_seed(0)).to(device)
                for variant in ("eager", "graphs"):
                    row = f"| {model_name} | {b} | {variant} {tag} |"
                    if variant == "graphs" and time.perf_counter() - start > args.budget:
                        lines.append(f"{row} | | | skipped: past the {args.budget:.0f} s budget |")
                        print(lines[-1], flush=True)
                        continue
                    try:
                        g = torch.Generator(device=device).manual_seed(0)
                        if variant == "eager":
                            run = lambda: model.generate_images(text, generator=g)  # noqa: E731
                        else:
                            cache = model.setup_cache(b)
                            for t in cache.tensors():  # in-place writes to these stay inside the graph
                                torch._dynamo.mark_static_address(t)
                            run = lambda: graphs_generate(model, text, step, g, cache)  # noqa: E731
                        sync(device)
                        t0 = time.perf_counter()
                        run()
                        sync(device)
                        first = time.perf_counter() - t0
                        times = []
                        for _ in range(2):
                            t0 = time.perf_counter()
                            run()
                            sync(device)
                            times.append(time.perf_counter() - t0)
                        sec = min(times)
                        lines.append(f"{row} {sec:.3f} | {b / sec:.1f} | {first:.1f} | |")
                    except Exception as err:  # report and go on: the run has one slot
                        traceback.print_exc()
                        lines.append(f"{row} | | | failed: {type(err).__name__}: {str(err).splitlines()[0][:120]} |")
                    print(lines[-1], flush=True)
            del model, step
            torch._dynamo.reset()
    lines.append("")
    lines.append(f"total {time.perf_counter() - start:.0f} s")
    Path(args.out).write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
