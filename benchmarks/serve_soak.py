"""A bounded soak of the image server: mixed traffic for a fixed time, then checks that it is back to idle.

    python benchmarks/serve_soak.py                  # 10 minutes (the issue's soak)
    python benchmarks/serve_soak.py --seconds 120    # shorter

Clients (loopback, `--clients` of them in turn): normal requests (JSON and streamed, n 1-2, some guided),
clients that disconnect mid-stream, invalid input (422), oversized bodies (413), unknown fields, slow readers
(a stream read one line every 0.2 s) and OpenAI-endpoint calls. Reported: requests by kind and status, any 5xx,
the server's RSS (VmRSS) at start, peak and end, and /metrics at the end (queue, rows and requests in flight
must be 0). Exit status 1 when a 5xx was seen or the server did not return to idle. docs/serving.md records a run.
"""
from __future__ import annotations

import argparse
import asyncio
import collections
import json
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.generate import cpu_name  # noqa: E402
from benchmarks.serve import CAPTIONS, free_port, launch_server  # noqa: E402


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


async def client_loop(client, url: str, until: float, rng: random.Random, counts: collections.Counter) -> None:
    kinds = ["json", "json", "stream", "stream", "disconnect", "invalid", "oversized", "unknown", "slow", "openai"]
    while time.monotonic() < until:
        kind = rng.choice(kinds)
        caption = rng.choice(CAPTIONS)
        body = {"prompt": caption, "n": rng.choice((1, 2)), "cond_scale": rng.choice((1.0, 3.0))}
        try:
            if kind == "json":
                status = (await client.post(url + "/v1/images", json=body)).status_code
            elif kind == "invalid":
                status = (await client.post(url + "/v1/images", json={**body, "temperature": -1})).status_code
            elif kind == "unknown":
                status = (await client.post(url + "/v1/images", json={**body, "colour": "red"})).status_code
            elif kind == "oversized":
                status = (await client.post(url + "/v1/images", json={"prompt": "a" * 200_000})).status_code
            elif kind == "openai":
                status = (await client.post(url + "/v1/images/generations", json={"prompt": caption})).status_code
            else:
                async with client.stream("POST", url + "/v1/images/stream", json=body) as r:
                    status = r.status_code
                    async for line in r.aiter_lines():
                        if kind == "disconnect" and line.startswith("event:"):
                            break  # closes the connection: the server cancels the rows
                        if kind == "slow":
                            await asyncio.sleep(0.2)
        except Exception as e:  # noqa: BLE001 - counted, the soak goes on
            status = type(e).__name__
        counts[(kind, status)] += 1


async def soak(url: str, seconds: float, clients: int, pid: int, seed: int):
    import httpx

    counts: collections.Counter = collections.Counter()
    peak = rss_mb(pid)
    t0 = time.monotonic()
    until, marks = t0 + seconds, []  # RSS at each tenth of the run (a trend, not only its ends)
    async with httpx.AsyncClient(timeout=120) as client:
        tasks = [asyncio.create_task(client_loop(client, url, until, random.Random(seed + i), counts))
                 for i in range(clients)]
        while not all(t.done() for t in tasks):
            rss = rss_mb(pid)
            peak = max(peak, rss)
            if len(marks) <= 10 and time.monotonic() - t0 >= len(marks) * seconds / 10:  # 0/10 .. 10/10
                marks.append(round(rss))
            await asyncio.sleep(0.5)
    return counts, peak, marks


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dalle_path", default="demo")
    p.add_argument("--seconds", type=float, default=600.0)
    p.add_argument("--clients", type=int, default=12)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    import httpx

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = launch_server(port, "--dalle_path", args.dalle_path, "--threads", str(args.threads),
                         "--max_rows", "32", "--max_queue", "16")
    try:
        httpx.post(url + "/v1/images", json={"prompt": CAPTIONS[0], "n": 1}, timeout=120)  # warm
        start_rss = rss_mb(proc.pid)
        counts, peak, marks = asyncio.run(soak(url, args.seconds, args.clients, proc.pid, seed=0))
        time.sleep(2.0)  # cancelled rows leave at the next step
        m = httpx.get(url + "/metrics", timeout=10).json()
        end_rss = rss_mb(proc.pid)
    finally:
        proc.terminate()
        proc.wait(60)
    five = {k: v for k, v in counts.items() if isinstance(k[1], int) and k[1] >= 500 or not isinstance(k[1], int)}
    idle = m["queue_length"] == 0 and m["batch_rows"] == 0 and m["requests_in_flight"] == 0
    print(f"{cpu_name()}; {args.seconds:g} s, {args.clients} clients, {sum(counts.values())} requests")
    print("| kind | status | requests |")
    print("| --- | --- | --- |")
    for (kind, status), n in sorted(counts.items(), key=lambda kv: (kv[0][0], str(kv[0][1]))):
        print(f"| {kind} | {status} | {n} |")
    print(f"server RSS: {start_rss:.0f} MB at start, {peak:.0f} MB peak, {end_rss:.0f} MB at the end; at the end "
          f"queue_length {m['queue_length']}, batch_rows {m['batch_rows']}, requests_in_flight "
          f"{m['requests_in_flight']}; 5xx / errors: {sum(five.values())} {dict(five) if five else ''}")
    print(f"RSS (MB) at each tenth of the run: {marks}")
    print(json.dumps({k: m[k] for k in ("completed", "rejected", "cancelled", "failed", "timed_out", "images_served")}))
    return 0 if idle and not five else 1


if __name__ == "__main__":
    sys.exit(main())
