"""Running the app: uvicorn with one shutdown budget for the whole process.

uvicorn on SIGTERM / Ctrl-C first waits for open connections (up to `timeout_graceful_shutdown`), then runs
the app's lifespan shutdown, which would wait for the scheduler again: twice the grace, and requests still
running when uvicorn's wait ends were cut off (a 500, a stream without its error event). Here the signal
starts the scheduler's budget at once (`Scheduler.begin_shutdown`): the accepted requests finish or, when
the budget ends, are answered 503 (a stream gets its `error` event); uvicorn's own wait is that budget
plus a few seconds to write those answers, and the lifespan then finds nothing left.

Connections: a request head must arrive within `header_timeout` seconds (slowloris), and uvicorn answers 503
beyond `limit_concurrency` concurrent connections.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the serve extra is imported where the server starts, not here (the CLI reads the defaults)
    from fastapi import FastAPI

__all__ = ["ANSWER_MARGIN", "DEFAULT_HEADER_TIMEOUT", "DEFAULT_LIMIT_CONCURRENCY", "server_for", "serve"]

ANSWER_MARGIN = 5.0  # seconds after the budget for the last answers to be written


DEFAULT_HEADER_TIMEOUT = 10.0  # seconds a connection may take to send a request's head
DEFAULT_LIMIT_CONCURRENCY = 256  # connections and tasks before uvicorn answers 503


def _protocol(header_timeout: float):
    """uvicorn's h11 protocol with a deadline on every request head: a connection that has not sent a whole head
    `header_timeout` seconds after it opened (or after its last answer) is closed. (uvicorn has no such timeout:
    a client sending its headers a byte at a time, slowloris, held its connection for ever.)"""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class HeadTimeoutProtocol(H11Protocol):
        def _arm_head_timer(self) -> None:
            before = self.cycle

            def expire() -> None:
                if self.cycle is before and not self.transport.is_closing():  # no new request head since
                    self.transport.close()

            self.loop.call_later(header_timeout, expire)

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._arm_head_timer()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._arm_head_timer()

    return HeadTimeoutProtocol


def server_for(app: FastAPI, *, host: str, port: int, log_level: str = "info", shutdown_grace: float = 30.0,
               header_timeout: float = DEFAULT_HEADER_TIMEOUT, limit_concurrency: int = DEFAULT_LIMIT_CONCURRENCY):
    """A uvicorn.Server for `app` (made by `create_app`) whose exit signal starts the scheduler's shutdown, with a
    deadline on request heads (`header_timeout`) and at most `limit_concurrency` connections (503 beyond)."""
    import uvicorn

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame) -> None:
            scheduler = getattr(app.state, "scheduler", None)
            if scheduler is not None:
                scheduler.begin_shutdown(shutdown_grace)
            super().handle_exit(sig, frame)

    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, http=_protocol(header_timeout),
                            limit_concurrency=limit_concurrency, timeout_graceful_shutdown=shutdown_grace + ANSWER_MARGIN)
    return Server(config)


def serve(app: FastAPI, **kwargs) -> None:
    """Run `app` until SIGTERM / Ctrl-C (`server_for`'s arguments); Ctrl-C ends it cleanly, as `uvicorn.run`
    does (uvicorn raises the captured SIGINT again once it has shut down)."""
    try:
        server_for(app, **kwargs).run()
    except KeyboardInterrupt:
        pass
