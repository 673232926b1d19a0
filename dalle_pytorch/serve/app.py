"""The HTTP API over one `Scheduler`: FastAPI (the `[serve]` extra), OpenAPI docs at /docs.

    app = create_app(lambda: Pipeline.from_checkpoint("demo"))   # the model loads once, in the lifespan
    uvicorn.run(app, host="127.0.0.1", port=8000)                  # or: python -m dalle_pytorch.serve

Endpoints (docs/serving.md has examples):
    POST /v1/images         JSON request -> {"images": [{"png": base64, "seed": int, "codes": [int]}, ...],
                            settings, timings}; with "variation_of": {"codes", "strength", "mode"} the
                            variations of an earlier answer's image (its codes kept, no re-encoding)
    POST /v1/images/stream  the same request -> server-sent events: queued, started, progress,
                            preview, done (the POST answer), error
    POST /v1/images/generations  OpenAI's image endpoint (serve/openai_api.py), for its clients
    GET  /health, GET /metrics, GET /v1/config (limits and defaults), GET / (the page), /static/*
Invalid input: 422 with a one-line `detail`; a full queue: 429 with Retry-After; shutting down:
503; a request past its timeout: 504.  A client that disconnects cancels its request's rows.
"""
from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import shlex
import time
from contextlib import asynccontextmanager
from importlib import resources
from typing import Any, Callable, Optional, Union

try:
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse
    from fastapi.staticfiles import StaticFiles
    from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
    from starlette.concurrency import run_in_threadpool
    from starlette.middleware.trustedhost import TrustedHostMiddleware
except ImportError as e:  # pragma: no cover - depends on the installed extras
    raise ImportError("the server needs FastAPI and uvicorn: pip install fastapi uvicorn (the serve extra of this package)") from e

import torch

from dalle_pytorch.errors import GenerationError, setting_names
from dalle_pytorch.formats.images import png_text, tensor_to_pil
from dalle_pytorch.pipeline.text_to_image import Pipeline
from dalle_pytorch.serve.limits import (DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_PROMPT_CHARS, DEFAULT_SEND_TIMEOUT, ApiKey,
                                       BodyLimit, timed_stream)
from dalle_pytorch.serve.metrics import prometheus_text
from dalle_pytorch.serve.openai_api import OPENAI_PATH, add_openai_routes, openai_error
from dalle_pytorch.serve.requests import Refusal, Variation
from dalle_pytorch.serve.scheduler import (Event, ImageRequest, ImageResult, QueueFull, RequestFailed, Scheduler,
                                           ShuttingDown, Ticket)

__all__ = ["ImagesRequest", "ImagesResponse", "create_app"]

STATIC = resources.files("dalle_pytorch.serve").joinpath("static")
STATUS = {"timed_out": 504, "cancelled": 503, "failed": 500}  # RequestFailed.kind -> HTTP status
#: the request fields of library settings named otherwise (`errors.setting`: the library's messages say these)
HTTP_FIELDS = {"filter_thres": "top_k", "num_images": "n"}


