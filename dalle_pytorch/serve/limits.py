"""Bounds on what a request may send, enforced before any work is done for it.

`BodyLimit` (ASGI middleware): a request body over `max_bytes` is answered 413 as soon as its declared
length or its bytes so far exceed the limit, without reading the rest (so a 50 MB prompt costs the
server 64 KB, not 50 MB and a tokenizer run on the event loop). `timed_stream`: an event stream whose
writes time out for a client that stops reading.
"""
from __future__ import annotations

import functools
import hmac
import json

__all__ = ["BodyLimit", "ApiKey", "DEFAULT_MAX_BODY_BYTES", "DEFAULT_MAX_PROMPT_CHARS", "DEFAULT_SEND_TIMEOUT",
           "LOOPBACK_HOSTS", "timed_stream"]

#: the Host names a server bound to loopback answers to (anything else: DNS rebinding, or a mistake)
LOOPBACK_HOSTS = ["127.0.0.1", "localhost", "::1", "[::1]"]

#: the largest request body accepted (bytes)
DEFAULT_MAX_BODY_BYTES = 64 * 1024
#: the longest prompt (and negative prompt) accepted, in characters (the model's text length bounds tokens)
DEFAULT_MAX_PROMPT_CHARS = 4096


async def _answer(send, status: int, detail: str, headers: tuple = ()) -> None:
    """A JSON error answer `{"detail": ...}` sent straight through ASGI (the middlewares answer before the app)."""
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *headers]})
    await send({"type": "http.response.body", "body": body})


class BodyLimit:
    """413 for a request body over `max_bytes` (declared by Content-Length, or counted as it arrives)."""

    def __init__(self, app, max_bytes: int = DEFAULT_MAX_BODY_BYTES) -> None:
        if int(max_bytes) < 1:
            raise ValueError(f"max_body_bytes must be a positive integer, got {max_bytes}")
        self.app, self.max_bytes = app, int(max_bytes)

    async def _too_large(self, send) -> None:
        await _answer(send, 413, f"the request body is over the limit of {self.max_bytes} bytes",
                      ((b"connection", b"close"),))

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await self._too_large(send)
        received, started, answered = 0, False, False

        async def limited_receive():
            nonlocal received, answered
            if answered:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes and not started:
                    # answer now, and tell the app the client left: it stops reading and answers nothing
                    answered = True
                    await self._too_large(send)
                    return {"type": "http.disconnect"}
            return message

        async def tracked_send(message):
            nonlocal started
            if answered:
                return  # the 413 was the answer
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracked_send)
        except Exception:
            if not answered:
                raise


class ApiKey:
    """401 for a request to a path under `prefix` without `Authorization: Bearer <key>` (compared in
    constant time); other paths (the page, /health) are open."""

    def __init__(self, app, key: str, prefix: str = "/v1/") -> None:
        self.app, self.key, self.prefix = app, key.encode(), prefix

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope.get("path", "").startswith(self.prefix):
            given = dict(scope.get("headers") or []).get(b"authorization", b"")
            scheme, _, token = given.partition(b" ")
            if scheme.lower() != b"bearer" or not hmac.compare_digest(token.strip(), self.key):
                await _answer(send, 401, "missing or wrong API key: send Authorization: Bearer <key>",
                              ((b"www-authenticate", b"Bearer"),))
                return
        await self.app(scope, receive, send)


#: seconds one write of an event stream may wait for a client that has stopped reading
DEFAULT_SEND_TIMEOUT = 30.0


@functools.lru_cache(maxsize=None)
def _timed_stream_class():
    """The StreamingResponse subclass of `timed_stream`, made once (starlette is imported only where the server runs)."""
    import asyncio

    from starlette.responses import StreamingResponse

    class TimedStream(StreamingResponse):
        def __init__(self, content, *, send_timeout: float, on_timeout, **kwargs) -> None:
            super().__init__(content, **kwargs)
            self.send_timeout, self.on_timeout = send_timeout, on_timeout

        async def stream_response(self, send) -> None:
            async def timed(message) -> None:
                try:
                    await asyncio.wait_for(send(message), self.send_timeout)
                except asyncio.TimeoutError:
                    self.on_timeout()
                    await self.body_iterator.aclose()
                    raise OSError(f"the client read nothing for {self.send_timeout:g} s") from None

            await super().stream_response(timed)

    return TimedStream


def timed_stream(content, *, send_timeout: float, on_timeout, **kwargs):
    """A StreamingResponse whose every write must complete within `send_timeout` seconds: a client that stops
    reading (its socket's buffers full, so the write waits) gets `on_timeout()` (the server cancels its
    request's rows, as for a disconnect), the stream is closed and the connection dropped; memory held for a
    slow reader is bounded by what the events of `send_timeout` seconds take."""
    return _timed_stream_class()(content, send_timeout=send_timeout, on_timeout=on_timeout, **kwargs)
