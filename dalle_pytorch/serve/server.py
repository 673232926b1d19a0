"""Running the app: uvicorn with one shutdown budget for the whole process.

uvicorn on SIGTERM / Ctrl-C first waits for open connections (up to `timeout_graceful_shutdown`), then runs
the app's lifespan shutdown, which would wait for the scheduler again: twice the grace, and requests still
running when uvicorn's wait ends were cut off (a 500, a stream without its error event). Here the signal
starts the scheduler's budget at once (`Scheduler.begin_shutdown`): the accepted requests finish or, when
the budget ends, are answered 503 (a stream gets its `error` event); uvicorn's own wait is that budget
plus a few seconds to write those answers, and the lifespan then finds nothing left.
"""
from __future__ import annotations

from fastapi import FastAPI

__all__ = ["ANSWER_MARGIN", "server_for", "serve"]

ANSWER_MARGIN = 5.0  # seconds after the budget for the last answers to be written


def server_for(app: FastAPI, *, host: str, port: int, log_level: str = "info", shutdown_grace: float = 30.0):
    """A uvicorn.Server for `app` (made by `create_app`) whose exit signal starts the scheduler's shutdown."""
    import uvicorn

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame) -> None:
            scheduler = getattr(app.state, "scheduler", None)
            if scheduler is not None:
                scheduler.begin_shutdown(shutdown_grace)
            super().handle_exit(sig, frame)

    config = uvicorn.Config(app, host=host, port=port, log_level=log_level,
                            timeout_graceful_shutdown=shutdown_grace + ANSWER_MARGIN)
    return Server(config)


def serve(app: FastAPI, **kwargs) -> None:
    """Run `app` until SIGTERM / Ctrl-C (`server_for`'s arguments); Ctrl-C ends it cleanly, as `uvicorn.run`
    does (uvicorn raises the captured SIGINT again once it has shut down)."""
    try:
        server_for(app, **kwargs).run()
    except KeyboardInterrupt:
        pass
