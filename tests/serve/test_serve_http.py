"""The HTTP API (FastAPI's TestClient, and a real uvicorn on a loopback port where a connection must
really close): images with generate.py's PNG metadata, 422 reasons, 429, 503/504, the event stream,
client disconnects, health, metrics, the page's files and the CLI's defaults."""
import base64
import io
import argparse
import json
import time

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi", reason="the server tests need the [serve] extra (fastapi, uvicorn)")
pytest.importorskip("httpx", reason="FastAPI's TestClient needs httpx")

from fastapi.testclient import TestClient  # noqa: E402

from dalle_pytorch.cli.serve import parse_args  # noqa: E402
from dalle_pytorch.generation.sampling import SamplingConfig  # noqa: E402
from dalle_pytorch.serve import scheduler as scheduler_module  # noqa: E402
from dalle_pytorch.serve.app import create_app  # noqa: E402
from tests.serve.helpers import live_server  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

RED = "a red circle on a blue background"


@pytest.fixture(scope="module")
def client(pipe):
    with TestClient(create_app(pipe, max_rows=16, max_images=8, preview_every=4, checkpoint_sha256="abc")) as c:
        yield c


def _png(b64: str) -> Image.Image:
    im = Image.open(io.BytesIO(base64.b64decode(b64)))
    im.load()
    return im


def _events(text: str) -> list:
    out = []
    for block in text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.split("\n") if not line.startswith(":"))
        if "event" in lines:
            out.append((lines["event"], json.loads(lines["data"])))
    return out


def test_images_come_with_seeds_settings_and_generate_py_metadata(client, pipe):
    body = {"prompt": RED, "n": 3, "seed": 5, "batch_size": 2, "cond_scale": 2.0, "top_k": 0.8,
            "negative_prompt": "a black square on a white background"}
    r = client.post("/v1/images", json=body)
    assert r.status_code == 200, r.text
    answer = r.json()
    assert [im["seed"] for im in answer["images"]] == [5, 5, 6]
    assert answer["settings"] == {"filter_thres": 0.8, "filter_scope": "vocab", "top_p": None, "temperature": 1.0,
                                  "cond_scale": 2.0, "null_text": body["negative_prompt"], "num_init_img_tokens": None,
                                  "batch_size": 2, "seed": 5}
    assert set(answer["timings"]) == {"queued_s", "run_s", "total_s"}
    assert "--seed 5 --num_images 3 --batch_size 2 --top_k 0.8" in answer["reproduce"]
    expected = pipe.generate(RED, num_images=3, seed=5, batch_size=2, negative_prompt=body["negative_prompt"],
                             sampling=SamplingConfig(filter_thres=0.8, cond_scale=2.0)).pil_images()
    for image, want in zip(answer["images"], expected):
        png = _png(image["png"])
        assert np.array_equal(np.asarray(png), np.asarray(want))
        assert png.text["caption"] == RED and png.text["seed"] == str(image["seed"])
        settings = json.loads(png.text["settings"])
        assert settings["checkpoint_sha256"] == "abc" and settings["img"] is None and "seed" not in settings
        assert png.text["software"].startswith("dalle_pytorch ")


@pytest.mark.parametrize("body, reason", [
    ({"prompt": ""}, "prompt is empty"),
    ({"prompt": RED + " , " + RED}, "longer than"),
    ({"prompt": RED, "n": 9}, "n must be an integer from 1 to 8"),
    ({"prompt": RED, "top_k": 1.5}, "filter_thres must be in [0, 1), got 1.5"),
    ({"prompt": RED, "top_p": 0}, "top_p must be in (0, 1]"),
    ({"prompt": RED, "temperature": -1}, "temperature must be > 0"),
    ({"prompt": RED, "cond_scale": -2}, "cond_scale must be >= 0"),
    ({"prompt": RED, "negative_prompt": "a red circle"}, "only has an effect with guidance"),
    ({"prompt": RED, "n": "four"}, "n: Input should be a valid integer"),
    ({"prompt": RED, "n": "4"}, "n: Input should be a valid integer"),  # strict types: no "4" for 4
    ({"prompt": RED, "n": True}, "n: Input should be a valid integer"),  # nor true for 1
    ({"prompt": "a \ud800 b"}, "prompt: Value error, must be Unicode text; it holds a lone surrogate"),
    ({"prompt": RED, "cond_scale": 3, "negative_prompt": "a \udfff"}, "negative_prompt: Value error, must be Unicode"),
    ({"prompt": RED, "steps": 3}, "steps: Extra inputs are not permitted"),
    ({"n": 2}, "prompt: Field required"),
])
def test_invalid_input_is_422_with_the_reason(client, body, reason):
    # the body as ASCII JSON (json.dumps escapes a lone surrogate as "\ud800", as a client's JSON may)
    raw = json.dumps(body).encode("ascii")
    for path in ("/v1/images", "/v1/images/stream"):
        r = client.post(path, content=raw, headers={"content-type": "application/json"})
        assert r.status_code == 422 and reason in r.json()["detail"], r.text