class VariationOf(BaseModel):
    """Variations of an earlier image: its codes as an answer gave them (no re-encoding)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    codes: list[int] = Field(description="the image's codes (image_seq_len integers), from an answer's `codes`")
    strength: float = Field(0.5, description="the share of the codes resampled, in [0, 1] (0: the image itself, "
                                             "1: free sampling)")
    mode: str = Field("suffix", description='"suffix": the last codes in raster order (the bottom-right share; '
                                            'each new code sees every kept one), or "random" positions drawn '
                                            "from the seed")


class ImagesRequest(BaseModel):
    """A caption and its sampling settings (generate.py's flags of the same names)."""

    # strict: a field takes its JSON type only (n: true or "4" is refused, not read as 1 or 4; an integer
    # is still a number for the float fields)
    model_config = ConfigDict(extra="forbid", strict=True)

    prompt: str = Field(description="the caption", examples=["a red circle on a blue background"])
    n: int = Field(4, description="number of images")
    seed: Optional[int] = Field(None, description="batch k of the images uses seed + k; omitted: a fresh seed")
    cond_scale: float = Field(1.0, description="classifier-free guidance scale (1 = none)")
    cond_schedule: str = Field("constant", description='the guidance scale by code position: "constant", '
                                                       '"interval:A:B" (guided for A*I <= t < B*I only) or "linear" '
                                                       '(1 at the first code to cond_scale at the last)')
    top_k: float = Field(0.9, description="filter_thres, as generate.py --top_k and DALLE-pytorch: keep the top "
                                          "(1 - top_k) fraction of the model's whole vocabulary (at most every code)")
    top_p: Optional[float] = Field(None, description="nucleus sampling threshold in (0, 1]; omitted: off")
    temperature: float = Field(1.0, description="sampling temperature, > 0")
    negative_prompt: Optional[str] = Field(None, description="the caption guidance steers away from")
    batch_size: int = Field(4, description="images per generator, as generate.py's --batch_size")
    variation_of: Optional[VariationOf] = Field(None, description="variations of an earlier image's codes, for "
                                                                  "`prompt` (which may then be empty)")
    canvas: Optional[list[int]] = Field(None, description="[H, W] codes: a canvas larger than the trained grid, each "
                                                          "code sampled with the trained-size window around it "
                                                          "(generate.py --canvas HxW); at most the server's "
                                                          "max_canvas_codes")

    @field_validator("prompt", "negative_prompt")
    @classmethod
    def _unicode_text(cls, value: Optional[str]) -> Optional[str]:
        # JSON may escape a lone surrogate ("\ud800"), which is no Unicode text: refuse it here (a 422),
        # not in the tokenizer (a 500)
        if value is not None:
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise ValueError("must be Unicode text; it holds a lone surrogate (an unpaired \\ud800-\\udfff escape)") from None
        return value


class ImageOut(BaseModel):
    png: str = Field(description="base64 PNG with caption, seed and settings text chunks, as generate.py writes")
    seed: int = Field(description="the seed of the image's batch (generate.py --seed, with the same --batch_size)")
    codes: list[int] = Field(description="the image's codes in raster order (image_seq_len integers): what a "
                                         "variation request posts back as variation_of.codes")


class ImagesResponse(BaseModel):
    images: list[ImageOut]
    prompt: str
    settings: dict[str, Any]
    timings: dict[str, Any] = Field(description="queued_s, run_s, total_s; with --speculative, forward_passes "
                                                "(the cached forward passes of each batch of images)")
    reproduce: str = Field(description="the generate.py command line that samples the same images")


# -- helpers -----------------------------------------------------------------------------------------


def png_base64(image: torch.Tensor, caption: Optional[str] = None, seed: Optional[int] = None,
               settings: Optional[dict] = None) -> str:
    """(c, H, W) pixels in [0, 1] -> base64 PNG; with a caption, the text chunks generate.py writes."""
    buf = io.BytesIO()
    info = png_text(caption, seed, settings) if caption is not None else None
    tensor_to_pil(image).save(buf, format="PNG", pnginfo=info)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _error(status: int, detail: str, headers: Optional[dict] = None) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status, headers=headers)


def _refused(refusal: Refusal) -> JSONResponse:
    return _error(refusal.status, refusal.detail, refusal.headers)


def _reproduce(body: ImagesRequest, result: ImageResult, dalle_path: str) -> str:
    s = result.settings
    args = ["python", "generate.py", "--dalle_path", dalle_path, "--text", body.prompt, "--seed", str(s["seed"]),
            "--num_images", str(body.n), "--batch_size", str(s["batch_size"]), "--top_k", str(s["filter_thres"]),
            "--temperature", str(s["temperature"])]
    if s["top_p"] is not None:
        args += ["--top_p", str(s["top_p"])]
    if s["cond_scale"] != 1.0:
        args += ["--cond_scale", str(s["cond_scale"])]
    if s.get("cond_schedule", "constant") != "constant":
        args += ["--cond_schedule", s["cond_schedule"]]
    if s["null_text"] is not None:
        args += ["--negative_prompt", s["null_text"]]
    if s.get("speculative"):
        args += ["--speculative", str(s["speculative"])]
    if s.get("quantize"):
        args += ["--quantize", s["quantize"]]
    if body.canvas is not None:
        args += ["--canvas", "x".join(map(str, body.canvas))]
    if body.variation_of is not None:  # the codes themselves: generate.py keeps them exactly, as the server did
        v = s["variation"]
        args += ["--variations_of", "codes:" + ",".join(map(str, body.variation_of.codes)), "--strength",
                 str(v["strength"]), "--variation_mode", v["mode"]]
    return shlex.join(args)


