"""Open-loop load on the image server, as vLLM's serving benchmark runs it: requests arrive as a Poisson
process at fixed rates, whatever the server's state, for a bounded time; loopback only.

    python benchmarks/serve_poisson.py                         # the demo model, rates 2,4,8,16 /s, 20 s each
    python benchmarks/serve_poisson.py --rates 1,2 --seconds 10 --target_p99 2

Each request: POST /v1/images/stream, one image of a caption from a fixed list, a fresh seed. Reported per
rate: requests sent, answered (200 with its image), refused (429), failed (other); images/s answered;
time to first code (submission to the first `progress` event) and latency (to `done`), p50 / p99; goodput:
the answered requests per second whose latency met --target_p99; and the server's own /metrics latencies.
The server runs as `python -m dalle_pytorch.serve` in a subprocess; docs/serving.md records a run.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.generate import cpu_name  # noqa: E402
from benchmarks.serve import CAPTIONS, free_port, launch_server, percentile  # noqa: E402


async def one(client, url: str, caption: str) -> dict:
    t0 = time.perf_counter()
    first = None
    status = None
    try:
        async with client.stream("POST", url + "/v1/images/stream", json={"prompt": caption, "n": 1}) as r:
            status = r.status_code
            if status != 200:
                await r.aread()
                return {"status": status}
            async for line in r.aiter_lines():
                if line.startswith("event: progress") and first is None:
                    first = time.perf_counter() - t0
                elif line.startswith("event: done"):
                    return {"status": 200, "ttfc": first if first is not None else time.perf_counter() - t0,
                            "latency": time.perf_counter() - t0}
                elif line.startswith("event: error"):
                    return {"status": "error"}
    except Exception as e:  # a failed connection is a failure of the run, counted
        return {"status": f"{type(e).__name__}"}
    return {"status": status or "cut"}


async def run_rate(url: str, rate: float, seconds: float, seed: int) -> tuple[list[dict], float]:
    import httpx

    rng = random.Random(seed)
    tasks = []
    async with httpx.AsyncClient(timeout=120) as client:
        start = time.perf_counter()
        t = 0.0
        while True:
            t += rng.expovariate(rate)
            if t > seconds:
                break
            await asyncio.sleep(max(0.0, start + t - time.perf_counter()))
            tasks.append(asyncio.create_task(one(client, url, rng.choice(CAPTIONS))))
        results = await asyncio.gather(*tasks)
        return results, time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dalle_path", default="demo")
    p.add_argument("--rates", default="2,4,8,16", help="arrivals per second, one phase each")
    p.add_argument("--seconds", type=float, default=20.0, help="arrival window of each phase")
    p.add_argument("--target_p99", type=float, default=2.0, help="latency target of the goodput: answers within it count, seconds")
    p.add_argument("--max_rows", type=int, default=32)
    p.add_argument("--max_queue", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    import httpx

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = launch_server(port, "--dalle_path", args.dalle_path, "--threads", str(args.threads),
                         "--max_rows", str(args.max_rows), "--max_queue", str(args.max_queue))
    try:
        print(f"{cpu_name()}, server --threads {args.threads} --max_rows {args.max_rows} --max_queue {args.max_queue}, "
              f"{args.dalle_path}; load average {os.getloadavg()[0]:.2f}; {args.seconds:g} s of arrivals per rate", flush=True)
        print(f"| rate (/s) | sent | 200 | 429 | other | images/s | TTFC p50 / p99 | latency p50 / p99 | "
              f"goodput (latency <= {args.target_p99:g} s) | server TTFC p50 / p99 | server step p50 / p99 |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        for i, rate in enumerate(float(r) for r in args.rates.split(",")):
            results, wall = asyncio.run(run_rate(url, rate, args.seconds, seed=i))
            ok = [r for r in results if r["status"] == 200]
            refused = sum(r["status"] == 429 for r in results)
            ttfc, lat = [r["ttfc"] for r in ok], [r["latency"] for r in ok]
            good = sum(x <= args.target_p99 for x in lat)
            m = httpx.get(url + "/metrics", timeout=10).json()["latency"]
            st, ss = m["time_to_first_code_seconds"], m["step_seconds"]
            print(f"| {rate:g} | {len(results)} | {len(ok)} | {refused} | {len(results) - len(ok) - refused} | "
                  f"{len(ok) / wall:.2f} | {percentile(ttfc, 0.5):.3f} / {percentile(ttfc, 0.99):.3f} s | "
                  f"{percentile(lat, 0.5):.3f} / {percentile(lat, 0.99):.3f} s | {good / wall:.2f} /s | "
                  f"{st['p50']:.3f} / {st['p99']:.3f} s | {ss['p50'] * 1e3:.1f} / {ss['p99'] * 1e3:.1f} ms |", flush=True)
    finally:
        proc.terminate()
        proc.wait(60)


if __name__ == "__main__":
    main()