def test_the_stream_sends_progress_previews_then_the_images(client):
    r = client.post("/v1/images/stream", json={"prompt": RED, "n": 2, "seed": 1})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = _events(r.text)
    kinds = [k for k, _ in events]
    assert kinds[0] == "started" and kinds[-1] == "done" and "progress" in kinds
    previews = [d for k, d in events if k == "preview"]
    assert [p["filled"] for p in previews] == [4, 8, 12] and all(len(p["images"]) == 2 for p in previews)
    assert _png(previews[0]["images"][0]).size == (32, 32)
    done = events[-1][1]
    assert [im["seed"] for im in done["images"]] == [1, 1]
    plain = client.post("/v1/images", json={"prompt": RED, "n": 2, "seed": 1}).json()
    assert [im["png"] for im in done["images"]] == [im["png"] for im in plain["images"]]


def test_health_metrics_config_page_and_openapi(client):
    assert client.get("/health").json() == {"status": "ok"}
    m = client.get("/metrics").json()
    for key in ("queue_length", "batch_rows", "batch_capacity", "tokens_per_s", "images_served", "prefix_cache"):
        assert key in m
    config = client.get("/v1/config").json()
    assert config["max_images"] == 8 and config["defaults"]["top_k"] == 0.9 and config["image_seq_len"] == 16
    page = client.get("/")
    assert page.status_code == 200 and "<form" in page.text and "/static/app.js" in page.text
    for name in ("app.js", "style.css"):
        assert client.get(f"/static/{name}").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/v1/images", "/v1/images/stream", "/health", "/metrics"} <= set(paths)


def test_a_full_queue_is_429_with_retry_after(pipe, monkeypatch):
    monkeypatch.setattr(scheduler_module.Scheduler, "start", lambda self: self)  # nothing runs: the queue stays
    with TestClient(create_app(pipe, max_queue=2, max_rows=4)) as c:
        scheduler = c.app.state.scheduler
        rows = scheduler.batch.free_rows
        scheduler.submit(scheduler_module.ImageRequest(RED, n=rows, batch_size=rows, seed=0))  # takes every row
        for seed in range(1, 3):
            scheduler.submit(scheduler_module.ImageRequest(RED, n=1, seed=seed))
        r = c.post("/v1/images", json={"prompt": RED, "n": 1})
        assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1 and "queue is full" in r.json()["detail"]
        assert c.get("/metrics").json()["queue_length"] == 2
    # the lifespan's shutdown ran the three accepted requests to the end (nothing accepted is lost)
    assert scheduler.metrics()["completed"] == 3


def test_a_request_past_its_timeout_is_504(pipe):
    with TestClient(create_app(pipe, timeout=1e-6)) as c:
        r = c.post("/v1/images", json={"prompt": RED, "n": 1})
        assert r.status_code == 504 and "timed out" in r.json()["detail"]
        events = _events(c.post("/v1/images/stream", json={"prompt": RED, "n": 1}).text)
        assert events[-1] == ("error", {"detail": events[-1][1]["detail"], "kind": "timed_out", "status": 504})


def test_shutdown_finishes_in_flight_work_and_then_refuses(pipe):
    with TestClient(create_app(pipe, shutdown_grace=30)) as c:
        scheduler = c.app.state.scheduler
        tickets = [scheduler.submit(scheduler_module.ImageRequest(RED, n=4, seed=s)) for s in range(3)]
    assert all(t.result(0).images.shape[0] == 4 for t in tickets)  # answered before the lifespan ended
    with pytest.raises(scheduler_module.ShuttingDown):
        scheduler.submit(scheduler_module.ImageRequest(RED, n=1))