def _variation(body: ImagesRequest) -> Optional[Variation]:
    v = body.variation_of
    return None if v is None else Variation(tuple(v.codes), v.strength, v.mode)


# -- the app ------------------------------------------------------------------------------------------


def create_app(pipe: Union[Pipeline, Callable[[], Pipeline]], *, max_rows: int = 64, max_queue: int = 64,
               max_images: int = 16, timeout: float = 300.0, preview_every: int = 8, prefix_cache_entries: int = 64,
               shutdown_grace: float = 30.0, dalle_path: str = "demo",
               checkpoint_sha256: Optional[str] = None, speculative: Optional[int] = None,
               max_body_bytes: int = DEFAULT_MAX_BODY_BYTES, max_prompt_chars: int = DEFAULT_MAX_PROMPT_CHARS,
               api_key: Optional[str] = None, allowed_hosts: Optional[list[str]] = None,
               send_timeout: float = DEFAULT_SEND_TIMEOUT, max_canvas_codes: Optional[int] = None) -> FastAPI:
    """The FastAPI app.  `pipe` is a Pipeline or a function that loads one (called once, at startup).

    max_rows: the running batch's capacity in rows (a guided image takes two); max_queue: requests
    waiting before 429; max_images: the largest n; timeout: seconds per request; preview_every:
    codes between previews on the stream; shutdown_grace: seconds in-flight work may take at shutdown.
    dalle_path and checkpoint_sha256 go into the PNG settings and the reproduce command line.
    speculative: every row decodes with speculative windows of K drafts (`Scheduler`).
    max_canvas_codes: the most codes (H * W) of a `canvas` request (None: 4 times the trained grid's, a
    canvas twice as wide and tall; 0: canvases refused).
    max_body_bytes: a larger request body is a 413, before it is read (`limits.BodyLimit`);
    max_prompt_chars: a longer prompt or negative prompt is a 422, before it is tokenized.
    api_key: when given, every /v1/ path needs `Authorization: Bearer <api_key>` (401 otherwise), as the
    OpenAI clients send it; allowed_hosts: when given, a request whose Host header names another host is
    a 400 (a server on loopback is then not reachable through DNS rebinding).
    send_timeout: seconds a write of an event stream may wait for a client that stopped reading; then its
    request is cancelled and the connection dropped (`limits.timed_stream`).
    The answers name the checkpoint by its file name only (`dalle_path`'s last part), not its full path.
    """
    shown_path = dalle_path if dalle_path == "demo" else os.path.basename(os.fspath(dalle_path).rstrip("/\\")) or dalle_path
    for name, value in (("max_body_bytes", max_body_bytes), ("max_prompt_chars", max_prompt_chars)):
        if int(value) < 1:
            raise ValueError(f"{name} must be a positive integer, got {value}")

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        loaded = pipe if isinstance(pipe, Pipeline) else await run_in_threadpool(pipe)
        scheduler = Scheduler(loaded, max_rows=max_rows, max_queue=max_queue, max_images=max_images, timeout=timeout,
                              prefix_cache_entries=prefix_cache_entries, speculative=speculative,
                              max_canvas_codes=4 * loaded.model.image_seq_len if max_canvas_codes is None
                              else max_canvas_codes).start()
        app.state.scheduler, app.state.pipe, app.state.started = scheduler, loaded, time.time()
        try:
            yield
        finally:
            await run_in_threadpool(scheduler.shutdown, shutdown_grace)

    # no /docs or /redoc: FastAPI's pages load their scripts from a CDN (blank offline); /openapi.json stays
    app = FastAPI(title="dalle_pytorch", version="1", lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="Text to image with continuous batching. See docs/serving.md.")
    app.mount("/static", StaticFiles(directory=str(STATIC)), name="static")
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)
    if api_key is not None:
        if not api_key:
            raise ValueError("api_key must not be empty")
        app.add_middleware(ApiKey, key=api_key, prefix="/v1/")
    if allowed_hosts is not None:
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=list(allowed_hosts))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        reasons = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
            reasons.append(f"{where}: {err.get('msg')}" if where else str(err.get("msg")))
        if request.url.path == OPENAI_PATH:  # OpenAI's clients read their own error shape, with 400
            first = next((e for e in exc.errors()), {})
            param = next((str(p) for p in first.get("loc", ()) if p != "body"), None)
            return openai_error(400, "; ".join(reasons) or "invalid request", param, "invalid_value")
        return _error(422, "; ".join(reasons) or "invalid request")

    def submit(request: Request, body: ImagesRequest, on_event=None, preview: int = 0) -> Union[Ticket, Refusal]:
        scheduler: Scheduler = request.app.state.scheduler
        for name, text in (("prompt", body.prompt), ("negative_prompt", body.negative_prompt)):
            if text is not None and len(text) > max_prompt_chars:
                return Refusal(422, f"{name} is {len(text)} characters long; the limit is {max_prompt_chars}")
        try:
            with setting_names(HTTP_FIELDS):
                return _submit(request, body, scheduler, on_event, preview)
        except GenerationError as e:
            return Refusal(422, str(e))
        except QueueFull as e:
            return Refusal(429, str(e), {"Retry-After": str(e.retry_after)})
        except ShuttingDown as e:
            return Refusal(503, str(e))

    def _submit(request: Request, body: ImagesRequest, scheduler: Scheduler, on_event, preview: int) -> Ticket:
        sampling = request.app.state.pipe.sampling_config(
            top_k=body.top_k, top_p=body.top_p, temperature=body.temperature, cond_scale=body.cond_scale,
            cond_schedule=body.cond_schedule)
        return scheduler.submit(ImageRequest(body.prompt, n=body.n, seed=body.seed, sampling=sampling,
                                             negative_prompt=body.negative_prompt, batch_size=body.batch_size,
                                             preview_every=preview, variation=_variation(body),
                                             canvas=None if body.canvas is None else tuple(body.canvas)), on_event)

    def answer(body: ImagesRequest, result: ImageResult) -> dict:
        png_settings = {k: v for k, v in result.settings.items() if k != "seed"}
        png_settings["img"] = None
        if checkpoint_sha256:
            png_settings["checkpoint_sha256"] = checkpoint_sha256
        images = [{"png": png_base64(im, caption=body.prompt, seed=seed, settings=png_settings), "seed": seed,
                   "codes": codes.tolist()} for im, seed, codes in zip(result.images, result.seeds, result.codes)]
        return {"images": images, "prompt": body.prompt, "settings": result.settings, "timings": result.timings,
                "reproduce": _reproduce(body, result, shown_path)}

    @app.post("/v1/images", response_model=ImagesResponse,
              responses={422: {"description": "invalid input (the reason in `detail`)"},
                         429: {"description": "queue full; see Retry-After"}, 503: {"description": "shutting down"},
                         504: {"description": "timed out"}})
    async def images(body: ImagesRequest, request: Request):
        """Sample `n` images for a caption; answers when they are all done."""
        result = await run(request, body)
        return _refused(result) if isinstance(result, Refusal) else await run_in_threadpool(answer, body, result)

    async def run(request: Request, body: ImagesRequest) -> Union[ImageResult, Refusal]:
        """The request's result once its images are done (a client that disconnects cancels it), or the refusal."""
        ticket = await run_in_threadpool(submit, request, body)  # tokenizing: off the event loop
        if isinstance(ticket, Refusal):
            return ticket
        waiter = asyncio.wrap_future(ticket.future)
        while not waiter.done():
            await asyncio.wait({waiter}, timeout=0.25)
            if not waiter.done() and await request.is_disconnected():
                request.app.state.scheduler.cancel(ticket, "client disconnected")
        try:
            return waiter.result()
        except RequestFailed as e:
            return Refusal(STATUS[e.kind], str(e))

    async def openai_generate(request: Request, prompt: str, n: int) -> Union[list[str], Refusal]:
        try:
            body = ImagesRequest(prompt=prompt, n=n)  # the server's defaults, a fresh seed
        except ValidationError as e:
            return Refusal(422, "prompt: " + "; ".join(str(err.get("msg")) for err in e.errors()))
        result = await run(request, body)
        if isinstance(result, Refusal):
            return result
        return [im["png"] for im in (await run_in_threadpool(answer, body, result))["images"]]

    add_openai_routes(app, model_name=shown_path, image_size=lambda request: request.app.state.pipe.model.vae.image_size,
                      max_images=max_images, generate=openai_generate)

    @app.post("/v1/images/stream", responses={200: {"content": {"text/event-stream": {}},
                                                    "description": "server-sent events"}})
    async def images_stream(body: ImagesRequest, request: Request):
        """The same request as POST /v1/images, answered as server-sent events: `queued` {position},
        `started`, `progress` {done, total} (codes), `preview` {group, first_image, filled, total,
        images: [base64 PNG]} every few codes, then `done` (the /v1/images answer) or `error`
        {detail, status}.  Closing the connection cancels the request."""
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()

        def on_event(event: Event) -> None:  # the scheduler's thread
            loop.call_soon_threadsafe(events.put_nowait, event)

        ticket = await run_in_threadpool(submit, request, body, on_event, preview_every)  # off the event loop
        if isinstance(ticket, Refusal):
            return _refused(ticket)
        scheduler: Scheduler = request.app.state.scheduler

        async def stream():
            try:
                while True:
                    try:
                        event = await asyncio.wait_for(events.get(), timeout=10.0)
                    except asyncio.TimeoutError:
                        yield ": keep-alive\n\n"  # a closed connection shows up when written to
                        continue
                    data = dict(event.data)
                    if event.kind == "preview":
                        data["images"] = [png_base64(im) for im in data["images"]]
                    elif event.kind == "done":
                        data = await run_in_threadpool(answer, body, data["result"])
                    elif event.kind == "error":
                        data = {"detail": data["message"], "kind": data["kind"], "status": STATUS[data["kind"]]}
                    yield f"event: {event.kind}\ndata: {json.dumps(data)}\n\n"
                    if event.kind in ("done", "error"):
                        return
            finally:
                if not ticket.future.done():
                    scheduler.cancel(ticket, "client disconnected")

        return timed_stream(stream(), send_timeout=send_timeout, media_type="text/event-stream",
                            on_timeout=lambda: scheduler.cancel(ticket, "the client stopped reading"),
                            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    @app.get("/health")
    async def health(request: Request):
        """200 while the scheduler accepts requests, 503 while it shuts down."""
        m = request.app.state.scheduler.metrics()
        status = 200 if m["accepting"] else 503
        return JSONResponse({"status": "ok" if status == 200 else "shutting down"}, status_code=status)

    @app.get("/metrics")
    async def metrics(request: Request, format: Optional[str] = None):
        """queue_length, requests_in_flight, batch_rows / batch_capacity, tokens_per_s (image codes per
        second, last 5 s), images_served, request counts, prefix cache counters, uptime_s, and `latency`:
        p50 / p99 of time to first code, step time and queue wait. In Prometheus' text format for a scraper
        (an Accept header naming text/plain or OpenMetrics) or with ?format=prometheus."""
        scheduler: Scheduler = request.app.state.scheduler
        m, uptime = scheduler.metrics(), time.time() - request.app.state.started
        latency = scheduler.latencies.quantiles()
        accept = request.headers.get("accept", "")
        if format == "prometheus" or "text/plain" in accept or "openmetrics" in accept:
            return PlainTextResponse(prometheus_text(m, latency, uptime), media_type="text/plain; version=0.0.4")
        return {**m, "uptime_s": uptime, "latency": latency}

    @app.get("/v1/config")
    async def config(request: Request):
        """What the page needs: limits, defaults and the model's sizes."""
        model = request.app.state.pipe.model
        defaults = {k: v.default for k, v in ImagesRequest.model_fields.items() if k != "prompt"}
        return {"max_images": max_images, "max_rows": max_rows, "text_seq_len": model.text_seq_len,
                "image_size": model.vae.image_size, "image_seq_len": model.image_seq_len, "preview_every": preview_every,
                "fmap_size": model.fmap_size, "max_canvas_codes": request.app.state.scheduler.max_canvas_codes,
                "dalle_path": shown_path, "defaults": defaults}

    @app.get("/", include_in_schema=False)
    async def page():
        return FileResponse(str(STATIC.joinpath("index.html")))

    return app
