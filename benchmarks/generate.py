"""Cached generation benchmark: every comparison is measured side by side in one run.

    python benchmarks/generate.py            # the full run (several minutes on 2 CPU cores)
    python benchmarks/generate.py --quick    # smaller grids, for a smoke test

Model: dim 256, depth 4, heads 4, dim_head 64, text_seq_len 32, random weights, fp32, batch 4.
Prints a table of timings and ratios; docs/benchmarks.md records a run.
"""
from __future__ import annotations

import argparse
import time
from contextlib import contextmanager

import torch

from dalle_pytorch import DALLE, DiscreteVAE
from dalle_pytorch.cache import KVCache


def build(fmap: int, **kwargs) -> DALLE:
    torch.manual_seed(0)
    # the VAE only fixes the grid size here (image_size / 2**num_layers = fmap); codes are sampled directly
    vae = DiscreteVAE(image_size=fmap * 2, num_layers=1, num_tokens=512, codebook_dim=16, hidden_dim=8)
    return DALLE(dim=256, vae=vae, num_text_tokens=10000, text_seq_len=32, depth=4, heads=4, dim_head=64,
                 **kwargs).eval()


def text_batch(b: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(1, 10000, (b, 32), generator=torch.Generator().manual_seed(seed))


@contextmanager
def timer(out: list):
    t0 = time.perf_counter()
    yield
    out.append(time.perf_counter() - t0)


def best_of(fn, repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        with timer(times):
            fn()
    return min(times)


def gen(model, text, **kw):
    return model.generate_images(text, return_codes=True, generator=torch.Generator().manual_seed(0), **kw)


class ConcatKVCache(KVCache):
    """Baseline only: grows k, v with torch.cat at every step (what a dict-of-tensors cache does)."""

    def __init__(self, k, v):
        super().__init__(k.clone(), v.clone())

    @property
    def max_len(self) -> int:
        return self.k.shape[2]

    def write(self, pos, k, v):
        self.k = torch.cat((self.k, k), dim=2)
        self.v = torch.cat((self.v, v), dim=2)


@torch.inference_mode()
def step_times(model, text, num_steps: int, concat: bool = False, compile: bool | str = False) -> list[float]:
    """Per-step wall time of cached decoding (prefill excluded); compile as in generate_images."""
    b = text.shape[0]
    cache = model.setup_cache(b)
    prefix = model.setup_cache(b, model.text_len)
    last = model.prefill(model.text_ids(text), None, prefix)
    cache.copy_rows_from(prefix, torch.arange(b))
    if concat:
        for i, kv in enumerate(prefix.kv):
            cache.kv[i] = ConcatKVCache(kv.k, kv.v)
    g = torch.Generator().manual_seed(0)
    code = torch.randint(0, 512, (b,), generator=g)
    positions = torch.arange(model.transformer.seq_len)
    step = model._compiled_decode_step("prefix" if compile is True else compile) if compile else model.decode_step
    times = []
    for t in range(num_steps):
        t0 = time.perf_counter()
        pos = model.text_len + t
        last = step(code, positions[pos], cache, length=None if compile == "static" else pos + 1)
        code = last.argmax(-1)
        times.append(time.perf_counter() - t0)
    return times


@torch.inference_mode()
def uncached_forward_time(model, text, n_img: int) -> float:
    codes = torch.randint(0, 512, (text.shape[0], n_img))
    return best_of(lambda: model(text, codes), repeat=2)


@torch.inference_mode()
def matmul_floor(model, b: int, steps: int = 50, repeats: int = 7) -> float:
    """Median time of one decode step's matrix products alone (same shapes, weights and biases)."""
    import statistics

    import torch.nn.functional as F

    t = model.transformer
    layers = []
    for i in range(t.depth):
        a, f = t.attns[t.attn_index[i]], t.ffs[t.ff_index[i]]
        layers += [(a.to_qkv.weight, None), (a.to_out.weight, a.to_out.bias),
                   (f.proj_in.weight, f.proj_in.bias), (f.proj_out.weight, f.proj_out.bias)]
    proj = model.to_logits[1]
    layers.append((proj.weight[model.num_text_tokens :], proj.bias[model.num_text_tokens :]))
    xs = {w.shape[1]: torch.randn(b, w.shape[1]) for w, _ in layers}

    def run():
        for w, bias in layers:
            F.linear(xs[w.shape[1]], w, bias)

    for _ in range(10):
        run()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(steps):
            run()
        times.append((time.perf_counter() - t0) / steps)
    return statistics.median(times)


@torch.inference_mode()
def matmul_share_in_steps(model, text, num_steps: int = 100) -> float:
    """Fraction of real decode-step time spent in matrix products (torch.profiler, same run)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step_times(model, text, num_steps)
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    mm = sum(e.self_cpu_time_total for e in events if e.key in ("aten::addmm", "aten::mm", "aten::bmm"))
    return mm / total


@torch.inference_mode()
def two_pass_guidance_time(model, text, scale: float) -> float:
    """Baseline: conditional and null rows in two separate forwards per step (two caches)."""
    b = text.shape[0]
    null = torch.zeros_like(text)
    caches = []
    lasts = []
    for t_ in (text, null):
        c = model.setup_cache(b)
        lasts.append(model.prefill(model.text_ids(t_), None, c)[:, model.num_text_tokens :])
        caches.append(c)
    positions = torch.arange(model.transformer.seq_len)
    g = torch.Generator().manual_seed(0)
    t0 = time.perf_counter()
    for t in range(model.image_seq_len - 1):
        logits = lasts[1] + (lasts[0] - lasts[1]) * scale
        code = torch.multinomial(logits.softmax(-1), 1, generator=g)[:, 0]
        pos = model.text_len + t
        lasts = [model.decode_step(code, positions[pos], c, length=pos + 1) for c in caches]
    return time.perf_counter() - t0


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small grids (smoke test)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--compile", action="store_true", help="also time torch.compile of the decode step")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    small, large = (8, 16) if args.quick else (16, 32)
    b = 4
    rows = []

    def report(name, value, unit="s"):
        rows.append((name, value, unit))
        print(f"{name:<62} {value:10.4f} {unit}", flush=True)

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {b}, fp32")

    # 1. cached vs uncached, small grid (both run in full)
    m = build(small)
    text = text_batch(b)
    gen(m, text)  # warm-up
    tc = best_of(lambda: gen(m, text), repeat=2)
    tu = best_of(lambda: gen(m, text, use_cache=False), repeat=1)
    report(f"[{small}x{small}] cached generate", tc)
    report(f"[{small}x{small}] uncached generate", tu)
    report(f"[{small}x{small}] speed-up cached / uncached", tu / tc, "x")

    # 2. large grid: cached total, step time early vs late, and uncached estimated from measured forwards
    m = build(large)
    gen(m, text)
    tc = best_of(lambda: gen(m, text), repeat=1)
    n = large * large
    steps = step_times(m, text, n - 1)
    early, late = sum(steps[:100]) / 100, sum(steps[-100:]) / 100
    report(f"[{large}x{large}] cached generate ({n} tokens)", tc)
    report(f"[{large}x{large}] mean step, first 100 image positions", early * 1e3, "ms")
    report(f"[{large}x{large}] mean step, last 100 image positions", late * 1e3, "ms")
    report(f"[{large}x{large}] late / early step time", late / early, "x")
    # uncached generation = one full forward per token; forward time measured at 9 lengths, integrated
    lengths = [round(i * (n - 1) / 8) for i in range(9)]
    fw = [uncached_forward_time(m, text, k) for k in lengths]
    est = sum((fw[i] + fw[i + 1]) / 2 * (lengths[i + 1] - lengths[i]) for i in range(8)) + fw[0]
    report(f"[{large}x{large}] uncached forward at full length", fw[-1])
    report(f"[{large}x{large}] uncached generate (integral of measured forwards)", est)
    report(f"[{large}x{large}] speed-up cached / uncached", est / tc, "x")
    floor = matmul_floor(m, b)
    report(f"[{large}x{large}] matmul floor of one step", floor * 1e3, "ms")
    report(f"[{large}x{large}] mean step / matmul floor", (sum(steps) / len(steps)) / floor, "x")
    share = matmul_share_in_steps(m, text)
    report(f"[{large}x{large}] share of step time in matrix products (profiler)", share * 100, "%")

    # 3. preallocated in-place cache vs concatenating cache
    concat = step_times(m, text, n - 1, concat=True)
    report(f"[{large}x{large}] concatenating cache, total step time", sum(concat))
    report(f"[{large}x{large}] preallocated cache, total step time", sum(steps))
    report(f"[{large}x{large}] speed-up preallocated / concatenating", sum(concat) / sum(steps), "x")

    # 4. guidance: batched (one forward) vs cond_scale=1, and vs two passes
    m = build(small)
    t1 = best_of(lambda: gen(m, text), repeat=2)
    t3 = best_of(lambda: gen(m, text, cond_scale=3.0), repeat=2)
    tp = min(two_pass_guidance_time(m, text, 3.0) for _ in range(2))
    report(f"[{small}x{small}] cond_scale=1", t1)
    report(f"[{small}x{small}] cond_scale=3, batched guidance", t3)
    report(f"[{small}x{small}] cond_scale=3 / cond_scale=1", t3 / t1, "x")
    report(f"[{small}x{small}] cond_scale=3, two passes (decode loop only)", tp)
    report(f"[{small}x{small}] speed-up batched / two passes", tp / t3, "x")

    # 5. num_images=8 from one caption vs 8 separate captions
    one = text_batch(1)
    eight = text_batch(8, seed=1)
    ti = best_of(lambda: gen(m, one, num_images=8), repeat=2)
    ts = best_of(lambda: gen(m, eight), repeat=2)
    report(f"[{small}x{small}] num_images=8, one caption", ti)
    report(f"[{small}x{small}] 8 captions x 1 image", ts)
    report(f"[{small}x{small}] ratio separate / shared prefix", ts / ti, "x")

    if args.compile:
        try:
            # the large grid again, compiled: step times early / late and against the matmul floor
            ml = build(large)
            es = step_times(ml, text, n - 1)  # eager again, next to the compiled runs
            report(f"[{large}x{large}] eager (again): total step time", sum(es))
            for mode in ("prefix", "static"):
                t0 = time.perf_counter()
                step_times(ml, text, 2, compile=mode)  # compiles
                report(f"[{large}x{large}] compile={mode!r}: compile time", time.perf_counter() - t0)
                cs = step_times(ml, text, n - 1, compile=mode)
                ce, cl = sum(cs[:100]) / 100, sum(cs[-100:]) / 100
                report(f"[{large}x{large}] compile={mode!r}: mean step, first 100", ce * 1e3, "ms")
                report(f"[{large}x{large}] compile={mode!r}: mean step, last 100", cl * 1e3, "ms")
                report(f"[{large}x{large}] compile={mode!r}: late / early step time", cl / ce, "x")
                report(f"[{large}x{large}] compile={mode!r}: total step time", sum(cs))
                report(f"[{large}x{large}] compile={mode!r}: mean step / matmul floor", (sum(cs) / len(cs)) / floor, "x")
                report(f"[{large}x{large}] compile={mode!r}: speed-up over eager steps", sum(es) / sum(cs), "x")
            t0 = time.perf_counter()
            gen(m, text, compile=True)
            report(f"[{small}x{small}] compiled decode step: first call (compiles)", time.perf_counter() - t0)
            tcc = best_of(lambda: gen(m, text, compile=True), repeat=2)
            report(f"[{small}x{small}] compiled decode step: generate", tcc)
            report(f"[{small}x{small}] speed-up compiled / eager", t1 / tcc, "x")
        except Exception as err:  # report, don't hide: compile support varies by platform
            print(f"torch.compile failed: {type(err).__name__}: {err}")
    return rows


if __name__ == "__main__":
    main()
