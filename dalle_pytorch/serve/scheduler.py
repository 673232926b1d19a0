"""Continuous batching of image requests: one decode loop; requests join and leave between steps.

    scheduler = Scheduler(Pipeline.from_checkpoint("demo"), max_rows=64)
    scheduler.start()                                     # the loop runs in one background thread
    ticket = scheduler.submit(ImageRequest("a red circle on a blue background", n=4, seed=0))
    result = ticket.result(timeout=60)                    # images (n, c, H, W), seeds, settings, timings
    scheduler.shutdown(grace=10)

Pure Python + torch (no HTTP): the server (`app.py`) talks to it through `submit`, `cancel` and
each request's `on_event` callback, which the loop thread calls.  A request's own side (its
validation, its groups, each group's feed) is `groups.py`; this module is the loop.

A request of n images with batch size B is ceil(n / B) *groups*, group k sampled with its own
`torch.Generator().manual_seed(seed + k)` exactly as `generate.py` samples batch k: same rows, same
noise shapes, guidance combined per group.  Each loop iteration:
  1. cancellations and timeouts take their rows out;
  2. waiting groups are admitted while their rows fit (round robin over the waiting requests, so
     tabs share the server fairly): their caption is prefilled, or found in the prefix cache, and
     copied into free rows of the running batch;
  3. every running group samples its next codes from its own logits with its own generator;
  4. finished groups are decoded to pixels and leave; a request whose groups are all done is answered;
  5. one decode step for all remaining rows (`RunningBatch.step`).
Nothing waits for another request to finish.  A failure inside one request (its sampling, its
callback, its decoding) fails that request only; a failure of the shared step fails the requests in
the batch, never the loop.  Every accepted request ends with its images or an error.
"""
from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from itertools import count
from typing import Callable, Optional

import torch

from dalle_pytorch.generation.canvas import draw_canvas_code
from dalle_pytorch.generation.sampling import next_codes
from dalle_pytorch.generation.speculative import Window, sampling_distribution
from dalle_pytorch.pipeline.text_to_image import Pipeline, fresh_seed, generation_settings, preview_images
from dalle_pytorch.serve.batch import PrefixCache, RunningBatch, prefill
from dalle_pytorch.serve.groups import Group, split_groups, start_canvas, validate_request
from dalle_pytorch.serve.metrics import Latencies
from dalle_pytorch.serve.requests import (Event, ImageRequest, ImageResult, QueueFull, RequestFailed, ShuttingDown,
                                          Ticket)

__all__ = ["Event", "ImageRequest", "ImageResult", "QueueFull", "RequestFailed", "Scheduler", "ShuttingDown", "Ticket"]

log = logging.getLogger("dalle_pytorch.serve")

