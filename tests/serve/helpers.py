"""A real uvicorn server on a free loopback port, for the HTTP and browser tests; an answer's PNG as pixels."""
from __future__ import annotations

import base64
import io
import socket
import threading
import time
from contextlib import contextmanager

import numpy as np
from PIL import Image


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def live_server(app, timeout: float = 60.0):
    """Run `app` with uvicorn in a thread on 127.0.0.1:<free port>; yields the base URL."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                           timeout_graceful_shutdown=5))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)


def png_pixels(b64: str) -> np.ndarray:
    """The RGB pixels (H, W, 3) of a base64 PNG from an answer."""
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB"))
