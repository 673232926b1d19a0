"""The page's "variations" button in headless Chromium (as test_serve_browser.py): under every result, it posts
that image's codes back with the page's strength and mode, and shows the variations, whose kept codes are the
image's own."""
from __future__ import annotations

import base64
import io
import json
import os

import numpy as np
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


def test_the_variations_button_posts_the_codes_and_shows_the_variations():
    pipe = tiny_pipeline()  # 8 x 8 codes
    with live_server(create_app(pipe, max_rows=4)) as url, sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1000, "height": 900})
        posted = []
        page.on("request", lambda r: posted.append(json.loads(r.post_data)) if r.method == "POST" else None)
        page.goto(url)
        page.fill("#prompt", RED)
        page.fill("#n", "2")
        page.fill("#seed", "3")
        page.fill("#batch_size", "2")
        page.click("#generate")
        page.wait_for_function("window.dalleLog.filter(e => e === 'done').length === 1", timeout=TIMEOUT_MS)
        assert page.locator("figure.final button.vary").count() == 2  # one under every result

        page.fill("#strength", "0.25")
        page.select_option("#variation_mode", "random")
        page.click("figure.final button.vary >> nth=1")
        page.wait_for_function("window.dalleLog.filter(e => e === 'done').length === 2", timeout=TIMEOUT_MS)
        log = page.evaluate("window.dalleLog")
        assert "error" not in log, page.inner_text("#error")
        assert log.index("variations") < len(log) - 1 - log[::-1].index("done")

        first, second = posted
        source = pipe.generate(RED, num_images=2, seed=3, batch_size=2).codes[1]
        assert second["variation_of"] == {"codes": source.tolist(), "strength": 0.25, "mode": "random"}
        assert second["prompt"] == RED and "variation_of" not in first
        want = pipe.variations(source, 2, 0.25, caption=RED, mode="random", seed=3, batch_size=2)
        shown = page.eval_on_selector_all("figure.final img", "els => els.map(e => e.naturalWidth)")
        assert shown == [32, 32]
        assert "--variations_of codes:" in page.inner_text("#reproduce")
        assert "--strength 0.25 --variation_mode random" in page.inner_text("#reproduce")
        # the images shown are the variations: the answer's PNGs equal Pipeline.variations' pixels
        sources = page.eval_on_selector_all("figure.final img", "els => els.map(e => e.src)")
        for src, expected in zip(sources, want.pil_images()):
            got = Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))).convert("RGB")
            assert np.array_equal(np.asarray(got), np.asarray(expected))
        browser.close()
