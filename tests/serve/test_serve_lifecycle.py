"""On a real uvicorn: shutdown past the grace period (serve/server.py: one budget for the whole process; the
requests still running when it ends get 503 (JSON) or the stream's `error` event, then the process exits), and
tokenizing off the event loop (a slow one does not hold /health)."""
import json
import signal
import threading
import time

import pytest

pytest.importorskip("fastapi", reason="the server tests need the [serve] extra (fastapi, uvicorn)")
httpx = pytest.importorskip("httpx")

from dalle_pytorch.serve.app import create_app  # noqa: E402
from dalle_pytorch.serve.scheduler import Scheduler  # noqa: E402
from dalle_pytorch.serve.server import ANSWER_MARGIN, server_for  # noqa: E402
from tests.helpers import tiny_pipeline, tiny_vae  # noqa: E402
from tests.serve.helpers import free_port  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
GRACE = 1.0


def test_work_past_the_grace_gets_503_and_the_stream_its_error_event(monkeypatch):
    step = Scheduler.step

    def slow_step(self, *args, **kwargs):  # 16 codes at 0.25 s each: longer than the grace
        time.sleep(0.25)
        return step(self, *args, **kwargs)

    monkeypatch.setattr(Scheduler, "step", slow_step)
    app = create_app(tiny_pipeline(vae=tiny_vae(num_layers=3)), shutdown_grace=GRACE)
    port = free_port()
    server = server_for(app, host="127.0.0.1", port=port, log_level="warning", shutdown_grace=GRACE)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    url = f"http://127.0.0.1:{port}"
    body = {"prompt": "a red circle on a blue background", "n": 1, "seed": 1}
    answers = {}

    def post():
        answers["json"] = httpx.post(url + "/v1/images", json=body, timeout=60)

    def stream():
        answers["stream"] = httpx.post(url + "/v1/images/stream", json=body, timeout=60)

    clients = [threading.Thread(target=post), threading.Thread(target=stream)]
    for c in clients:
        c.start()
    deadline = time.monotonic() + 30
    while httpx.get(url + "/metrics").json()["requests_in_flight"] < 2:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    t0 = time.monotonic()
    server.handle_exit(signal.SIGTERM, None)  # what uvicorn's signal handler calls
    for c in clients:
        c.join(30)
    thread.join(30)
    elapsed = time.monotonic() - t0
    assert not thread.is_alive() and elapsed < GRACE + ANSWER_MARGIN, elapsed  # one budget, not two
    r = answers["json"]
    assert r.status_code == 503 and "shutting down" in r.json()["detail"]
    events = [block for block in answers["stream"].text.split("\n\n") if block.startswith("event: error")]
    assert len(events) == 1
    error = json.loads(events[0].split("data: ", 1)[1])
    assert error["status"] == 503 and error["kind"] == "cancelled"


def test_tokenizing_runs_off_the_event_loop(monkeypatch):
    """A slow tokenization (a long caption under a raised --max_prompt_chars) does not hold other requests."""
    from tests.serve.helpers import live_server

    pipe = tiny_pipeline(vae=tiny_vae(num_layers=3))
    tokenize = pipe.tokenize

    def slow_tokenize(captions, *args, **kwargs):
        time.sleep(2.0)
        return tokenize(captions, *args, **kwargs)

    monkeypatch.setattr(pipe, "tokenize", slow_tokenize)
    with live_server(create_app(pipe)) as url:
        done = {}
        worker = threading.Thread(target=lambda: done.setdefault("r", httpx.post(
            url + "/v1/images", json={"prompt": "a red circle on a blue background", "n": 1}, timeout=60)))
        worker.start()
        time.sleep(0.3)  # the request is being tokenized
        t0 = time.monotonic()
        assert httpx.get(url + "/health", timeout=10).status_code == 200
        assert time.monotonic() - t0 < 1.0
        worker.join(60)
        assert done["r"].status_code == 200


def test_a_stream_whose_client_stops_reading_is_cancelled_after_the_send_timeout():
    """limits.timed_stream (the event stream's response): a write that waits longer than send_timeout (the
    client's buffers are full) cancels the request, closes the stream and drops the connection."""
    import asyncio

    from dalle_pytorch.serve.limits import timed_stream

    closed, cancelled, sent = [], [], []

    async def events():
        try:
            for i in range(1000):
                yield f"event: progress\ndata: {i}\n\n"
        finally:
            closed.append(True)  # where the endpoint's stream cancels its ticket

    async def send(message):
        if len(sent) >= 3:
            await asyncio.Event().wait()  # the client stopped reading: this write never completes
        sent.append(message)

    async def main():
        response = timed_stream(events(), send_timeout=0.2, on_timeout=lambda: cancelled.append(True),
                                media_type="text/event-stream")
        t0 = time.monotonic()
        with pytest.raises(OSError, match="read nothing for 0.2 s"):
            await response.stream_response(send)
        return time.monotonic() - t0

    elapsed = asyncio.run(main())
    assert 0.2 <= elapsed < 1.0 and cancelled == [True] and closed == [True] and len(sent) == 3


def test_a_request_head_sent_a_byte_at_a_time_is_dropped():
    """slowloris: a connection that does not finish its request head within header_timeout is closed, while
    other requests are answered; a complete request on a kept-alive connection is not affected."""
    import socket

    app = create_app(tiny_pipeline(vae=tiny_vae(num_layers=3)))
    port = free_port()
    server = server_for(app, host="127.0.0.1", port=port, log_level="warning", header_timeout=0.5)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    try:
        slow = socket.create_connection(("127.0.0.1", port))
        slow.settimeout(5)
        t0 = time.monotonic()
        for byte in b"GET /health HTTP/1.1\r\nHo":
            slow.send(bytes([byte]))
            time.sleep(0.01)
        assert httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).status_code == 200  # others are served
        assert slow.recv(1024) == b"" and time.monotonic() - t0 < 2.0  # closed by the server
        with httpx.Client(base_url=f"http://127.0.0.1:{port}") as kept:  # one connection, requests 1 s apart
            for _ in range(2):
                assert kept.get("/health").status_code == 200
                time.sleep(0.3)
    finally:
        server.should_exit = True
        thread.join(30)
