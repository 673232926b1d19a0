"""Variations on the server: every answer carries each image's codes, `variation_of` posts them back (no
re-encoding) and the scheduler starts the rows with the kept codes filled: the images of
Pipeline.variations, bit for bit, alone or beside other requests; bad fields are 422s before any work."""
import shlex

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("fastapi", reason="the server tests need the [serve] extra (fastapi, uvicorn)")
pytest.importorskip("httpx", reason="FastAPI's TestClient needs httpx")

from fastapi.testclient import TestClient  # noqa: E402

from dalle_pytorch.cli.generate import variation_source, parse_args  # noqa: E402
from dalle_pytorch.serve.app import create_app  # noqa: E402
from dalle_pytorch.serve.requests import ImageRequest, Variation  # noqa: E402
from dalle_pytorch.serve.scheduler import Scheduler  # noqa: E402
from tests.serve.helpers import png_pixels  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

RED = "a red circle on a blue background"


def _expected(images: torch.Tensor) -> list:
    return [np.asarray(Image.fromarray((im.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))) for im in images]


def test_answers_carry_codes_and_variations_post_them_back(client, pipe):
    first = client.post("/v1/images", json={"prompt": RED, "n": 2, "seed": 3, "batch_size": 2}).json()
    codes = first["images"][0]["codes"]
    assert len(codes) == pipe.model.image_seq_len
    assert torch.equal(pipe.generate(RED, num_images=2, seed=3, batch_size=2).codes,
                       torch.tensor([im["codes"] for im in first["images"]]))
    for mode, strength, cond_scale in (("suffix", 0.25, 1.0), ("random", 0.5, 2.0), ("suffix", 0.0, 1.0),
                                       ("random", 1.0, 1.0)):
        body = {"prompt": RED, "n": 3, "seed": 7, "batch_size": 2, "cond_scale": cond_scale,
                "variation_of": {"codes": codes, "strength": strength, "mode": mode}}
        r = client.post("/v1/images", json=body)
        assert r.status_code == 200, r.text
        answer = r.json()
        want = pipe.variations(torch.tensor(codes), 3, strength, caption=RED, mode=mode, seed=7, batch_size=2,
                               sampling=pipe.sampling_config(cond_scale=cond_scale))
        assert torch.equal(torch.tensor([im["codes"] for im in answer["images"]]), want.codes)
        for image, expected in zip(answer["images"], want.pil_images()):
            assert np.array_equal(png_pixels(image["png"]), np.asarray(expected))
        assert answer["settings"]["variation"] == want.settings["variation"]
        assert answer["settings"].get("num_init_img_tokens") == want.settings["num_init_img_tokens"]
        # the reproduce line names the codes themselves: generate.py keeps exactly these
        argv = shlex.split(answer["reproduce"])[2:]
        args = parse_args(argv)
        assert args.strength == strength and args.variation_mode == mode
        assert variation_source(args, pipe.model)[0].tolist() == [codes]


def test_a_variation_beside_other_requests_equals_it_alone(pipe):
    """Rows that start primed (other positions) share the running batch with ordinary rows."""
    codes = pipe.generate(RED, num_images=1, seed=0).codes[0]
    scheduler = Scheduler(pipe, max_rows=16)
    other = scheduler.submit(ImageRequest("a green square on a white background", n=2, seed=1, batch_size=2))
    variations = {mode: scheduler.submit(ImageRequest("", n=2, seed=2, batch_size=1,
                                                      variation=Variation(tuple(codes.tolist()), 0.5, mode)))
                  for mode in ("suffix", "random")}
    scheduler.run_until_idle()
    assert scheduler.batch.row_steps > 0  # the primed rows were at other positions than the others
    for mode, ticket in variations.items():
        want = pipe.variations(codes, 2, 0.5, mode=mode, seed=2, batch_size=1)
        assert torch.equal(ticket.result(1).codes, want.codes)
    assert torch.equal(other.result(1).codes,
                       pipe.generate("a green square on a white background", num_images=2, seed=1, batch_size=2).codes)


def test_speculative_rows_start_after_the_kept_codes(pipe):
    codes = pipe.generate(RED, num_images=1, seed=0).codes[0]
    with TestClient(create_app(pipe, max_rows=8, speculative=4)) as c:
        for mode in ("suffix", "random"):
            body = {"prompt": RED, "n": 2, "seed": 1, "batch_size": 2,
                    "variation_of": {"codes": codes.tolist(), "strength": 0.75, "mode": mode}}
            answer = c.post("/v1/images", json=body).json()
            want = pipe.variations(codes, 2, 0.75, caption=RED, mode=mode, seed=1, batch_size=2, speculative=4)
            assert torch.equal(torch.tensor([im["codes"] for im in answer["images"]]), want.codes)
            assert answer["settings"]["speculative"] == 4


@pytest.mark.parametrize("variation, reason", [
    ({"codes": [1] * 15}, "variation_of.codes must hold this model's 16 codes, got 15"),
    ({"codes": [1] * 15 + [64]}, r"variation_of.codes must be in [0, 64), got 64"),
    ({"codes": [1] * 15 + [-1]}, r"variation_of.codes must be in [0, 64), got -1"),
    ({"codes": [1] * 15 + ["1"]}, "variation_of.codes.15: Input should be a valid integer"),
    ({"codes": [1] * 15 + [1.5]}, "variation_of.codes.15: Input should be a valid integer"),
    ({"codes": [1] * 16, "strength": 1.5}, "variation_of.strength must be a number in [0, 1]"),
    ({"codes": [1] * 16, "strength": -0.5}, "variation_of.strength must be a number in [0, 1]"),
    ({"codes": [1] * 16, "mode": "middle"}, "variation_of.mode must be one of suffix, random, got 'middle'"),
    ({"codes": [1] * 16, "extra": 1}, "variation_of.extra: Extra inputs are not permitted"),
    ({"strength": 0.5}, "variation_of.codes: Field required"),
])
def test_bad_variations_are_422s_with_the_reason(client, variation, reason):
    r = client.post("/v1/images", json={"prompt": RED, "n": 1, "variation_of": variation})
    assert r.status_code == 422 and reason in r.json()["detail"], r.text
    r = client.post("/v1/images/stream", json={"prompt": RED, "n": 1, "variation_of": variation})
    assert r.status_code == 422 and reason in r.json()["detail"], r.text


def test_an_empty_prompt_is_allowed_for_variations_only(client):
    assert client.post("/v1/images", json={"prompt": "", "n": 1}).status_code == 422
    r = client.post("/v1/images", json={"prompt": "", "n": 1, "seed": 0,
                                        "variation_of": {"codes": [3] * 16, "strength": 0.5}})
    assert r.status_code == 200, r.text
    assert r.json()["images"][0]["codes"][:8] == [3] * 8
