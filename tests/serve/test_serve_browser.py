"""The server's page in a real browser: headless Chromium (Debian's `chromium`, installed by .ci/run)
driven by Playwright, against the demo model on a loopback port.  A screenshot of the page is kept in
test-artifacts/ (or $DALLE_TEST_ARTIFACTS)."""
from __future__ import annotations

import base64
import io
import os
import time
from pathlib import Path

import pytest
from PIL import Image

CHROMIUM = "/usr/bin/chromium"
IN_CI = bool(os.environ.get("DALLE_PYTORCH_CI"))  # .ci/run installs Chromium: there a missing one is a failure
pytestmark = [
    pytest.mark.browser,
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.skipif(not os.path.exists(CHROMIUM) and not IN_CI,
                       reason=f"no Chromium at {CHROMIUM}: apt-get install -y chromium (.ci/run installs it)"),
]
if not IN_CI:
    pytest.importorskip("fastapi", reason="the server needs the [serve] extra")
    pytest.importorskip("playwright.sync_api", reason="the browser tests need playwright (the test extra)")
from playwright import sync_api  # noqa: E402

from dalle_pytorch.pipeline.text_to_image import Pipeline  # noqa: E402
from dalle_pytorch.serve.app import create_app  # noqa: E402
from dalle_pytorch.synthetic import dominant_colors, parse_caption  # noqa: E402
from dalle_pytorch.train.datasets import image_to_tensor  # noqa: E402
from tests.serve.helpers import live_server  # noqa: E402

# Playwright's own browser download cannot work here: it drives the system Chromium
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ARTIFACTS = Path(os.environ.get("DALLE_TEST_ARTIFACTS", Path(__file__).resolve().parents[2] / "test-artifacts"))
TIMEOUT_MS = 120_000


def paced_demo() -> Pipeline:
    """The demo model with every decode step taking at least 8 ms, so that the first tab's request
    (16 batches of 1 on 2 rows: 512 steps, >= 4 s) surely outlasts the second tab's typing, however
    fast the machine: the second tab then has to wait in the queue.  The images are unchanged."""
    pipe = Pipeline.from_checkpoint("demo", device="cpu")
    step = pipe.model.decode_step

    def paced_step(*args, **kwargs):
        time.sleep(0.008)
        return step(*args, **kwargs)

    pipe.model.decode_step = paced_step  # an instance attribute: the model's class is untouched
    return pipe


@pytest.fixture(scope="module")
def server():
    app = create_app(paced_demo, max_rows=2, preview_every=8)
    with live_server(app) as url:
        yield url


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


def _generate(page, caption: str, n: int, seed: int) -> None:
    page.fill("#prompt", caption)
    page.fill("#n", str(n))
    page.fill("#seed", str(seed))
    page.fill("#batch_size", "1")
    page.click("#generate")


def _final_images(page) -> list[Image.Image]:
    sources = page.eval_on_selector_all("figure.final img", "els => els.map(e => [e.naturalWidth, e.src])")
    assert sources and all(width > 0 for width, _ in sources), "an image did not decode"
    return [Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))).convert("RGB") for _, src in sources]


def _check_colours(images, caption: str) -> None:
    _, colour, background = parse_caption(caption)
    found = [dominant_colors(image_to_tensor(im)) for im in images]
    assert sum(b == background for b, _ in found) >= 0.75 * len(found), found
    assert sum(c == colour for _, c in found) >= 0.75 * len(found), found


def test_two_tabs_generate_with_progress_previews_and_queue_places(server, browser, tmp_path):
    context = browser.new_context(viewport={"width": 1000, "height": 900}, accept_downloads=True)
    first, second = context.new_page(), context.new_page()
    for page in (first, second):
        page.goto(server)
    red, green = "a red circle on a blue background", "a green square on a white background"
    _generate(first, red, 16, 0)
    first.wait_for_function("window.dalleLog.includes('started')", timeout=TIMEOUT_MS)
    _generate(second, green, 4, 1)  # while the first tab's rows fill the batch
    for page in (first, second):
        page.wait_for_selector("figure.final img", timeout=TIMEOUT_MS)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    first.screenshot(path=str(ARTIFACTS / "serve_page.png"), full_page=True)

    for page, caption, n in ((first, red, 16), (second, green, 4)):
        log = page.evaluate("window.dalleLog")
        progress = page.evaluate("window.dalleProgress")
        assert "error" not in log, page.inner_text("#error")
        assert len(progress) > 2 and progress == sorted(progress) and progress[-1] == 1.0  # the bar moved
        assert page.eval_on_selector("#progress", "p => p.value === p.max")
        assert "preview" in log and log.index("preview") < log.index("done")  # previews came before the grid
        images = _final_images(page)
        assert len(images) == n
        _check_colours(images, caption)
        seeds = page.eval_on_selector_all("figure.final figcaption", "els => els.map(e => e.textContent)")
        assert seeds[0].startswith("seed ") and "--seed" in page.inner_text("#reproduce")
    assert 1 in second.evaluate("window.dalleQueue")  # it showed its place while it waited

    # a click on an image downloads its PNG with generate.py's text chunks
    with second.expect_download() as download:
        second.click("figure.final a >> nth=0")
    path = tmp_path / download.value.suggested_filename
    download.value.save_as(path)
    with Image.open(path) as png:
        assert png.text["caption"] == green and png.text["seed"] == "1" and '"batch_size": 1' in png.text["settings"]
    context.close()


def test_errors_are_shown_in_words_and_the_page_fits_a_phone(server, browser):
    page = browser.new_page(viewport={"width": 390, "height": 844})
    page.goto(server)
    page.fill("#prompt", "")
    page.click("#generate")
    page.wait_for_selector("#error:not([hidden])", timeout=TIMEOUT_MS)
    assert page.inner_text("#error") == "Error 422: prompt is empty: give a caption"
    page.fill("#prompt", "a red circle on a blue background")
    page.fill("#n", "99")
    page.click("#generate")
    page.wait_for_function("document.querySelector('#error').textContent.includes('n must be')", timeout=TIMEOUT_MS)
    assert "Error 422: n must be an integer from 1 to 16" in page.inner_text("#error")
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")  # no sideways scrolling
    page.screenshot(path=str(ARTIFACTS / "serve_page_phone.png"), full_page=True)
    page.close()
