"""Cached generation benchmark: every comparison is measured side by side in one run.

    python benchmarks/generate.py --compile      # the full run (about two minutes on 2 CPU cores)
    python benchmarks/generate.py --quick        # 4x4 and 8x8 grids, for a smoke test
    python benchmarks/generate.py --device cuda  # on a GPU (timings synchronise the device)

Model: dim 256, depth 4, heads 4, dim_head 64, text_seq_len 32, random weights, fp32, batch 4.
Prints a table of timings and ratios; docs/benchmarks.md records a run.
"""
from __future__ import annotations

import argparse
import time
from contextlib import contextmanager

import torch

from dalle_pytorch import DALLE, DiscreteVAE
from dalle_pytorch.generation import decode
from dalle_pytorch.nn.cache import KVCache

DEVICE = torch.device("cpu")  # set by --device


def now() -> float:
    """A timestamp after the device has finished its queued work (CUDA runs asynchronously)."""
    if DEVICE.type == "cuda":
        torch.cuda.synchronize(DEVICE)
    return time.perf_counter()


def build(fmap: int, text_seq_len: int = 32, **kwargs) -> DALLE:
    torch.manual_seed(0)
    # the VAE only fixes the grid size here (image_size / 2**num_layers = fmap); codes are sampled directly
    vae = DiscreteVAE(image_size=fmap * 2, num_layers=1, num_tokens=512, codebook_dim=16, hidden_dim=8)
    return DALLE(dim=256, vae=vae, num_text_tokens=10000, text_seq_len=text_seq_len, depth=4, heads=4, dim_head=64,
                 **kwargs).eval().to(DEVICE)


