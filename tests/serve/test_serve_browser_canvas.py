"""The page's canvas control in headless Chromium (as test_serve_browser.py): "twice as wide" posts a canvas of
twice the grid's width (from /v1/config), previews and final images of that size come back, their variations
button is disabled, and canvases beyond the server's max_canvas_codes are not offered."""
from __future__ import annotations

import base64
import io
import json
import os

import pytest
from PIL import Image

from tests.serve.test_serve_browser import ARGS, CHROMIUM, IN_CI, TIMEOUT_MS

pytestmark = [
    pytest.mark.browser,
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.skipif(not os.path.exists(CHROMIUM) and not IN_CI,
                       reason=f"no Chromium at {CHROMIUM}: apt-get install -y chromium (.ci/run installs it)"),
]
from playwright import sync_api  # noqa: E402

from dalle_pytorch.serve.app import create_app  # noqa: E402
from tests.helpers import tiny_pipeline  # noqa: E402
from tests.serve.helpers import live_server  # noqa: E402

RED = "a red circle on a blue background"


def test_the_canvas_control_posts_a_wider_canvas_and_shows_it():
    pipe = tiny_pipeline()  # 8 x 8 codes, 32 px
    with live_server(create_app(pipe, max_rows=4, max_canvas_codes=2 * 64)) as url, sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1000, "height": 900})
        posted = []
        page.on("request", lambda r: posted.append(json.loads(r.post_data)) if r.method == "POST" else None)
        page.goto(url)
        page.wait_for_function("document.querySelector('#canvas option[value=\"2x2\"]').disabled",
                               timeout=TIMEOUT_MS)  # /v1/config read: 4 x 64 codes exceed the server's 128
        page.fill("#prompt", RED)
        page.fill("#n", "2")
        page.fill("#seed", "3")
        page.fill("#batch_size", "2")
        page.select_option("#canvas", "1x2")
        page.click("#generate")
        page.wait_for_function("window.dalleLog.filter(e => e === 'done').length === 1", timeout=TIMEOUT_MS)
        log = page.evaluate("window.dalleLog")
        assert "error" not in log, page.inner_text("#error")
        assert posted[0]["canvas"] == [8, 16]
        srcs = page.eval_on_selector_all("figure.final img", "els => els.map(e => e.src)")
        assert len(srcs) == 2
        sizes = {Image.open(io.BytesIO(base64.b64decode(s.split(",", 1)[1]))).size for s in srcs}
        assert sizes == {(64, 32)}
        assert page.locator("figure.final button.vary:disabled").count() == 2
        assert page.locator("#canvas option[value='2x1']").is_enabled()
        assert page.locator("#canvas option[value='2x2']").is_disabled()
        browser.close()
