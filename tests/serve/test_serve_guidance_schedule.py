"""The server's `cond_schedule` field (issue #28): accepted, recorded in the settings, the PNGs and the
reproduce line, the images those of generate with the same schedule (plain and speculative); bad values
are a 422 with the reason."""
import base64
import io
import json

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi", reason="the server tests need the [serve] extra (fastapi, uvicorn)")
pytest.importorskip("httpx", reason="FastAPI's TestClient needs httpx")

from fastapi.testclient import TestClient  # noqa: E402

from dalle_pytorch.generation.sampling import SamplingConfig  # noqa: E402
from dalle_pytorch.serve.app import create_app  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

RED = "a red circle on a blue background"


def _pixels(answer: dict) -> list:
    return [np.asarray(Image.open(io.BytesIO(base64.b64decode(im["png"])))) for im in answer["images"]]


@pytest.mark.parametrize("schedule", ["interval:0:0.5", "interval:0.25:1", "linear"])
@pytest.mark.parametrize("speculative", [None, 4])
def test_a_schedule_is_applied_and_recorded(pipe, schedule, speculative):
    body = {"prompt": RED, "n": 3, "seed": 5, "batch_size": 2, "cond_scale": 12.0, "cond_schedule": schedule}
    with TestClient(create_app(pipe, max_rows=16, speculative=speculative)) as client:
        r = client.post("/v1/images", json=body)
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["settings"]["cond_schedule"] == schedule
    assert f"--cond_scale 12.0 --cond_schedule {schedule}" in answer["reproduce"]
    png = Image.open(io.BytesIO(base64.b64decode(answer["images"][0]["png"])))
    assert json.loads(png.text["settings"])["cond_schedule"] == schedule
    sampling = SamplingConfig(filter_thres=0.9, cond_scale=12.0, cond_schedule=schedule)
    expected = pipe.generate(RED, num_images=3, seed=5, batch_size=2, sampling=sampling, speculative=speculative)
    constant = pipe.generate(RED, num_images=3, seed=5, batch_size=2, speculative=speculative,
                             sampling=SamplingConfig(filter_thres=0.9, cond_scale=12.0))
    got = _pixels(answer)
    assert all(np.array_equal(a, np.asarray(b)) for a, b in zip(got, expected.pil_images()))
    assert not all(np.array_equal(a, np.asarray(b)) for a, b in zip(got, constant.pil_images()))


def test_constant_guidance_records_no_schedule(pipe):
    with TestClient(create_app(pipe, max_rows=16)) as client:
        r = client.post("/v1/images", json={"prompt": RED, "n": 1, "seed": 0, "cond_scale": 3.0})
    assert r.status_code == 200 and "cond_schedule" not in r.json()["settings"]
    assert "--cond_schedule" not in r.json()["reproduce"]


@pytest.mark.parametrize("body, reason", [
    ({"prompt": RED, "cond_scale": 3, "cond_schedule": "cosine"},
     "cond_schedule must be one of constant, interval:A:B, linear, got 'cosine'"),
    ({"prompt": RED, "cond_scale": 3, "cond_schedule": "interval:0.5:0.2"},
     "cond_schedule interval:A:B needs 0 <= A < B <= 1"),
    ({"prompt": RED, "cond_schedule": "linear"}, "only has an effect with guidance: set cond_scale != 1"),
    ({"prompt": RED, "cond_scale": 3, "cond_schedule": 2}, "cond_schedule: Input should be a valid string"),
])
def test_bad_schedules_are_422_with_the_reason(pipe, body, reason):
    with TestClient(create_app(pipe, max_rows=16)) as client:
        for path in ("/v1/images", "/v1/images/stream"):
            r = client.post(path, json=body)
            assert r.status_code == 422 and reason in r.json()["detail"], r.text
