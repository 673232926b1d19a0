"""Fixtures the server tests share: one tiny pipeline per module (a 4 x 4 grid: 16 codes, so a request
takes 16 steps) and an in-process client of its app."""
import pytest

from tests.helpers import tiny_pipeline, tiny_vae


@pytest.fixture(scope="module")
def pipe():
    return tiny_pipeline(vae=tiny_vae(num_layers=3))


@pytest.fixture(scope="module")
def client(pipe):
    """FastAPI's TestClient over `create_app(pipe)` (modules that use it skip without the [serve] extra)."""
    from fastapi.testclient import TestClient

    from dalle_pytorch.serve.app import create_app

    with TestClient(create_app(pipe, max_rows=16, max_images=8)) as c:
        yield c
