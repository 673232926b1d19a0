"""Load test of the image server (loopback only, bounded in requests and time), and the prefix cache.

    python benchmarks/serve.py            # the full run (a few minutes on 2 CPU cores)
    python benchmarks/serve.py --quick    # 8x8 grid, fewer requests: a smoke test

Model: benchmarks/generate.py's (dim 256, depth 4, heads 4 x 64, text_seq_len 32, random weights,
fp32) with the demo model's tokenizer, 16x16 codes (8x8 with --quick).  One request list (mixed n,
guidance, top-p, temperature, seeds) is run
  1. one by one, each request through `Pipeline.generate` in this process (the baseline) and then
     alone through `python -m dalle_pytorch.serve` (a subprocess on 127.0.0.1), interleaved;
  2. through the server by 4 and 16 concurrent clients on the streaming endpoint (each client sends
     its next request when its last one is answered).
Reported: images/s against the baseline, p50/p95/p99 latency, each request's latency against its own
latency alone (1 client), time to the first preview, and that every request got its n images.
Then the prefix cache: prefill time vs a cache hit, at text_seq_len 32 and 256, and 16 requests
for one caption ("more like this") with the cache on and off.
Every phase runs in this one invocation; the machine's load average is printed (other processes
share the cores: compare ratios from one run).
"""
from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
CAPTIONS = ["a red circle on a blue background", "a yellow square on a black background",
            "a white triangle on a green background", "a blue square on a white background",
            "a green circle on a yellow background", "a black triangle on a red background"]
HARD_LIMIT_S = 900  # the whole run stops by itself