def text_batch(b: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(1, 10000, (b, 32), generator=torch.Generator().manual_seed(seed)).to(DEVICE)


@contextmanager
def timer(out: list):
    t0 = now()
    yield
    out.append(now() - t0)


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


def _prefilled_cache(model, text, concat: bool = False):
    b = text.shape[0]
    cache = model.setup_cache(b)
    prefix = model.setup_cache(b, model.text_len)
    model.prefill(model.text_ids(text), None, prefix)
    cache.copy_rows_from(prefix, torch.arange(b, device=DEVICE))
    if concat:
        n = prefix.length
        for i, kv in enumerate(prefix.kv):
            cache.kv[i] = ConcatKVCache(kv.k[:, :, :n], kv.v[:, :, :n])
    return cache


VARIANTS = {  # name: (compile mode or False, concatenating cache)
    "eager": (False, False),
    "concat": (False, True),
    "compile=prefix": ("prefix", False),
    "compile=static": ("static", False),
    # the prefix step with inductor's default Python wrapper (what compile=True was before it used
    # the C++ wrapper on CPU): the baseline of that choice
    "compile=prefix,py": ("prefix,py", False),
}


def compiled_step(model, mode: str):
    if mode == "prefix,py":
        return torch.compile(model.decode_step, dynamic=True)
    compiled = decode.compiled_step(mode, DEVICE)  # what generate_images(compile=mode) runs
    return lambda token, pos, cache, length: compiled(model, token, pos, cache, length)


@torch.inference_mode()
def step_times(model, text, num_steps: int, concat: bool = False, compile: bool | str = False) -> list[float]:
    """Per-step wall time of cached decoding (prefill excluded); compile as in generate_images."""
    return decode_sweep(model, text, num_steps, {"only": (compile, concat)}, floor=False)["only"]


@torch.inference_mode()
def decode_sweep(model, text, num_steps: int, variants: dict, floor: bool = True) -> dict:
    """Decode `num_steps` positions with every variant side by side: at each position each variant
    (own cache) takes its step, in an order that rotates, then (floor=True) the step's matrix
    products alone are timed too.  Returns {name: [seconds per step]} (and "floor").
    With the floor, "attention" times the attention's own matrix products at that position
    (q.K^T and p.V over the filled prefix of every layer's cache): the part of the floor that
    grows with the position.  A compiled variant is compiled (on a scratch cache) before the sweep."""
    b = text.shape[0]
    steps, caches = {}, {}
    for name, (mode, concat) in variants.items():
        steps[name] = compiled_step(model, "prefix" if mode is True else mode) if mode else model.decode_step
        if mode:  # compile outside the timed sweep
            scratch = _prefilled_cache(model, text)
            for t in range(2):
                pos = model.text_len + t
                steps[name](text[:, 0] % 512, torch.tensor(pos, device=DEVICE), scratch, length=None if mode == "static" else pos + 1)
        caches[name] = _prefilled_cache(model, text, concat)
    floor_fn = matmul_floor_fn(model, b)
    attn_fn = attention_products_fn(model, caches[next(iter(variants))], b)
    codes = torch.randint(0, 512, (num_steps, b), generator=torch.Generator().manual_seed(0)).to(DEVICE)
    positions = torch.arange(model.transformer.seq_len, device=DEVICE)
    names = list(variants)
    times = {name: [] for name in names + (["floor", "attention"] if floor else [])}
    for t in range(num_steps):
        pos = model.text_len + t
        k = t % len(names)
        for name in names[k:] + names[:k]:
            static = variants[name][0] == "static"
            t0 = now()
            steps[name](codes[t], positions[pos], caches[name], length=None if static else pos + 1)
            times[name].append(now() - t0)
        if floor:
            t0 = now()
            floor_fn()
            times["floor"].append(now() - t0)
            t0 = now()
            attn_fn(pos + 1)
            times["attention"].append(now() - t0)
    return times


@torch.inference_mode()
def uncached_forward_time(model, text, n_img: int) -> float:
    codes = torch.randint(0, 512, (text.shape[0], n_img), device=DEVICE)
    return best_of(lambda: model(text, codes), repeat=2)


def _step_layers(model):
    """(layer, output rows) of every weight product of one decode step, in order."""
    t = model.transformer
    layers = []
    for i in range(t.depth):
        a, f = t.attns[t.attn_index[i]], t.ffs[t.ff_index[i]]
        layers += [(a.to_qkv, None), (a.to_out, None), (f.proj_in, None), (f.proj_out, None)]
    layers.append((model.to_logits[1], slice(model.num_text_tokens, None)))
    return layers


def streamed_bytes(model) -> int:
    """The bytes of weights one decode step reads: every product's weight (its rows), bias, scales."""
    from dalle_pytorch.nn.quantized import QuantizedLinear

    total = 0
    for layer, rows in _step_layers(model):
        names = ("qweight", "scale", "zero", "bias") if isinstance(layer, QuantizedLinear) else ("weight", "bias")
        for name in names:
            t = getattr(layer, name, None)
            if t is not None:
                t = t if rows is None else t[rows]
                total += t.numel() * t.element_size()
    return total


def matmul_floor_fn(model, b: int):
    """A function running one decode step's matrix products alone (same shapes, weights, biases), by
    the kernel the step uses: the packed weights of `DALLE.setup_cache` where it packs them, a
    quantized model's own kernels."""
    from dalle_pytorch.nn.packed import PackedLinears, packing_available
    from dalle_pytorch.nn.quantized import layer_product

    layers = _step_layers(model)
    dtype = model.to_logits[0].weight.dtype
    xs = {layer.in_features: torch.randn(b, layer.in_features, device=DEVICE, dtype=dtype) for layer, _ in layers}
    packs = PackedLinears(b) if packing_available(model.to_logits[0].weight.device, dtype) else None

    def run():
        with torch.inference_mode():
            for layer, rows in layers:
                layer_product(xs[layer.in_features], layer, rows, packs)

    return run


def attention_products_fn(model, cache, b: int):
    """A function of n running the attention's matrix products of one step over positions 0..n-1:
    q.K^T and p.V for every layer, reading that layer's KV buffers (the bytes a step reads)."""
    t = model.transformer
    q = torch.randn(b, t.heads, 1, t.dim_head, device=DEVICE)
    p = torch.rand(b, t.heads, 1, cache.kv[0].max_len, device=DEVICE)

    def run(n):
        for kv in cache.kv:
            torch.matmul(q, kv.k.narrow(2, 0, n).transpose(-1, -2))
            torch.matmul(p.narrow(3, 0, n), kv.v.narrow(2, 0, n))

    return run


@torch.inference_mode()
def matmul_floor(model, b: int, steps: int = 50, repeats: int = 7) -> float:
    """Median time of one decode step's matrix products alone, run back to back (weights stay hot)."""
    import statistics

    run = matmul_floor_fn(model, b)
    for _ in range(10):
        run()
    times = []
    for _ in range(repeats):
        t0 = now()
        for _ in range(steps):
            run()
        times.append((now() - t0) / steps)
    return statistics.median(times)


@torch.inference_mode()
def matmul_share_in_steps(model, text, num_steps: int = 100) -> float:
    """Fraction of real decode-step time spent in matrix products (torch.profiler, same run)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step_times(model, text, min(num_steps, model.image_seq_len - 1))
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    products = ("aten::addmm", "aten::mm", "aten::bmm", "mkldnn::_linear_pointwise")  # the last: packed weights
    mm = sum(e.self_cpu_time_total for e in events if e.key in products)
    return mm / total


@torch.inference_mode()
def ops_per_step(model, text, num_steps: int = 20) -> tuple[float, float]:
    """Operators one eager decode step calls: (the ops the step's code calls, as a dispatch mode
    sees them; every aten op the profiler records, those the first ones call inside included)."""
    from torch.profiler import ProfilerActivity, profile
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):  # the same counter as tests/models/test_cache.py's operator-count test
        def __init__(self):
            super().__init__()
            self.calls = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.calls += 1
            return func(*args, **(kwargs or {}))

    cache = _prefilled_cache(model, text)
    codes = text[:, :num_steps].T % model.num_image_tokens
    positions = torch.arange(model.transformer.seq_len, device=DEVICE)
    run = lambda t: model.decode_step(codes[t], positions[model.text_len + t], cache, length=model.text_len + t + 1)  # noqa: E731
    counter = Count()
    with counter:
        for t in range(num_steps):
            run(t)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for t in range(num_steps):
            run(t)
    aten = sum(e.count for e in prof.key_averages() if e.key.startswith("aten::"))
    return counter.calls / num_steps, aten / num_steps


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
    positions = torch.arange(model.transformer.seq_len, device=DEVICE)
    g = torch.Generator(device=DEVICE).manual_seed(0)
    t0 = now()
    for t in range(model.image_seq_len - 1):
        logits = lasts[1] + (lasts[0] - lasts[1]) * scale
        code = torch.multinomial(logits.softmax(-1), 1, generator=g)[:, 0]
        pos = model.text_len + t
        lasts = [model.decode_step(code, positions[pos], c, length=pos + 1) for c in caches]
    return now() - t0


#: the vector and matrix units a decode kernel's speed depends on, as /proc/cpuinfo names them
CPU_UNITS = ("avx512f", "avx512_bf16", "avx512_vnni", "avx_vnni", "amx_bf16", "amx_int8")


def cpu_name() -> str:
    """The CPU's model name, which of CPU_UNITS it has, and the instruction set torch uses on it: runs
    on different machines must not be compared number for number."""
    name, flags = "unknown CPU", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and name == "unknown CPU":
                    name = line.split(":", 1)[1].strip()
                elif line.startswith("flags") and not flags:
                    flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    units = " ".join(u for u in CPU_UNITS if u in flags) or "none of " + " ".join(CPU_UNITS)
    return f"{name} ({units}), {torch.backends.cpu.get_cpu_capability()}"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small grids (smoke test)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--compile", action="store_true", help="also time torch.compile of the decode step")
    parser.add_argument("--device", default="cpu", help="cpu (the numbers in docs/benchmarks.md) or cuda")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    global DEVICE
    DEVICE = torch.device(args.device)
    small, large = (4, 8) if args.quick else (16, 32)
    b = 4
    rows = []

    def report(name, value, unit="s"):
        rows.append((name, value, unit))
        print(f"{name:<72} {value:10.4f} {unit}", flush=True)

    where = torch.cuda.get_device_name(DEVICE) if DEVICE.type == "cuda" else f"{torch.get_num_threads()} threads, {cpu_name()}"
    print(f"torch {torch.__version__}, {DEVICE.type} ({where}), batch {b}, fp32")

    # 1. cached vs uncached, small grid (both run in full)
    m = build(small)
    text = text_batch(b)
    gen(m, text)  # warm-up
    tc = best_of(lambda: gen(m, text), repeat=2)
    tu = best_of(lambda: gen(m, text, use_cache=False), repeat=1)
    report(f"[{small}x{small}] cached generate", tc)
    report(f"[{small}x{small}] uncached generate", tu)
    report(f"[{small}x{small}] speed-up cached / uncached", tu / tc, "x")

    # 2. large grid: cached total, and uncached estimated from measured forwards
    m = build(large)
    gen(m, text)
    tc = best_of(lambda: gen(m, text), repeat=1)
    n = large * large
    report(f"[{large}x{large}] cached generate ({n} tokens)", tc)
    # uncached generation = one full forward per token; forward time measured at 9 lengths, integrated
    lengths = [round(i * (n - 1) / 8) for i in range(9)]
    fw = [uncached_forward_time(m, text, k) for k in lengths]
    est = sum((fw[i] + fw[i + 1]) / 2 * (lengths[i + 1] - lengths[i]) for i in range(8)) + fw[0]
    report(f"[{large}x{large}] uncached forward at full length", fw[-1])
    report(f"[{large}x{large}] uncached generate (integral of measured forwards)", est)
    report(f"[{large}x{large}] speed-up cached / uncached", est / tc, "x")

    # 3. per-step costs, every variant side by side at every position (one sweep over the 32x32 grid):
    #    eager, a concatenating cache, and with --compile the two compiled steps; the step's matrix
    #    products alone are timed after every position ("in situ") and back to back ("hot")
    names = ["eager", "concat"] + (["compile=prefix", "compile=static", "compile=prefix,py"] if args.compile else [])
    hot = matmul_floor(m, b)
    try:
        sweep = decode_sweep(m, text, n - 1, {k: VARIANTS[k] for k in names})
    except Exception as err:  # report, don't hide: compile support varies by platform
        if not args.compile:
            raise
        print(f"torch.compile failed: {type(err).__name__}: {err}")
        names = ["eager", "concat"]
        sweep = decode_sweep(m, text, n - 1, {k: VARIANTS[k] for k in names})
    hot = (hot + matmul_floor(m, b)) / 2  # before and after the sweep
    situ = sum(sweep["floor"]) / len(sweep["floor"])
    report(f"[{large}x{large}] matmul floor of one step, back to back (hot)", hot * 1e3, "ms")
    report(f"[{large}x{large}] matmul floor of one step, between steps (in situ)", situ * 1e3, "ms")
    # the floor with the attention's products: what a step must at least compute and read
    full = [f + a for f, a in zip(sweep["floor"], sweep["attention"])]
    k = min(100, len(full))  # the first and last 100 positions (fewer on a --quick grid)
    f_early, f_late, f_mean = sum(full[:k]) / k, sum(full[-k:]) / k, sum(full) / len(full)
    report(f"[{large}x{large}] floor with attention products (in situ), first 100", f_early * 1e3, "ms")
    report(f"[{large}x{large}] floor with attention products (in situ), last 100", f_late * 1e3, "ms")
    report(f"[{large}x{large}] floor with attention products: late / early", f_late / f_early, "x")
    for name in names:
        st = sweep[name]
        early, late, mean = sum(st[:k]) / k, sum(st[-k:]) / k, sum(st) / len(st)
        report(f"[{large}x{large}] {name}: mean step, first 100 positions", early * 1e3, "ms")
        report(f"[{large}x{large}] {name}: mean step, last 100 positions", late * 1e3, "ms")
        report(f"[{large}x{large}] {name}: late / early step time", late / early, "x")
        report(f"[{large}x{large}] {name}: mean step / matmul floor (hot)", mean / hot, "x")
        report(f"[{large}x{large}] {name}: mean step / matmul floor (in situ)", mean / situ, "x")
        report(f"[{large}x{large}] {name}: mean step / floor with attention (in situ)", mean / f_mean, "x")
        if name != "eager":
            report(f"[{large}x{large}] {name}: total step time / eager's", sum(st) / sum(sweep["eager"]), "x")
    # the sweep keeps one cache per variant (5 x 35 MB at the end), more than a real generation
    # holds: eager decoding alone, one cache resident, is what generate_images does
    alone = step_times(m, text, n - 1)
    early, late = sum(alone[:k]) / k, sum(alone[-k:]) / k
    report(f"[{large}x{large}] eager alone: mean step, first 100 positions", early * 1e3, "ms")
    report(f"[{large}x{large}] eager alone: mean step, last 100 positions", late * 1e3, "ms")
    report(f"[{large}x{large}] eager alone: late / early step time", late / early, "x")
    called, aten = ops_per_step(m, text)
    report(f"[{large}x{large}] eager: operators called per step (dispatch mode)", called, "ops")
    report(f"[{large}x{large}] eager: aten ops per step, nested ones included (profiler)", aten, "ops")
    share = matmul_share_in_steps(m, text)
    report(f"[{large}x{large}] eager: share of step time in matrix products (profiler)", share * 100, "%")

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
            t0 = now()
            gen(m, text, compile=True)
            report(f"[{small}x{small}] compile=True: first generate_images call (compiles)", now() - t0)
            tcc = best_of(lambda: gen(m, text, compile=True), repeat=2)
            report(f"[{small}x{small}] compile=True: generate", tcc)
            report(f"[{small}x{small}] speed-up compile=True / eager", t1 / tcc, "x")
        except Exception as err:  # report, don't hide: compile support varies by platform
            print(f"torch.compile failed: {type(err).__name__}: {err}")
    return rows


if __name__ == "__main__":
    main()
