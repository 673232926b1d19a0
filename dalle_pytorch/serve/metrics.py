"""The server's latency measurements and its metrics in Prometheus' text format (`GET /metrics` for a scraper).

`Latencies` keeps the last 4096 samples of each of: time to first code (submission to the request's first
sampled image code), step time (the time between two codes of a running row: one batched decode step, or
one speculative window), and queue wait (submission to admission); `quantiles` gives p50 / p99 of each.
`prometheus_text` writes the scheduler's `metrics()` and those as gauges, counters and summaries
(`dalle_*` names; seconds for times).
"""
from __future__ import annotations

import threading
from collections import deque
from typing import Iterable

__all__ = ["LATENCIES", "Latencies", "prometheus_text"]

#: what `Latencies` measures, with its help text
LATENCIES = {
    "time_to_first_code_seconds": "from submission to the request's first sampled image code",
    "step_seconds": "between two codes of a running row (one batched decode step or speculative window)",
    "queue_wait_seconds": "from submission to admission into the running batch",
}


def _quantile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, max(0, round(q * (len(values) - 1))))] if values else 0.0


class Latencies:
    """Recent samples of each measurement of `LATENCIES` (thread-safe: the loop writes, HTTP reads)."""

    def __init__(self, keep: int = 4096) -> None:
        self._samples = {name: deque(maxlen=keep) for name in LATENCIES}
        self._counts = {name: 0 for name in LATENCIES}
        self._sums = {name: 0.0 for name in LATENCIES}
        self._lock = threading.Lock()

    def observe(self, name: str, seconds: float) -> None:
        with self._lock:
            self._samples[name].append(seconds)
            self._counts[name] += 1
            self._sums[name] += seconds

    def quantiles(self) -> dict:
        """{name: {"p50", "p99", "count", "sum"}} over the recent samples (count and sum: all of them)."""
        with self._lock:
            samples = {k: list(v) for k, v in self._samples.items()}
            counts, sums = dict(self._counts), dict(self._sums)
        return {k: {"p50": _quantile(v, 0.5), "p99": _quantile(v, 0.99), "count": counts[k], "sum": sums[k]}
                for k, v in samples.items()}


def _lines(name: str, kind: str, help_text: str, samples: Iterable[tuple[str, float]]) -> list[str]:
    out = [f"# HELP dalle_{name} {help_text}", f"# TYPE dalle_{name} {kind}"]
    out += [f"dalle_{name}{labels} {value:.9g}" for labels, value in samples]
    return out


def prometheus_text(metrics: dict, latencies: dict, uptime_s: float) -> str:
    """Prometheus' text exposition (version 0.0.4) of the scheduler's `metrics()` and `Latencies.quantiles()`."""
    out: list[str] = []
    gauges = {"queue_length": "requests waiting beyond the free rows", "requests_in_flight": "accepted, unfinished",
              "batch_rows": "rows in the running batch", "batch_capacity": "rows the running batch holds",
              "tokens_per_second": "image codes sampled per second, last 5 s", "uptime_seconds": "since start",
              "accepting": "1 while requests are accepted, 0 while shutting down"}
    values = {"queue_length": metrics["queue_length"], "requests_in_flight": metrics["requests_in_flight"],
              "batch_rows": metrics["batch_rows"], "batch_capacity": metrics["batch_capacity"],
              "tokens_per_second": metrics["tokens_per_s"], "uptime_seconds": uptime_s,
              "accepting": 1.0 if metrics["accepting"] else 0.0}
    for name, help_text in gauges.items():
        out += _lines(name, "gauge", help_text, [("", float(values[name]))])
    outcomes = ("completed", "rejected", "failed", "cancelled", "timed_out")
    out += _lines("requests_total", "counter", "answered requests by outcome (rejected: 429, a full queue)",
                  [(f'{{outcome="{k}"}}', float(metrics[k])) for k in outcomes])
    out += _lines("requests_accepted_total", "counter", "requests accepted", [("", float(metrics["accepted"]))])
    out += _lines("images_served_total", "counter", "images answered", [("", float(metrics["images_served"]))])
    out += _lines("decode_steps_total", "counter", "decode steps run", [("", float(metrics["steps"]))])
    cache = metrics["prefix_cache"]
    out += _lines("prefix_cache_total", "counter", "prefix cache lookups and evictions",
                  [(f'{{event="{k}"}}', float(cache[k])) for k in ("hits", "misses", "evictions")])
    for name, help_text in LATENCIES.items():
        q = latencies[name]
        out += _lines(name, "summary", help_text, [('{quantile="0.5"}', q["p50"]), ('{quantile="0.99"}', q["p99"]),
                                                   ("_sum", q["sum"]), ("_count", float(q["count"]))])
    return "\n".join(out) + "\n"