def test_closing_the_stream_cancels_the_request(pipe):
    import httpx

    app = create_app(pipe, max_rows=1)
    with live_server(app) as url:
        with httpx.Client(base_url=url, timeout=30) as http:
            with http.stream("POST", "/v1/images/stream", json={"prompt": RED, "n": 8, "batch_size": 1}) as r:
                assert r.status_code == 200
                for line in r.iter_lines():
                    if line.startswith("event: progress"):
                        break  # hang up mid-way
            deadline = time.monotonic() + 20
            while http.get("/metrics").json()["cancelled"] == 0 and time.monotonic() < deadline:
                time.sleep(0.05)
            m = http.get("/metrics").json()
            assert m["cancelled"] == 1 and m["completed"] == 0 and m["batch_rows"] == 0
            # and the server goes on serving
            assert http.post("/v1/images", json={"prompt": RED, "n": 1, "batch_size": 1}).status_code == 200


def test_cli_defaults_are_loopback_port_8000_and_the_demo_model():
    args = parse_args([])
    assert (args.host, args.port, args.dalle_path) == ("127.0.0.1", 8000, "demo")


def test_a_speculative_server_reports_its_forward_passes_and_the_window(pipe):
    """dalle-serve --speculative K: the answer's settings and reproduce line carry the window, its timings the
    forward passes of each batch (fewer than the codes), and the images are generate's with that window."""
    with TestClient(create_app(pipe, speculative=4)) as c:
        r = c.post("/v1/images", json={"prompt": RED, "n": 2, "seed": 1, "batch_size": 2})
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["settings"]["speculative"] == 4 and answer["reproduce"].endswith("--speculative 4")
    (passes,) = answer["timings"]["forward_passes"]
    assert 0 < passes < pipe.model.image_seq_len - 1
    expected = pipe.generate(RED, num_images=2, seed=1, batch_size=2, speculative=4).pil_images()
    for image, want in zip(answer["images"], expected):
        got = Image.open(io.BytesIO(base64.b64decode(image["png"])))
        assert np.array_equal(np.asarray(got), np.asarray(want))


def test_request_size_limits_come_before_any_work(pipe):
    """A body over max_body_bytes is a 413 (declared or counted: the rest is not read), a prompt or negative
    prompt over max_prompt_chars a 422 naming the limit, before the tokenizer sees it; the server answers on."""
    with TestClient(create_app(pipe, max_body_bytes=4096, max_prompt_chars=200)) as c:
        huge = json.dumps({"prompt": "a " * 10_000}).encode()
        for path in ("/v1/images", "/v1/images/stream"):
            r = c.post(path, content=huge, headers={"content-type": "application/json"})
            assert r.status_code == 413 and "limit of 4096 bytes" in r.json()["detail"], r.text

        def chunks():  # no Content-Length: the limit counts the bytes as they come
            for _ in range(10):
                yield b" " * 1000
            yield json.dumps({"prompt": RED}).encode()

        r = c.post("/v1/images", content=chunks(), headers={"content-type": "application/json"})
        assert r.status_code == 413, r.text
        r = c.post("/v1/images", json={"prompt": "a" * 201})
        assert r.status_code == 422 and r.json()["detail"] == "prompt is 201 characters long; the limit is 200"
        r = c.post("/v1/images", json={"prompt": RED, "cond_scale": 3, "negative_prompt": "b" * 300})
        assert r.status_code == 422 and "negative_prompt is 300 characters long" in r.json()["detail"]
        assert c.post("/v1/images", json={"prompt": RED, "n": 1, "seed": 0}).status_code == 200
    with pytest.raises(ValueError, match="max_body_bytes"):
        create_app(pipe, max_body_bytes=0)


