"""POST /v1/images/generations with the official `openai` client against a running server (serve/openai_api.py):
images as base64 PNGs, and each unsupported field refused with OpenAI's error shape and the reason."""
import base64
import io

import pytest
from PIL import Image

pytest.importorskip("fastapi", reason="the server tests need the [serve] extra (fastapi, uvicorn)")
openai = pytest.importorskip("openai", reason="the OpenAI client (the test extra)")

from dalle_pytorch.serve.app import create_app  # noqa: E402
from tests.helpers import tiny_pipeline, tiny_vae  # noqa: E402
from tests.serve.helpers import live_server  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

RED = "a red circle on a blue background"


@pytest.fixture(scope="module")
def server():
    pipe = tiny_pipeline(vae=tiny_vae(num_layers=3))  # 4 x 4 codes of a 32 px image
    app = create_app(pipe, max_rows=16, max_images=4, api_key="sk-test", dalle_path="/somewhere/tiny.safetensors")
    with live_server(app) as url:
        yield url, pipe


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server[0] + "/v1", api_key="sk-test", max_retries=0, timeout=60)


def test_images_generate_gives_base64_pngs(client, server):
    size = server[1].model.vae.image_size
    answer = client.images.generate(prompt=RED, n=2, size=f"{size}x{size}", response_format="b64_json",
                                    model="tiny.safetensors", user="someone", quality="standard")
    assert isinstance(answer.created, int) and len(answer.data) == 2
    for image in answer.data:
        png = Image.open(io.BytesIO(base64.b64decode(image.b64_json)))
        assert png.format == "PNG" and png.size == (size, size)
        assert png.text["caption"] == RED  # the metadata our PNGs carry
    default = client.images.generate(prompt=RED)  # n 1, the model's size, b64_json
    assert len(default.data) == 1 and default.data[0].b64_json


@pytest.mark.parametrize("kwargs, param, words", [
    ({"size": "1024x1024"}, "size", "makes 32x32 images"),
    ({"response_format": "url"}, "response_format", "keep each image"),
    ({"n": 5}, "n", "between 1 and 4"),
    ({"n": 0}, "n", "between 1 and 4"),
    ({"style": "natural"}, "style", "not supported"),
    ({"quality": "hd"}, "quality", "not supported"),
])
def test_unsupported_fields_are_a_400_with_the_reason(client, kwargs, param, words):
    with pytest.raises(openai.BadRequestError) as err:
        client.images.generate(prompt=RED, **kwargs)
    body = err.value.body
    assert err.value.status_code == 400 and body["param"] == param and words in body["message"]


def test_another_model_is_a_404_naming_the_served_one(client):
    with pytest.raises(openai.NotFoundError, match="tiny.safetensors"):
        client.images.generate(prompt=RED, model="dall-e-3")


def test_bad_types_and_text_are_a_400_in_openai_shape(client, server):
    with pytest.raises(openai.BadRequestError) as err:
        client.images.generate(prompt=RED, extra_body={"n": "2"})
    assert err.value.status_code == 400 and err.value.body["param"] == "n"
    import httpx  # the client cannot send a lone surrogate; JSON can escape one

    r = httpx.post(server[0] + "/v1/images/generations", content=b'{"prompt": "a \\ud800 b"}',
                   headers={"Authorization": "Bearer sk-test", "Content-Type": "application/json"}, timeout=60)
    assert r.status_code == 400 and "lone surrogate" in r.json()["error"]["message"]


def test_the_key_is_required(server):
    wrong = openai.OpenAI(base_url=server[0] + "/v1", api_key="sk-wrong", max_retries=0, timeout=60)
    with pytest.raises(openai.AuthenticationError):
        wrong.images.generate(prompt=RED)
