"""Canvases on the server: a `canvas` request's groups keep their own window cache beside the running
batch and advance one code per loop iteration: the images of Pipeline.generate(canvas=), bit for bit,
alone or beside other requests (plain or speculative); bad canvases are 422s before any work."""
import base64
import shlex

import numpy as np
import pytest
import torch

pytest.importorskip("fastapi", reason="the server tests need the [serve] extra (fastapi, uvicorn)")
pytest.importorskip("httpx", reason="FastAPI's TestClient needs httpx")

from fastapi.testclient import TestClient  # noqa: E402

from dalle_pytorch.cli.generate import parse_args  # noqa: E402
from dalle_pytorch.errors import GenerationError  # noqa: E402
from dalle_pytorch.generation.sampling import SamplingConfig  # noqa: E402
from dalle_pytorch.serve.app import create_app  # noqa: E402
from dalle_pytorch.serve.requests import ImageRequest, Variation  # noqa: E402
from dalle_pytorch.serve.scheduler import Scheduler  # noqa: E402
from tests.serve.helpers import png_pixels  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

RED = "a red circle on a blue background"


@pytest.mark.parametrize("speculative", [None, 4])
def test_canvases_beside_other_requests_equal_pipeline_generate(pipe, speculative):
    scheduler = Scheduler(pipe, max_rows=8, max_canvas_codes=64, speculative=speculative)
    guided = SamplingConfig(filter_thres=0.9, cond_scale=3.0)
    wide = scheduler.submit(ImageRequest(RED, n=3, seed=5, batch_size=2, canvas=(4, 7)))
    plain = scheduler.submit(ImageRequest("a green square on a white background", n=2, seed=1, batch_size=2))
    tall = scheduler.submit(ImageRequest(RED, n=2, seed=1, batch_size=2, canvas=(6, 4), sampling=guided))
    events = []
    previews = scheduler.submit(ImageRequest(RED, n=1, seed=2, canvas=(4, 8), preview_every=8), events.append)
    scheduler.run_until_idle()
    for ticket, kwargs in ((wide, dict(num_images=3, seed=5, batch_size=2, canvas=(4, 7))),
                           (tall, dict(num_images=2, seed=1, batch_size=2, canvas=(6, 4), sampling=guided)),
                           (previews, dict(num_images=1, seed=2, canvas=(4, 8)))):
        result = ticket.result(1)
        want = pipe.generate(RED, **kwargs)
        assert torch.equal(result.codes, want.codes) and torch.equal(result.images, want.images)
        assert result.settings["canvas"] == list(kwargs["canvas"])
    assert wide.result(1).images.shape == (3, 3, 32, 56)
    assert plain.result(1).images.shape == (2, 3, 32, 32)
    shown = [e.data for e in events if e.kind == "preview"]
    assert [p["filled"] for p in shown] == [8, 16, 24] and shown[0]["images"].shape == (1, 3, 32, 64)  # then "done"
    assert all(p["total"] == 32 for p in shown)


def test_a_canvas_request_over_http(client, pipe):
    r = client.post("/v1/images", json={"prompt": RED, "n": 2, "seed": 4, "batch_size": 2, "canvas": [4, 8]})
    assert r.status_code == 200, r.text
    answer = r.json()
    want = pipe.generate(RED, num_images=2, seed=4, batch_size=2, canvas=(4, 8))
    assert torch.equal(torch.tensor([im["codes"] for im in answer["images"]]), want.codes)
    for image, expected in zip(answer["images"], want.pil_images()):
        assert np.array_equal(png_pixels(image["png"]), np.asarray(expected))
    assert answer["settings"]["canvas"] == [4, 8]
    assert parse_args(shlex.split(answer["reproduce"])[2:]).canvas == (4, 8)


@pytest.mark.parametrize("canvas, message", [
    ([3, 8], "canvas must be at least the trained grid, 4x4 codes"),
    ([4], "canvas must be (height, width) in codes"),
    ([8, 9], "canvas 8x9 is 72 codes; this server samples at most 64 codes per image"),
])
def test_bad_canvases_are_422s(client, canvas, message):
    r = client.post("/v1/images", json={"prompt": RED, "n": 1, "canvas": canvas})
    assert r.status_code == 422 and message in r.json()["detail"], r.text


def test_canvas_refusals_before_any_work(pipe):
    with TestClient(create_app(pipe, max_canvas_codes=0)) as c:
        r = c.post("/v1/images", json={"prompt": RED, "canvas": [4, 8]})
        assert r.status_code == 422 and "canvas is off" in r.json()["detail"]
    scheduler = Scheduler(pipe, max_canvas_codes=64)
    codes = tuple(range(pipe.model.image_seq_len))
    with pytest.raises(GenerationError, match="does not combine with canvas"):
        scheduler.submit(ImageRequest(RED, canvas=(4, 8), variation=Variation(codes, 0.5)))
    assert scheduler.metrics()["accepted"] == 0


def test_one_canvas_at_a_time_and_the_others_wait_their_turn(pipe):
    scheduler = Scheduler(pipe, max_rows=8, max_canvas_codes=64, max_canvas_groups=1)
    first = scheduler.submit(ImageRequest(RED, n=1, seed=0, canvas=(4, 8)))
    second = scheduler.submit(ImageRequest(RED, n=1, seed=1, canvas=(4, 8)))
    scheduler.step()
    assert sum(g.canvas is not None for g in scheduler._running) == 1
    assert scheduler.metrics()["queue_length"] == 1
    scheduler.run_until_idle()
    assert first.result(1).codes.shape == second.result(1).codes.shape == (1, 32)


def test_a_canvas_answer_is_bounded_by_the_canvas_limit(pipe):
    """The largest canvas the server allows (max_canvas_codes): each image and its codes grow with the canvas,
    and the answer stays within n x (4/3 x the image + its codes) plus a constant, as test_serve_http's bound."""
    n, most = 4, 64
    with TestClient(create_app(pipe, max_images=n, max_canvas_codes=most)) as c:
        r = c.post("/v1/images", json={"prompt": RED, "n": n, "canvas": [8, 8]})
        assert r.status_code == 200, r.text
        image = max(len(base64.b64decode(im["png"])) for im in r.json()["images"])
        assert all(len(im["codes"]) == most for im in r.json()["images"])
        codes = most * (len(str(pipe.model.num_image_tokens - 1)) + 2) + len('"codes": [], ')
        assert len(r.content) <= n * (4 / 3 * image + codes) + 16 * 1024