def _bench_generate():
    spec = importlib.util.spec_from_file_location("bench_generate", ROOT / "benchmarks" / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def requests_list(count: int) -> list[dict]:
    """The mixed request list: n 1/2/4, half guided, some nucleus, two temperatures."""
    out = []
    for i in range(count):
        body = {"prompt": CAPTIONS[i % len(CAPTIONS)], "n": (1, 2, 4)[i % 3], "seed": i, "batch_size": 4,
                "top_k": 0.9, "temperature": (1.0, 0.8)[(i // 3) % 2]}
        if i % 2:
            body["cond_scale"] = 3.0
        if i % 4 == 0:
            body["top_p"] = 0.9
        out.append(body)
    return out


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    if not values:
        return float("nan")
    k = (len(values) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


# -- the server ---------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(path: Path, port: int, threads: int, preview_every: int) -> subprocess.Popen:
    return launch_server(port, "--dalle_path", str(path), "--threads", str(threads), "--max_rows", "64",
                         "--max_queue", "256", "--max_images", "16", "--preview_every", str(preview_every))


def launch_server(port: int, *flags: str) -> subprocess.Popen:
    """`python -m dalle_pytorch.serve --port PORT FLAGS` in a subprocess, once /health answers (the benchmarks'
    one way to start the server)."""
    cmd = [sys.executable, "-m", "dalle_pytorch.serve", "--port", str(port), *flags, "--log_level", "warning"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    import httpx

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited: {proc.stderr.read()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.terminate()
    raise RuntimeError("the server did not start within 120 s")


async def one_request(client, body: dict) -> dict:
    """Send one request on the streaming endpoint; returns latency, time to first preview, images."""
    start = time.perf_counter()
    first_preview, images, error = None, 0, None
    async with client.stream("POST", "/v1/images/stream", json=body) as r:
        if r.status_code != 200:
            return {"error": f"{r.status_code} {await r.aread()}", "latency": time.perf_counter() - start}
        kind = None
        async for line in r.aiter_lines():
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: "):
                if kind == "preview" and first_preview is None:
                    first_preview = time.perf_counter() - start
                elif kind == "done":
                    images = len(json.loads(line[6:])["images"])
                elif kind == "error":
                    error = json.loads(line[6:])["detail"]
    return {"latency": time.perf_counter() - start, "first_preview": first_preview, "images": images, "error": error}


async def run_clients(url: str, bodies: list[dict], clients: int, budget_s: float) -> tuple[list, float]:
    """`clients` closed-loop clients share the request list; returns (results in list order, seconds)."""
    import httpx

    results: list = [None] * len(bodies)
    next_index = iter(range(len(bodies)))
    deadline = time.perf_counter() + budget_s

    async def client_loop(client):
        for i in next_index:
            if time.perf_counter() > deadline:
                return
            results[i] = await one_request(client, bodies[i])

    start = time.perf_counter()
    async with httpx.AsyncClient(base_url=url, timeout=budget_s) as client:
        await asyncio.gather(*(client_loop(client) for _ in range(clients)))
    return results, time.perf_counter() - start


# -- the prefix cache -----------------------------------------------------------------------------------


@torch.inference_mode()
def prefix_cache_numbers(bench, fmap: int, tokenizer, report, lengths=(32, 256)) -> None:
    from dalle_pytorch.generation.sampling import SamplingConfig
    from dalle_pytorch.pipeline.text_to_image import Pipeline
    from dalle_pytorch.serve.batch import PrefixCache, RunningBatch, prefill
    from dalle_pytorch.serve.scheduler import ImageRequest, Scheduler

    for text_seq_len in lengths:
        model = bench.build(fmap, text_seq_len=text_seq_len)
        pipe = Pipeline(model, tokenizer)
        text = pipe.tokenize([CAPTIONS[0], ""])  # a guided request's two rows
        batch = RunningBatch(model, 8)
        cache = PrefixCache()
        prefix = prefill(model, text)
        cache.put("k", prefix)
        index = torch.tensor([0, 0, 1, 1])
        miss, hit = [], []
        for _ in range(15):
            t0 = time.perf_counter()
            p = prefill(model, text)
            seq, _ = batch.join(p, index)
            miss.append(time.perf_counter() - t0)
            batch.leave([seq])
            t0 = time.perf_counter()
            seq, _ = batch.join(cache.get("k"), index)
            hit.append(time.perf_counter() - t0)
            batch.leave([seq])
        m, h = statistics.median(miss), statistics.median(hit)
        report(f"[T={text_seq_len}] admit a guided request: prefill + copy / cache hit + copy", f"{m * 1e3:.2f} / {h * 1e3:.3f} ms", f"{m / h:.0f}x")
        # "more like this": 16 requests for one caption, n=1, guided, submitted together
        timings = {}
        for entries in (0, 64):
            scheduler = Scheduler(pipe, max_rows=64, prefix_cache_entries=entries)
            reqs = [ImageRequest(CAPTIONS[0], n=1, seed=s, sampling=SamplingConfig(filter_thres=0.9, cond_scale=3.0))
                    for s in range(16)]
            t0 = time.perf_counter()
            tickets = [scheduler.submit(r) for r in reqs]
            scheduler.run_until_idle()
            assert all(t.result(0).images.shape[0] == 1 for t in tickets)
            timings[entries] = time.perf_counter() - t0
        report(f"[T={text_seq_len}] 16 'more like this' requests: no prefix cache / prefix cache",
               f"{timings[0]:.2f} / {timings[64]:.2f} s", f"{timings[0] / timings[64]:.2f}x")


# -- main -------------------------------------------------------------------------------------------------


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="8x8 grid and fewer requests (smoke test)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads, here and in the server (default 1: with other processes on the cores, "
                             "2 OpenMP threads wait on each other; docs/serving.md)")
    parser.add_argument("--requests", type=int, default=None, help="requests per phase (default 32, quick 6)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    fmap = 8 if args.quick else 16
    count = args.requests or (6 if args.quick else 32)
    bench = _bench_generate()

    from dalle_pytorch.checkpoint import save
    from dalle_pytorch.pipeline.text_to_image import Pipeline
    from dalle_pytorch.text.factory import HugTokenizer

    tokenizer = HugTokenizer(ROOT / "dalle_pytorch" / "demo" / "tokenizer.json")
    print(f"torch {torch.__version__}, {args.threads} threads, {bench.cpu_name()}; model dim 256, depth 4, "
          f"{fmap}x{fmap} codes; {count} requests per phase; load average {os.getloadavg()[0]:.2f}", flush=True)
    rows = []

    def report(name, value, ratio=""):
        rows.append((name, value, ratio))
        print(f"{name:<78} {value:>22} {ratio:>8}", flush=True)

    bodies = requests_list(count)
    total_images = sum(b["n"] for b in bodies)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.safetensors"
        save(bench.build(fmap), path, tokenizer=tokenizer)

        # 1. one by one: each request through Pipeline.generate in this process, then alone through the
        # server (interleaved, so both see the same machine); 2. 4 and 16 concurrent clients
        pipe = Pipeline.from_checkpoint(path, device="cpu")
        from dalle_pytorch.generation.sampling import SamplingConfig

        def run_alone(body):
            sampling = SamplingConfig(filter_thres=body["top_k"], top_p=body.get("top_p"),
                                      temperature=body["temperature"], cond_scale=body.get("cond_scale", 1.0))
            return pipe.generate(body["prompt"], num_images=body["n"], seed=body["seed"], batch_size=4,
                                 sampling=sampling)

        port = free_port()
        server = start_server(path, port, args.threads, preview_every=16 if fmap == 16 else 8)
        url = f"http://127.0.0.1:{port}"
        lone = {}
        lost = 0
        try:
            run_alone(bodies[0])  # warm-up
            asyncio.run(run_clients(url, bodies[:2], 1, 60))
            baseline, results = 0.0, []
            for body in bodies:
                t0 = time.perf_counter()
                run_alone(body)
                baseline += time.perf_counter() - t0
                result, _ = asyncio.run(run_clients(url, [body], 1, 300))
                results.append(result[0])
            report("one by one through Pipeline.generate: images/s", f"{total_images / baseline:.2f}", "1.00x")
            phases = [(1, results, sum(r["latency"] for r in results))]
            for clients in (4, 16):
                budget = max(30.0, HARD_LIMIT_S - (time.perf_counter() - started) - 120)
                phases.append((clients, *asyncio.run(run_clients(url, bodies, clients, budget))))
            for clients, results, wall in phases:
                answered = [r for r in results if r is not None and not r.get("error")]
                complete = sum(1 for b, r in zip(bodies, results) if r and not r.get("error") and r["images"] == b["n"])
                lost += len(bodies) - complete
                lat = [r["latency"] for r in answered]
                ttfp = [r["first_preview"] for r in answered if r["first_preview"] is not None]
                images = sum(r["images"] for r in answered)
                name = "1 client (alone)" if clients == 1 else f"{clients} clients"
                report(f"{name}: images/s (vs one by one)", f"{images / wall:.2f}",
                       f"{images / wall / (total_images / baseline):.2f}x")
                report(f"{name}: latency p50 / p95 / p99",
                       " / ".join(f"{percentile(lat, q):.2f}" for q in (0.5, 0.95, 0.99)) + " s")
                report(f"{name}: time to first preview p50 / p99",
                       " / ".join(f"{percentile(ttfp, q):.2f}" for q in (0.5, 0.99)) + " s")
                if clients == 1:
                    lone = {i: r["latency"] for i, r in enumerate(results) if r and not r.get("error")}
                    lone_p99 = percentile(lat, 0.99)
                else:
                    ratios = [r["latency"] / lone[i] for i, r in enumerate(results) if r and not r.get("error") and i in lone]
                    report(f"{name}: p99 latency / p99 alone", f"{percentile(lat, 0.99) / lone_p99:.2f}x")
                    report(f"{name}: latency / the same request alone, p50 / p99",
                           " / ".join(f"{percentile(ratios, q):.2f}x" for q in (0.5, 0.99)))
                report(f"{name}: requests answered with all their images", f"{complete} of {len(bodies)}")
            report("load average after the load test", f"{os.getloadavg()[0]:.2f}")
            import httpx

            m = httpx.get(f"{url}/metrics").json()
            report("server: scalar steps / per-row steps", f"{m['scalar_steps']} / {m['row_steps']}")
            report("server: prefix cache hits / misses", f"{m['prefix_cache']['hits']} / {m['prefix_cache']['misses']}")
        finally:
            server.terminate()
            try:
                server.wait(60)
            except subprocess.TimeoutExpired:
                server.kill()
        report("requests lost (no answer, or fewer images than asked)", str(lost))

    # 3. the prefix cache
    prefix_cache_numbers(bench, fmap, tokenizer, report, lengths=(32,) if args.quick else (32, 256))
    print(f"load average at the end: {os.getloadavg()[0]:.2f}; {time.perf_counter() - started:.0f} s in all")
    return 1 if lost else 0


if __name__ == "__main__":
    sys.exit(main())
