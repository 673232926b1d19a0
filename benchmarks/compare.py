"""Side by side with DALLE-pytorch 1.6.6: the same weights, batch and steps, one run.

    bash benchmarks/dalle_pytorch_ref.sh                      # once: the reference venv
    python benchmarks/compare.py --ref_python /work/ref/venv-perf/bin/python --out run.md
    python benchmarks/compare.py --quick ...                  # a smoke test (small grid)

Two models with random weights, made by DALLE-pytorch itself (seed 0) and saved as its
train_dalle.py saves them; our side loads that file with dalle_pytorch.checkpoint.load_checkpoint,
so both sample from the same weights:
- "bench": benchmarks/generate.py's model (dim 256, depth 4, 4 heads of 64, text 32, 16x16 codes of 512);
- "community": the size people trained and shared with DALLE-pytorch (dim 512, depth 16, 8 heads
  of 64, text 128, 16x16 codes of 1024).
Each measurement is a fresh process (ours, then DALLE-pytorch's, alternating), so its peak
resident memory is its own: load the model, warm up (a batch-1 generation primed to its last two
codes; compiled variants at their batch), then time whole `generate_images` calls (prefill, 256
steps, VAE decode) and the time to the first sampled image code. Both use their cached path
(DALLE-pytorch with its cache kept at cond_scale 1, see benchmarks/dalle_pytorch_ref.py).

Workers run with OMP_WAIT_POLICY=PASSIVE by default: on a machine whose 2 cores other processes
share, OpenMP's spinning threads otherwise wait on descheduled ones (a batch-4 generation took 77 s
instead of 6 s with two threads under a load of 6).  On a quiet machine `--omp_wait_policy default`
leaves OpenMP's own policy (threads spin a while before sleeping: faster small steps, for both
implementations).  The load average is printed with the table.
The step floor at batch 64 (the weight products plus one read of the step's keys and values,
timed between the steps of an eager decode) comes from the same run.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from process_stats import peak_rss_mb, rss_mb, time_first_call

HERE = Path(__file__).resolve().parent

# (model, batch, cond_scale, variant): variant "fp32" is the default eager path; the others are
# ours only: "fp32+compile" (compile=True), "bf16" (a bf16 model, fp32 KV cache, eager),
# "bf16+compile" (a bf16 model and KV cache, compile=True)
GRID = [("bench", b, 1.0, "fp32") for b in (1, 4, 16, 64)]
GRID += [("bench", 64, 1.0, v) for v in ("fp32+compile", "bf16", "bf16+compile")]
GRID += [("community", b, s, "fp32") for s in (1.0, 3.0) for b in (1, 8, 64)]
GRID += [("community", 64, 1.0, "bf16+compile")]
FLOORS = [("bench", 64), ("community", 1)]  # (model, batch) of the step-floor measurements
QUICK = [("bench", 1, 1.0, "fp32"), ("bench", 4, 1.0, "bf16"), ("bench", 4, 1.0, "bf16+compile"),
         ("community", 1, 3.0, "fp32")]
QUICK_FLOORS = [("bench", 4)]
# --quant: the community model at batch 1 and 8, CFG 1 and 3, in fp32, bf16 and quantized (dalle_pytorch.quantize)
QUANT = [("community", b, s, v) for b in (1, 8) for s in (1.0, 3.0) for v in ("fp32", "bf16", "int8", "int4")]
QUANT_FLOORS = [("community", 1)]



def load_model(spec: dict):
    import torch

    from dalle_pytorch.checkpoint import load_checkpoint

    model = load_checkpoint(spec["checkpoint"]).model.eval()
    if spec["variant"].startswith("bf16"):
        model = model.to(torch.bfloat16)
    if spec["variant"] in ("int8", "int4"):
        from dalle_pytorch import quantize

        model = quantize(model, spec["variant"])
    return model


def worker(spec: dict) -> dict:
    """One timed configuration of our generate_images (see the module docstring)."""
    import torch

    import dalle_pytorch.generation.decode as decode_module

    torch.set_num_threads(spec["threads"])
    model = load_model(spec)
    variant = spec["variant"]
    kw = {"cond_scale": spec["cond_scale"]}
    if "compile" in variant:
        kw["compile"] = True
    if variant == "bf16":
        kw["kv_dtype"] = torch.float32  # eager: SDPA reads an fp32 cache faster than a bf16 one here
    first = time_first_call(decode_module, "next_codes")  # the decode loop's draw of each step's codes
    b, T = spec["batch"], model.text_seq_len
    text = torch.randint(1, model.num_user_text_tokens, (b, T), generator=torch.Generator().manual_seed(0))
    warm = text if "compile" in variant else text[:1]  # a compiled step compiles for its batch
    first.append(None)
    model.generate_images(warm, img=torch.rand(1, 3, model.vae.image_size, model.vae.image_size),
                          num_init_img_tokens=model.image_seq_len - 2, generator=torch.Generator().manual_seed(0), **kw)
    rss_before = rss_mb()
    times, ttft = [], []
    for _ in range(spec["repeat"]):
        first.append(None)
        t0 = time.perf_counter()
        model.generate_images(text, generator=torch.Generator().manual_seed(0), **kw)
        times.append(time.perf_counter() - t0)
        ttft.append(first[-1] - t0)
    peak = peak_rss_mb()
    return {"impl": f"ours ({variant})", "seconds": min(times), "all_seconds": times, "first_token": min(ttft),
            "peak_rss_mb": peak, "rss_before_mb": rss_before}


def floor_worker(spec: dict) -> dict:
    """An eager decode of the whole grid at `batch`, with the step's floor timed between its steps:
    the weight products alone (benchmarks/generate.py's matmul_floor_fn) plus one read of the keys
    and values the step attends over (a sum over each layer's filled prefix)."""
    import torch

    sys.path.insert(0, str(HERE))
    from generate import matmul_floor_fn, streamed_bytes

    torch.set_num_threads(spec["threads"])
    model = load_model(spec)
    b = spec["batch"]
    text = torch.randint(1, model.num_user_text_tokens, (b, model.text_seq_len), generator=torch.Generator().manual_seed(0))
    weights = matmul_floor_fn(model, b)
    times = {"step": [], "weights": [], "kv_read": []}
    with torch.inference_mode():
        cache = model.setup_cache(b)
        last = model.prefill(model.text_ids(text), None, cache)
        codes = torch.randint(0, model.num_image_tokens, (model.image_seq_len, b), generator=torch.Generator().manual_seed(0))
        positions = torch.arange(model.transformer.seq_len)
        for t in range(model.image_seq_len - 1):
            pos = model.text_len + t
            t0 = time.perf_counter()
            last = model.decode_step(codes[t], positions[pos], cache, length=pos + 1)
            t1 = time.perf_counter()
            weights()
            t2 = time.perf_counter()
            for kv in cache.kv:
                kv.k.narrow(2, 0, pos + 1).sum()
                kv.v.narrow(2, 0, pos + 1).sum()
            t3 = time.perf_counter()
            times["step"].append(t1 - t0)
            times["weights"].append(t2 - t1)
            times["kv_read"].append(t3 - t2)
    out = {k: sum(v) / len(v) for k, v in times.items()}
    out["streamed_bytes"] = streamed_bytes(model)
    out["step_over_floor_median"] = statistics.median(s / (w + r) for s, w, r in zip(times["step"], times["weights"], times["kv_read"]))
    return out


def best(runs: list) -> dict:
    """The fastest of several runs of one configuration (peak memory: the largest)."""
    out = dict(min(runs, key=lambda r: r["seconds"]))
    out["first_token"] = min(r["first_token"] for r in runs)
    out["peak_rss_mb"] = max(r["peak_rss_mb"] for r in runs)
    out["all_seconds"] = [s for r in runs for s in r["all_seconds"]]
    return out


OMP_WAIT_POLICY = "PASSIVE"  # set by --omp_wait_policy ("default": unset)


def spawn(cmd: list, threads: int) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    env.pop("OMP_WAIT_POLICY", None)
    if OMP_WAIT_POLICY != "default":
        env["OMP_WAIT_POLICY"] = OMP_WAIT_POLICY
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=tempfile.gettempdir())
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:3])} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ref_python", default="/work/ref/venv-perf/bin/python",
                        help="the reference venv's python (benchmarks/dalle_pytorch_ref.sh)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="a small grid (smoke test)")
    parser.add_argument("--quant", action="store_true",
                        help="the quantization grid: community model, fp32 / bf16 / int8 / int4, each step against its floor")
    parser.add_argument("--model", choices=["bench", "community"], help="only this model's rows")
    parser.add_argument("--batch", type=int, nargs="+", help="only the rows (and floors) of these batch sizes")
    parser.add_argument("--omp_wait_policy", choices=["PASSIVE", "ACTIVE", "default"], default="PASSIVE",
                        help="OMP_WAIT_POLICY of the workers (PASSIVE for a shared machine; default: OpenMP's own)")
    parser.add_argument("--floors_only", action="store_true", help="only the step-floor measurements (no grid)")
    parser.add_argument("--out", help="also write the table (markdown) and the raw results (.json beside it)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--floor_worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    global OMP_WAIT_POLICY
    OMP_WAIT_POLICY = args.omp_wait_policy
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return
    if args.floor_worker:
        print(json.dumps(floor_worker(json.loads(args.floor_worker))))
        return

    import torch

    sys.path.insert(0, str(HERE))
    from generate import cpu_name

    ref_script = str(HERE / "dalle_pytorch_ref.py")
    lines = []

    def say(line=""):
        print(line, flush=True)
        lines.append(line)

    say(f"torch {torch.__version__}, {args.threads} threads, OMP_WAIT_POLICY {args.omp_wait_policy}, {cpu_name()}; load average at start "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    check = spawn([args.ref_python, "-P", ref_script, "check"], args.threads)
    say(f"DALLE-pytorch with its cache kept at cond_scale 1: cached codes == uncached codes: {check['cached_equals_uncached']}")
    grid = QUICK if args.quick else QUANT if args.quant else GRID
    floors = QUICK_FLOORS if args.quick else QUANT_FLOORS if args.quant else FLOORS
    if args.model:
        grid = [g for g in grid if g[0] == args.model]
        floors = [f for f in floors if f[0] == args.model]
    if args.batch:
        grid = [g for g in grid if g[1] in args.batch]
        floors = [f for f in floors if f[1] in args.batch]
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = {}
        for model in sorted({g[0] for g in grid}):
            ckpt[model] = os.path.join(tmp, f"{model}.pt")
            subprocess.run([args.ref_python, "-P", ref_script, "make", model, ckpt[model]], check=True,
                           cwd=tempfile.gettempdir())
            from dalle_pytorch.checkpoint import load_checkpoint

            n = sum(p.numel() for p in load_checkpoint(ckpt[model]).model.transformer.parameters())
            say(f"model {model}: {n / 1e6:.1f}M transformer parameters ({n * 4 / 2**20:.0f} MB in fp32)")
        say()
        say("| model | batch | cond_scale | variant | ours s | DALLE-pytorch s | ours images/s | DALLE-pytorch images/s | speed-up | first code: ours / DALLE-pytorch s | peak RSS: ours / DALLE-pytorch MB |")
        say("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        ref_done = {}
        for model, batch, scale, variant in ([] if args.floors_only else grid):
            # small configurations: two rounds (ours, DALLE-pytorch, ours, DALLE-pytorch), best of each
            rounds = 2 if (model == "bench" and batch <= 16) or (model == "community" and batch == 1) else 1
            spec = {"checkpoint": ckpt[model], "batch": batch, "cond_scale": scale, "threads": args.threads,
                    "repeat": 1, "variant": variant}
            key = (model, batch, scale)
            runs = []
            for _ in range(rounds):
                runs.append(spawn([sys.executable, __file__, "--worker", json.dumps(spec)], args.threads))
                if key not in ref_done:  # the reference runs once per configuration, beside our first variant
                    ref_runs = [spawn([args.ref_python, "-P", ref_script, "run", json.dumps(spec)], args.threads)]
                    if rounds == 2:
                        runs.append(spawn([sys.executable, __file__, "--worker", json.dumps(spec)], args.threads))
                        ref_runs.append(spawn([args.ref_python, "-P", ref_script, "run", json.dumps(spec)], args.threads))
                    ref_done[key] = best(ref_runs)
                    break
            ours, ref = best(runs), ref_done[key]
            results.append({"model": model, "batch": batch, "cond_scale": scale, "variant": variant, "ours": ours, "ref": ref})
            say(f"| {model} | {batch} | {scale:g} | {variant} | {ours['seconds']:.2f} | {ref['seconds']:.2f} | "
                f"{batch / ours['seconds']:.2f} | {batch / ref['seconds']:.2f} | **{ref['seconds'] / ours['seconds']:.2f}x** | "
                f"{ours['first_token']:.3f} / {ref['first_token']:.3f} | {ours['peak_rss_mb']:.0f} / {ref['peak_rss_mb']:.0f} |")
        say()
        for model, b in floors:
            fl = spawn([sys.executable, __file__, "--floor_worker", json.dumps(
                {"checkpoint": ckpt[model], "batch": b, "threads": args.threads, "variant": "fp32"})], args.threads)
            results.append({"model": model, "batch": b, "floor": fl})
            say(f"{model}, batch {b}, eager fp32: mean step {fl['step'] * 1e3:.2f} ms; floor = weight products "
                f"{fl['weights'] * 1e3:.2f} ms + one read of the step's keys and values {fl['kv_read'] * 1e3:.2f} ms; "
                f"step / floor {fl['step'] / (fl['weights'] + fl['kv_read']):.2f}x (median over steps "
                f"{fl['step_over_floor_median']:.2f}x)")
            if args.quant:  # each variant's own step, against the floor of the bytes it streams
                variants = {"fp32": fl}
                for v in ("bf16", "int8", "int4"):
                    variants[v] = spawn([sys.executable, __file__, "--floor_worker", json.dumps(
                        {"checkpoint": ckpt[model], "batch": b, "threads": args.threads, "variant": v})], args.threads)
                    results.append({"model": model, "batch": b, "variant": v, "floor": variants[v]})
                bandwidth = fl["streamed_bytes"] / fl["weights"]
                say(f"{model}, batch {b}: the fp32 products streamed {bandwidth / 1e9:.1f} GB/s; each variant's mean eager "
                    "step, its weight products alone, and its floor (its bytes at that bandwidth + the key / value read):")
                say()
                say("| variant | weights read per step | step ms | its products ms | floor ms | step / floor | step speed-up over fp32 |")
                say("| --- | --- | --- | --- | --- | --- | --- |")
                for v, f in variants.items():
                    floor = f["streamed_bytes"] / bandwidth + f["kv_read"]
                    say(f"| {v} | {f['streamed_bytes'] / 2**20:.0f} MB | {f['step'] * 1e3:.2f} | {f['weights'] * 1e3:.2f} | "
                        f"{floor * 1e3:.2f} | {f['step'] / floor:.2f}x | {fl['step'] / f['step']:.2f}x |")
    say(f"load average at the end {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if args.out:
        Path(args.out).write_text("\n".join(lines) + "\n")
        Path(args.out).with_suffix(".json").write_text(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main()