class Scheduler:
    """Continuous batching over one `Pipeline`.

    max_rows: capacity of the running batch in rows (guided images take two); max_queue: requests
    waiting to start before `submit` raises QueueFull; max_images: the largest n; timeout: default
    seconds a request may take from submission; prefix_cache_entries / prefix_cache_mb: bounds of
    the LRU of prefilled captions (0 entries: no prefix cache); max_canvas_codes: the most codes (H * W) of a
    canvas request (0: canvases refused); max_canvas_groups: canvas groups sampled at once.

    A canvas group (`generation.canvas`) does not take rows of the running batch: its window moves, so it
    keeps its own cache (`CanvasState`) and runs its own forward at each iteration, one code per iteration
    as every row; at most `max_canvas_groups` run at once (the others wait their turn).
    """

    def __init__(self, pipe: Pipeline, *, max_rows: int = 64, max_queue: int = 64, max_images: int = 16,
                 timeout: float = 300.0, prefix_cache_entries: int = 64, prefix_cache_mb: float = 256.0,
                 speculative: Optional[int] = None, max_canvas_codes: int = 0, max_canvas_groups: int = 1):
        if max_queue < 1 or max_images < 1:
            raise ValueError("max_queue and max_images must be >= 1")
        if speculative is not None and (isinstance(speculative, bool) or not isinstance(speculative, int)
                                        or speculative < 1):
            raise ValueError(f"speculative must be None or a window of at least 1 code, got {speculative!r}")
        self.pipe, self.model = pipe, pipe.model
        self.max_rows, self.max_queue, self.max_images, self.timeout = max_rows, max_queue, max_images, timeout
        self.max_canvas_codes, self.max_canvas_groups = max_canvas_codes, max_canvas_groups
        #: the speculative window of every row (0: one code per step)
        self.window = speculative if speculative is not None and speculative > 1 else 0
        self.batch = RunningBatch(self.model, max_rows, rewind=self.window)
        self.prefixes = PrefixCache(prefix_cache_entries, int(prefix_cache_mb * 2**20))
        self._running: list[Group] = []  # in the batch's sequence order (loop thread only)
        self._waiting: deque[Ticket] = deque()  # requests with groups not admitted yet
        self._live: dict[int, Ticket] = {}  # every accepted, unfinished request
        self._lock = threading.Condition()
        self._ids = count(1)
        self._accepting = True
        self._stop_at: Optional[float] = None
        self._thread: Optional[threading.Thread] = None
        self._rate = deque()  # (time, image codes sampled) of recent steps
        self._recent_totals = deque(maxlen=32)  # total_s of recent answers
        self.stats = dict(accepted=0, rejected=0, completed=0, failed=0, cancelled=0, timed_out=0,
                          images_served=0, steps=0)
        self.latencies = Latencies()  # time to first code, step time, queue wait (serve/metrics.py)

    # -- the caller's side (any thread) ----------------------------------------------------------

    def validate(self, request: ImageRequest) -> torch.Tensor:
        """The request's caption rows (u, T), or GenerationError with the one-line reason."""
        return validate_request(self.pipe, request, self.max_rows, self.max_images, self.max_canvas_codes)

    def submit(self, request: ImageRequest, on_event: Optional[Callable[[Event], None]] = None) -> Ticket:
        """Accept a request (GenerationError: invalid; QueueFull; ShuttingDown).  `on_event` is called
        from the loop thread with every `Event` of the request; it must be quick and not block."""
        text = self.validate(request)
        seed = fresh_seed() if request.seed is None else request.seed
        settings = dict(generation_settings(request.sampling, request.negative_prompt, request.batch_size,
                                            speculative=self.window or None,
                                            quantize=self.pipe.quantize), seed=seed)
        timeout = request.timeout if request.timeout is not None else self.timeout
        if request.canvas is not None:
            settings["canvas"] = list(request.canvas)  # as Pipeline.generate records it
        ticket = Ticket(next(self._ids), request, seed, text, settings, on_event, deadline=0.0)
        ticket.deadline = ticket.submitted + timeout
        for group in split_groups(ticket, self.model.image_seq_len, self.pipe.device):
            ticket.groups.append(group)
            ticket.pending.append(group)
        with self._lock:
            if not self._accepting:
                raise ShuttingDown("the server is shutting down")
            queued = self._queued()
            if queued >= self.max_queue:
                self.stats["rejected"] += 1
                raise QueueFull(f"the queue is full ({queued} requests waiting); retry later", self._retry_after())
            self._waiting.append(ticket)
            self._live[ticket.id] = ticket
            self.stats["accepted"] += 1
            self._lock.notify_all()
        return ticket

    def _queued(self) -> int:
        """Requests waiting to start beyond those the free rows take at the next step (called under the lock).

        Rows freed by requests that just finished are filled at the start of the next step; until then
        the requests that will take them are not "in the queue", so a client that resubmits as soon as
        its answer arrives is not refused while rows are free."""
        free = self.batch.free_rows
        canvases = self.max_canvas_groups - sum(g.canvas is not None for g in self._running)
        waiting = [t for t in self._waiting if t.started is None]
        admitted = 0
        for t in waiting:  # the order _admit takes them in (the head first)
            canvas = t.request.canvas is not None
            rows = 0 if canvas else t.pending[0].rows  # a canvas takes a canvas turn, not rows
            if rows > free or (canvas and canvases < 1):
                break
            free -= rows
            canvases -= canvas
            admitted += 1
        return len(waiting) - admitted

    def cancel(self, ticket: Ticket, reason: str = "cancelled") -> None:
        """Take the request's rows out at the next step; it ends with RequestFailed(kind='cancelled')."""
        with self._lock:
            if not ticket.closed and ticket.cancel_reason is None:
                ticket.cancel_reason = reason
                self._lock.notify_all()

    def metrics(self) -> dict:
        """Queue length, running requests and rows, tokens/s (image codes sampled per second over the
        last 5 s), images served, request counts and the prefix cache's counters."""
        with self._lock:
            queued = self._queued()
            live = len(self._live)
        now = time.perf_counter()
        recent = [(t, n) for t, n in list(self._rate) if now - t <= 5.0]
        span = now - recent[0][0] if recent else 0.0
        return {
            "queue_length": queued, "requests_in_flight": live, "batch_rows": self.batch.rows,
            "batch_capacity": self.max_rows, "tokens_per_s": sum(n for _, n in recent) / span if span > 0 else 0.0,
            **self.stats, "scalar_steps": self.batch.scalar_steps, "row_steps": self.batch.row_steps,
            "prefix_cache": {"entries": len(self.prefixes), "hits": self.prefixes.hits, "misses": self.prefixes.misses,
                             "evictions": self.prefixes.evictions, "mb": self.prefixes.nbytes / 2**20},
            "accepting": self._accepting,
        }

    def _retry_after(self) -> int:
        recent = list(self._recent_totals)
        return max(1, min(60, math.ceil(sum(recent) / len(recent)))) if recent else 1

    # -- lifecycle ----------------------------------------------------------------------------------

    def start(self) -> "Scheduler":
        """Run the loop in a background thread."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="dalle-scheduler", daemon=True)
            self._thread.start()
        return self

    def begin_shutdown(self, grace: float = 30.0) -> None:
        """Stop accepting now and give the accepted requests `grace` seconds, without waiting: at the end of the
        budget the loop fails the rest ('cancelled': a 503, or a stream's error event). One budget: a later
        call (`shutdown`) keeps the earlier deadline."""
        with self._lock:
            self._accepting = False
            deadline = time.perf_counter() + grace
            self._stop_at = deadline if self._stop_at is None else min(self._stop_at, deadline)
            self._lock.notify_all()

    def shutdown(self, grace: float = 30.0) -> None:
        """Stop accepting; let the accepted requests finish for up to `grace` seconds (what is left of the budget
        `begin_shutdown` started, if it ran), then fail the rest with 'the server is shutting down'.  Every
        accepted request gets its answer."""
        self.begin_shutdown(grace)
        if self._thread is not None:
            self._thread.join(max(0.0, self._stop_at - time.perf_counter()) + 30.0)
            self._thread = None
        else:
            self.run_until_idle(deadline=self._stop_at)
        self._fail_everything("the server is shutting down", "cancelled")

    def __enter__(self) -> "Scheduler":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.shutdown()

    def _has_work(self) -> bool:
        return bool(self._waiting or self._running)

    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._has_work() and self._accepting:
                    self._lock.wait(0.5)
                if not self._accepting and (not self._has_work() or time.perf_counter() >= self._stop_at):
                    break
            try:
                self.step()
            except Exception:  # the loop survives anything: the step already failed whom it could
                log.exception("scheduler step failed")
                self._fail_running("internal error in the decode loop")
        self._fail_everything("the server is shutting down", "cancelled")

    def run_until_idle(self, deadline: Optional[float] = None) -> None:
        """Run steps in the calling thread until no work is left (tests, or without `start`)."""
        while self._has_work() and (deadline is None or time.perf_counter() < deadline):
            self.step()

    # -- the loop (one thread) ---------------------------------------------------------------------

    @torch.inference_mode()
    def step(self) -> bool:
        """One iteration (see the module docstring).  Returns whether any row ran."""
        t0 = time.perf_counter()  # an iteration with rows: the time between two codes of a row
        self._reap()
        self._admit()
        self._send_queue_positions()
        if not self._running:
            return False
        self._sample()
        self._finish()
        batched = [g for g in self._running if g.canvas is None]
        if batched:
            try:
                logits = self._step_window() if self.window else self.batch.step([g.feed() for g in batched])
            except Exception as e:  # shared by every row: fail the requests in the batch, keep the loop
                log.exception("decode step failed")
                self._fail_running(f"the decode step failed: {e}")
                return True
            for g, out in zip(batched, logits):
                g.last = out
                g.passes += 1
        self._step_canvases()
        if self._running:
            self.latencies.observe("step_seconds", time.perf_counter() - t0)
        self.stats["steps"] += 1
        return True

    def _step_canvases(self) -> None:
        """Each running canvas group's forward for its next code (its own window cache); a failure fails its request."""
        for g in [g for g in self._running if g.canvas is not None]:
            try:
                g.last = g.canvas.logits()
                g.passes += 1
            except Exception as e:
                log.exception("canvas step of request %d failed", g.ticket.id)
                self._fail(g.ticket, f"the canvas step failed: {e}")

    def _step_window(self) -> list[torch.Tensor]:
        """One speculative step for every running group: each feeds its window at its rows' own starts."""
        fed = [g.feed_window(self.model.text_len) for g in self._running if g.canvas is None]
        return self.batch.step_window([tokens for tokens, _ in fed], [starts for _, starts in fed])

    def _draw(self, g: Group) -> None:
        """The group's next codes from its last logits: one code per row, or a speculative window's accepted
        codes (its own generator and stream of random numbers, whatever else runs)."""
        t = g.ticket
        if g.canvas is not None:  # a canvas: one code per iteration (generation.canvas's draw)
            draw_canvas_code(g.canvas, g.last, t.request.sampling, g.generator)
            g.filled = g.canvas.filled
            return
        if not self.window:
            if g.keep_forced():  # a variation's kept code: nothing drawn, as generate_codes' masked completion
                return
            # the decode loop's own draw: guidance combined, the top-k fraction over the whole vocabulary
            # the schedule's scale at this position; the null rows stay in the batch (scale 1 outside an interval)
            scale = t.request.sampling.scale_at(g.filled, self.model.image_seq_len)
            g.codes[:, g.filled] = next_codes(g.last, t.request.sampling, g.generator, rows=g.m,
                                              vocab_size=self.model.total_tokens, cond_scale=scale)
            g.filled += 1
            return
        probs = sampling_distribution(self.model, t.request.sampling, g.m, t.guided)
        if g.window is None:
            g.window = Window(g.codes, g.filled, window=self.window, v=self.model.num_image_tokens,
                              fmap_size=self.model.fmap_size, generator=g.generator, known=g.known, keep=g.keep)
            g.window.first(probs(g.last, torch.full((g.m,), g.filled, dtype=torch.long, device=g.codes.device)))
        else:
            g.window.accept(probs(g.last, g.window.fed_positions()))
        g.filled = g.window.filled

    def _reap(self) -> None:
        now = time.perf_counter()
        with self._lock:
            tickets = list(self._live.values())
        for t in tickets:
            if t.cancel_reason is not None:
                self._fail(t, t.cancel_reason, "cancelled")
            elif now > t.deadline:
                self._fail(t, f"timed out after {t.deadline - t.submitted:g} s", "timed_out")

    def _admit(self) -> None:
        while True:
            with self._lock:
                if not self._waiting:
                    return
                ticket = self._waiting[0]
                group = ticket.pending[0]
                if ticket.request.canvas is not None:
                    if sum(g.canvas is not None for g in self._running) >= self.max_canvas_groups:
                        return  # the head waits for a canvas's turn
                elif group.rows > self.batch.free_rows:
                    return  # the head waits for room: no request is overtaken forever
                ticket.pending.popleft()
                self._waiting.popleft()
                if ticket.pending:
                    self._waiting.append(ticket)  # round robin: the next request's group goes next
            try:
                self._join(group)
            except Exception as e:
                log.exception("admitting request %d failed", ticket.id)
                self._fail(ticket, f"prefill failed: {e}")

    def _join(self, group: Group) -> None:
        ticket = group.ticket
        if ticket.request.canvas is not None:
            start_canvas(group, self.model, ticket.text, self.batch.cache.linears)
            self._started(group)
            return
        prime = group.codes[:1, : group.filled].expand(ticket.text.shape[0], -1)  # a variation's kept first codes
        key = (tuple(tuple(row) for row in ticket.text.tolist()), tuple(prime[0].tolist()))
        prefix = self.prefixes.get(key)
        if prefix is None:
            prefix = prefill(self.model, ticket.text, prime if group.filled else None)
            self.prefixes.put(key, prefix)
        index = torch.zeros(group.m, dtype=torch.long)
        if ticket.guided:
            index = torch.cat((index, torch.ones(group.m, dtype=torch.long)))
        group.seq, group.last = self.batch.join(prefix, index, owner=group)
        self._started(group)

    def _started(self, group: Group) -> None:
        ticket = group.ticket
        self._running.append(group)
        if ticket.started is None:
            ticket.started = time.perf_counter()
            self.latencies.observe("queue_wait_seconds", ticket.started - ticket.submitted)
            self._emit(ticket, "started", queued_s=ticket.started - ticket.submitted)

    def _send_queue_positions(self) -> None:
        with self._lock:
            waiting = [t for t in self._waiting if t.started is None]
        for position, t in enumerate(waiting, 1):
            if t.position != position:
                t.position = position
                self._emit(t, "queued", position=position)

    def _sample(self) -> None:
        sampled = 0
        for g in list(self._running):
            t, total = g.ticket, g.total
            if t.closed:
                continue
            try:
                before = g.filled
                self._draw(g)
                sampled += (g.filled - before) * g.m
                if t.first_code is None and g.filled > before:
                    t.first_code = time.perf_counter()
                    self.latencies.observe("time_to_first_code_seconds", t.first_code - t.submitted)
                every = t.request.preview_every
                if every and g.filled // every > before // every and g.filled < total:
                    self._emit(t, "preview", group=g.index, first_image=g.index * t.request.batch_size,
                               filled=g.filled, total=total,
                               images=preview_images(self.model.vae, g.codes, g.filled, g.grid))
                done = sum(x.filled for x in t.groups)
                percent = 100 * done // (len(t.groups) * total)
                if percent != t.percent:
                    t.percent = percent
                    self._emit(t, "progress", done=done, total=len(t.groups) * total)
            except Exception as e:
                log.exception("sampling request %d failed", t.id)
                self._fail(t, f"sampling failed: {e}")
        self._rate.append((time.perf_counter(), sampled))
        while len(self._rate) > 4096:
            self._rate.popleft()

    def _finish(self) -> None:
        gone = [g for g in self._running if g.ticket.closed or g.filled == g.total]
        if not gone:
            return
        self._leave(gone)
        self._running = [g for g in self._running if g not in gone]
        for g in gone:
            t = g.ticket
            if t.closed:
                continue
            try:
                vae = self.model.vae  # as generate_images decodes (a canvas as one image)
                pixels = vae.decode(g.codes) if g.canvas is None else vae.decode_grid(g.codes.view(g.m, *g.grid))
                g.images = pixels.clamp(0.0, 1.0).float().cpu()
                g.canvas = None  # its caches go now
                if all(x.images is not None for x in t.groups):
                    self._complete(t)
                elif t.request.preview_every:  # the group's final images, while the request's other groups run
                    self._emit(t, "preview", group=g.index, first_image=g.index * t.request.batch_size,
                               filled=g.total, total=g.total, images=g.images)
            except Exception as e:
                log.exception("finishing request %d failed", t.id)
                self._fail(t, f"decoding the images failed: {e}")

    def _complete(self, t: Ticket) -> None:
        now = time.perf_counter()
        timings = {"queued_s": t.started - t.submitted, "run_s": now - t.started, "total_s": now - t.submitted}
        if self.window:  # what speculative decoding saved: the forward passes of each group (plain: codes - 1)
            timings["forward_passes"] = [g.passes for g in t.groups]
        result = ImageResult(images=torch.cat([g.images for g in t.groups]),
                             seeds=[g.seed for g in t.groups for _ in range(g.m)], settings=t.settings,
                             timings=timings, codes=torch.cat([g.codes for g in t.groups]).cpu())
        self._close(t)
        self.stats["completed"] += 1
        self.stats["images_served"] += t.request.n
        self._recent_totals.append(timings["total_s"])
        self._emit(t, "done", result=result)
        t.future.set_result(result)

    # -- failures ------------------------------------------------------------------------------------

    def _close(self, t: Ticket) -> None:
        with self._lock:
            t.closed = True
            self._live.pop(t.id, None)
            if t in self._waiting:
                self._waiting.remove(t)
        t.pending.clear()

    def _fail(self, t: Ticket, message: str, kind: str = "failed") -> None:
        """End a request with an error (its rows leave at the next `_finish`); idempotent."""
        if t.closed:
            return
        self._close(t)
        self.stats[kind] += 1
        self._emit(t, "error", message=message, kind=kind)
        t.future.set_exception(RequestFailed(message, kind))

    def _leave(self, groups: list) -> None:
        """The groups' rows leave the running batch (a canvas group holds none)."""
        self.batch.leave([g.seq for g in groups if g.seq is not None])

    def _fail_running(self, message: str) -> None:
        for g in self._running:
            self._fail(g.ticket, message)
        self._leave(self._running)
        self._running = []

    def _fail_everything(self, message: str, kind: str) -> None:
        with self._lock:
            tickets = list(self._live.values())
        for t in tickets:
            self._fail(t, message, kind)
        if self._running:
            self._leave(self._running)
            self._running = []

    def _emit(self, t: Ticket, event: str, **data) -> None:
        if t.on_event is None:
            return
        try:
            t.on_event(Event(event, data))
        except Exception as e:  # a broken consumer fails its own request only
            log.exception("event handler of request %d failed", t.id)
            if event != "error":
                self._fail(t, f"event handler failed: {e}")
