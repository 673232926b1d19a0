"""OpenAI's image endpoint over the server's scheduler: `POST /v1/images/generations`, for the clients people
already have (`openai.OpenAI(base_url="http://host:8000/v1", api_key=...).images.generate(prompt=..., n=...)`).

    request   {"prompt", "model"?, "n"?, "size"?, "response_format"?, "user"?, "quality"?, "style"?, ...}
    answer    {"created": unix time, "data": [{"b64_json": base64 PNG}, ...]}
    error     {"error": {"message", "type", "param", "code"}} with 400 (bad field), 401 (key), 404 (another
              model), 429 (queue full), 503 (shutting down), 504 (timed out), as OpenAI's API answers them

What this model cannot do is refused with the reason rather than ignored: `model` must be the served model's
name (or omitted); `size` is the model's only size (or "auto"); `response_format` "url" would need the
server to keep images and serve them later, so only "b64_json" is given (also the default here, where
OpenAI's is "url"); `quality` / `style` / `output_format` / `background` / `moderation` are accepted at
their defaults only, and `stream` false only (our own stream is POST /v1/images/stream); `user` is accepted
and not stored. Every request samples with a fresh seed and the model's default settings; the richer
`POST /v1/images` takes seeds, guidance and the sampling settings.
"""
from __future__ import annotations

import time
from typing import Awaitable, Callable, Optional, Union

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict

from dalle_pytorch.serve.requests import Refusal

__all__ = ["OPENAI_PATH", "OpenAIImagesRequest", "openai_error", "add_openai_routes"]

OPENAI_PATH = "/v1/images/generations"
#: fields OpenAI's API takes that this endpoint accepts only at these values (None: omitted)
_DEFAULT_ONLY = {"quality": (None, "auto", "standard"), "style": (None, "vivid"), "output_format": (None, "png"),
                 "background": (None, "auto", "opaque"), "moderation": (None, "auto"), "stream": (None, False),
                 "partial_images": (None, 0), "output_compression": (None, 100)}
_TYPES = {400: "invalid_request_error", 401: "invalid_request_error", 404: "invalid_request_error",
          429: "rate_limit_error", 503: "server_error", 504: "server_error", 500: "server_error"}


class OpenAIImagesRequest(BaseModel):
    """OpenAI's image generation request (its fields; strict types, unknown fields refused)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    prompt: str
    model: Optional[str] = None
    n: Optional[int] = None
    size: Optional[str] = None
    response_format: Optional[str] = None
    user: Optional[str] = None
    quality: Optional[str] = None
    style: Optional[str] = None
    output_format: Optional[str] = None
    background: Optional[str] = None
    moderation: Optional[str] = None
    stream: Optional[bool] = None
    partial_images: Optional[int] = None
    output_compression: Optional[int] = None


def openai_error(status: int, message: str, param: Optional[str] = None, code: Optional[str] = None,
                 headers: Optional[dict] = None) -> JSONResponse:
    """An error in the shape OpenAI's clients read ({"error": {message, type, param, code}})."""
    return JSONResponse({"error": {"message": message, "type": _TYPES.get(status, "invalid_request_error"),
                                   "param": param, "code": code}}, status_code=status, headers=headers)


def add_openai_routes(app: FastAPI, *, model_name: str, image_size: Callable[[Request], int], max_images: int,
                      generate: Callable[[Request, str, int], Awaitable[Union[list[str], Refusal]]]) -> None:
    """Add POST /v1/images/generations to `app`. generate(request, prompt, n) samples n images with the server's
    defaults and returns their base64 PNGs, or the `Refusal`."""

    @app.post(OPENAI_PATH, responses={400: {"description": "an invalid or unsupported field (OpenAI's error shape)"},
                                      404: {"description": "another model than the served one"}})
    async def generations(body: OpenAIImagesRequest, request: Request):
        """OpenAI's `images.generate`: `n` (default 1) images of `prompt` as base64 PNGs."""
        if body.model is not None and body.model != model_name:
            return openai_error(404, f"the model {body.model!r} is not served here; this server serves {model_name!r} "
                                     "(or omit model)", "model", "model_not_found")
        size = image_size(request)
        if body.size not in (None, "auto", f"{size}x{size}"):
            return openai_error(400, f"size {body.size!r} is not available: this model makes {size}x{size} images",
                                "size", "invalid_size")
        if body.response_format not in (None, "b64_json"):
            return openai_error(400, f"response_format {body.response_format!r} is not offered: 'url' would need the "
                                     "server to keep each image and serve it later; ask for 'b64_json'",
                                "response_format", "unsupported_value")
        for field, allowed in _DEFAULT_ONLY.items():
            value = getattr(body, field)
            if value not in allowed:
                shown = ", ".join(repr(v) for v in allowed if v is not None)
                return openai_error(400, f"{field} {value!r} is not supported by this model; it takes {shown} "
                                         "(or omit it)", field, "unsupported_value")
        n = 1 if body.n is None else body.n
        if not 1 <= n <= max_images:
            return openai_error(400, f"n must be between 1 and {max_images}, got {n}", "n", "invalid_value")
        out = await generate(request, body.prompt, n)
        if isinstance(out, Refusal):  # our 422 is OpenAI's 400 (a bad prompt); the other statuses are the same
            status = 400 if out.status == 422 else out.status
            return openai_error(status, out.detail, "prompt" if status == 400 else None, None, out.headers)
        return {"created": int(time.time()), "data": [{"b64_json": png} for png in out]}