def test_api_key_hosts_offline_docs_and_no_paths(pipe):
    """--api_key: /v1/ needs `Authorization: Bearer KEY` (401 otherwise), the page and /health stay open;
    allowed_hosts: another Host header is refused (DNS rebinding); no /docs page (its scripts come from a CDN);
    the answers name the checkpoint by its file name, not its path."""
    app = create_app(pipe, api_key="s3cret", allowed_hosts=["testserver", "127.0.0.1"], dalle_path="/srv/models/mine.pt")
    with TestClient(app) as c:
        assert c.post("/v1/images", json={"prompt": RED, "n": 1}).status_code == 401
        assert c.post("/v1/images", json={"prompt": RED, "n": 1}, headers={"Authorization": "Bearer wrong"}).status_code == 401
        ok = c.post("/v1/images", json={"prompt": RED, "n": 1, "seed": 0}, headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200 and "/srv/models" not in ok.text and "mine.pt" in ok.json()["reproduce"]
        config = c.get("/v1/config", headers={"Authorization": "Bearer s3cret"}).json()
        assert config["dalle_path"] == "mine.pt"
        assert c.get("/health").status_code == 200 and c.get("/").status_code == 200
        assert c.get("/health", headers={"Host": "evil.example"}).status_code == 400
        assert c.get("/docs").status_code == 404 and c.get("/openapi.json").status_code == 200
    with pytest.raises(ValueError, match="api_key"):
        create_app(pipe, api_key="")


def test_the_cli_answers_only_loopback_hosts_on_loopback():
    from dalle_pytorch.cli.serve import allowed_hosts
    from dalle_pytorch.serve.limits import LOOPBACK_HOSTS

    assert allowed_hosts(argparse.Namespace(host="127.0.0.1", allowed_hosts=None)) == LOOPBACK_HOSTS
    assert allowed_hosts(argparse.Namespace(host="0.0.0.0", allowed_hosts=None)) is None
    assert allowed_hosts(argparse.Namespace(host="0.0.0.0", allowed_hosts=["a.example"])) == ["a.example"]


def test_the_cli_warns_when_it_serves_beyond_loopback_without_a_key():
    from dalle_pytorch.cli.serve import startup_warnings

    assert startup_warnings(argparse.Namespace(host="127.0.0.1", api_key=None)) == []
    assert startup_warnings(argparse.Namespace(host="0.0.0.0", api_key="k")) == []
    (warning,) = startup_warnings(argparse.Namespace(host="0.0.0.0", api_key=None))
    assert "0.0.0.0 without --api_key" in warning and "DALLE_SERVE_API_KEY" in warning


def test_metrics_latencies_and_prometheus_text(client):
    """/metrics: p50 / p99 of time to first code, step time and queue wait; for a scraper, Prometheus' text
    format, read back by prometheus_client's own parser."""
    from prometheus_client.parser import text_string_to_metric_families

    assert client.post("/v1/images", json={"prompt": RED, "n": 1, "seed": 0}).status_code == 200
    latency = client.get("/metrics").json()["latency"]
    for name in ("time_to_first_code_seconds", "step_seconds", "queue_wait_seconds"):
        q = latency[name]
        assert q["count"] >= 1 and 0 <= q["p50"] <= q["p99"]
    assert latency["time_to_first_code_seconds"]["p50"] > 0 and latency["step_seconds"]["sum"] > 0
    r = client.get("/metrics", headers={"Accept": "text/plain;version=0.0.4;q=0.5,*/*;q=0.1"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(r.text)}
    completed = [s for s in families["dalle_requests"].samples if s.labels.get("outcome") == "completed"]
    assert completed and completed[0].value >= 1
    ttfc = {s.labels.get("quantile"): s.value for s in families["dalle_time_to_first_code_seconds"].samples
            if "quantile" in s.labels}
    assert 0 < ttfc["0.5"] <= ttfc["0.99"]
    assert client.get("/metrics?format=prometheus").text.startswith("# HELP dalle_")
    assert "queue_length" in client.get("/metrics").json()  # JSON stays the default


def test_the_answer_is_bounded_by_the_prompt_limit(pipe):
    """The largest answer the limits allow: a prompt and a negative prompt of max_prompt_chars characters (4 bytes
    each in UTF-8) with n = max_images. The caption is in every PNG (as generate.py writes them), the settings and
    the reproduce line, and every image carries its I codes (at most len(str(V - 1)) digits and ", " each): the
    answer stays within n x (image + 4/3 x 3 copies of both texts + its codes) plus a constant."""
    limit, n = 1000, 4
    with TestClient(create_app(pipe, max_images=n, max_prompt_chars=limit)) as c:
        word = "\U0001F600" * limit  # one "word": one token for the word-level tokenizer, 4 bytes a character
        r = c.post("/v1/images", json={"prompt": word, "negative_prompt": word, "n": n, "cond_scale": 2.0})
        assert r.status_code == 200, r.text
        image = max(len(base64.b64decode(im["png"])) for im in r.json()["images"]) - 2 * 4 * limit
        codes = pipe.model.image_seq_len * (len(str(pipe.model.num_image_tokens - 1)) + 2) + len('"codes": [], ')
        bound = n * (4 / 3 * (image + 3 * 2 * 4 * limit) + codes) + 3 * 2 * 4 * limit * 2 + 16 * 1024
        assert len(r.content) <= bound, (len(r.content), bound)
        too_long = c.post("/v1/images", json={"prompt": word + "a", "n": 1})
        assert too_long.status_code == 422 and f"the limit is {limit}" in too_long.json()["detail"]
