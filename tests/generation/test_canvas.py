"""Canvases larger than the trained grid (generation/canvas.py): taming's sliding-window rule, cached
== uncached == an independent reference written from taming's sample_conditional loop, kept codes."""
import pytest
import torch

from dalle_pytorch.generation.canvas import CanvasStats, window_origin
from dalle_pytorch.generation.sampling import SamplingConfig, next_codes
from tests.helpers import random_text, tiny_dalle

F = 8  # the tiny model's grid


@pytest.fixture(scope="module")
def model():
    return tiny_dalle("axial_row", shift_tokens=True).eval()


def seeded(seed=3):
    return torch.Generator().manual_seed(seed)


def taming_reference(model, text, canvas, sampling, generator):
    """taming-transformers' scripts/sample_conditional.py loop, written out: for each code (i, j) the
    window's local position (local_i, local_j) by its three cases, the window's codes before it
    through the uncached forward, the code drawn from the logits of that position."""
    h, w = canvas
    half = F // 2
    rows = text.shape[0]
    ids = model.text_ids(text)
    if sampling.guided:
        ids = torch.cat((ids, model.text_ids(torch.zeros_like(text))))
    codes = torch.zeros(rows, h, w, dtype=torch.long)
    for i in range(h):
        local_i = i if i <= half else (F - (h - i) if h - i < half else half)
        for j in range(w):
            local_j = j if j <= half else (F - (w - j) if w - j < half else half)
            i0, j0 = i - local_i, j - local_j
            window = codes[:, i0 : i0 + F, j0 : j0 + F].reshape(rows, F * F)[:, : local_i * F + local_j]
            if sampling.guided:
                window = torch.cat((window, window))
            logits = model.last_logits(ids, window)[:, model.num_text_tokens :]
            codes[:, i, j] = next_codes(logits, sampling, generator, rows=rows, vocab_size=model.total_tokens)
    return codes.flatten(1)


def test_window_origin_is_tamings_rule_and_stays_inside():
    for h in (8, 9, 13, 16):
        for i in range(h):
            half = F // 2
            local_i = i if i <= half else (F - (h - i) if h - i < half else half)
            assert window_origin(i, 0, (h, 8), F) == (i - local_i, 0)
    for f in (3, 5, 7):  # odd grids: taming's middle case can reach one code past the border; ours stops at it
        for h in range(f, 3 * f):
            for i in range(h):
                i0, _ = window_origin(i, 0, (h, f), f)
                assert 0 <= i0 <= h - f and i0 <= i < i0 + f


@pytest.mark.parametrize("canvas,cond_scale", [((8, 16), 1.0), ((12, 10), 3.0)])
def test_cached_canvas_equals_tamings_loop(model, canvas, cond_scale):
    text = random_text()
    sampling = SamplingConfig(cond_scale=cond_scale)
    expected = taming_reference(model, text, canvas, sampling, seeded())
    cached = model.generate_images(text, canvas=canvas, cond_scale=cond_scale, generator=seeded(), return_codes=True)
    uncached = model.generate_images(text, canvas=canvas, cond_scale=cond_scale, generator=seeded(),
                                     return_codes=True, use_cache=False)
    assert cached.shape == (2, canvas[0] * canvas[1])
    assert torch.equal(uncached, expected)
    assert torch.equal(cached, expected)


@pytest.mark.parametrize("attn_type", ["full", "conv_like", "sparse"])
@pytest.mark.parametrize("kwargs", [{}, {"rotary_emb": False, "shift_tokens": True}, {"reversible": True}])
def test_cached_canvas_equals_uncached_for_every_pattern(attn_type, kwargs):
    model = tiny_dalle(attn_type, **kwargs).eval()
    text = random_text()
    cached = model.generate_images(text, canvas=(9, 11), generator=seeded(), return_codes=True)
    uncached = model.generate_images(text, canvas=(9, 11), generator=seeded(), return_codes=True, use_cache=False)
    assert torch.equal(cached, uncached)


def test_a_guidance_schedule_runs_over_the_canvas(model, monkeypatch):
    """cond_schedule over the canvas's H * W codes in raster order: interval:0:1 is the constant scale;
    an interval guides only its positions, a ramp rises to cond_scale at the last code (the scale of
    every draw recorded); cached == uncached."""
    import dalle_pytorch.generation.canvas as canvas_module

    text = random_text()
    kw = dict(canvas=(8, 12), cond_scale=3.0, return_codes=True)
    constant = model.generate_images(text, generator=seeded(), **kw)
    assert torch.equal(model.generate_images(text, generator=seeded(), cond_schedule="interval:0:1", **kw), constant)
    scales = []

    def spy(*args, cond_scale=None, **kwargs):
        scales.append(cond_scale)
        return next_codes(*args, cond_scale=cond_scale, **kwargs)

    monkeypatch.setattr(canvas_module, "next_codes", spy)
    half = model.generate_images(text, generator=seeded(), cond_schedule="interval:0:0.5", **kw)
    assert scales == [3.0] * 48 + [1.0] * 48
    assert torch.equal(half, model.generate_images(text, generator=seeded(), cond_schedule="interval:0:0.5",
                                                   use_cache=False, **kw))
    scales.clear()
    model.generate_images(text, generator=seeded(), cond_schedule="linear", **kw)
    assert scales[0] == 1.0 and scales[-1] == 3.0 and scales == sorted(scales) and len(scales) == 96


@pytest.mark.parametrize("cond_scale", [1.0, 3.0])
def test_a_canvas_of_the_trained_size_is_plain_decoding(model, cond_scale):
    text = random_text()
    stats = CanvasStats()
    canvas = model.generate_images(text, canvas=(F, F), cond_scale=cond_scale, generator=seeded(), return_codes=True,
                                   stats=stats)
    plain = model.generate_images(text, cond_scale=cond_scale, generator=seeded(), return_codes=True)
    assert torch.equal(canvas, plain)
    assert (stats.steps, stats.prefills) == (F * F - 1, 0)  # the window never moves


def test_the_window_is_cached_while_it_stays(model):
    """On a canvas twice as wide, the window stays put for the codes within F // 2 of each side
    (one-token steps) and moves, its prefix run again, in the middle and at each new row."""
    stats = CanvasStats()
    h, w = 8, 16
    model.generate_images(random_text(), canvas=(h, w), generator=seeded(), return_codes=True, stats=stats)
    moves = 0
    previous = None
    for n in range(h * w):
        i, j = divmod(n, w)
        i0, j0 = window_origin(i, j, (h, w), F)
        p = (i - i0) * F + (j - j0)
        moves += previous is not None and previous != (i0, j0, p - 1) and p > 0
        previous = (i0, j0, p)
    assert stats.prefills == moves and stats.steps == h * w - 1 - moves
    assert stats.codes == 2 * h * w
    assert stats.prefills > 0 and stats.steps > 0  # both kinds happen on this canvas


def test_images_of_a_canvas_decode_as_one_image(model):
    images = model.generate_images(random_text(), canvas=(8, 12), generator=seeded())
    assert images.shape == (2, 3, 32, 48) and images.dtype == torch.float32
    assert 0.0 <= float(images.min()) and float(images.max()) <= 1.0


def test_outpainting_keeps_the_image_codes_where_it_is_placed(model):
    text = random_text()
    img = model.generate_images(text[:1], generator=seeded(5), return_codes=True)  # (1, 64) codes of an "image"
    grid = img.view(F, F)
    out = model.generate_images(text, canvas=(8, 16), img=img, img_offset=(0, 8), generator=seeded(),
                                return_codes=True).view(2, 8, 16)
    assert torch.equal(out[:, :, 8:], grid.expand(2, F, F))
    assert not torch.equal(out[0, :, :8], out[1, :, :8])  # the rest is sampled (per caption)
    cached = out
    uncached = model.generate_images(text, canvas=(8, 16), img=img, img_offset=(0, 8), generator=seeded(),
                                     return_codes=True, use_cache=False).view(2, 8, 16)
    assert torch.equal(cached, uncached)


def test_priming_and_masks_on_a_canvas(model):
    text = random_text()
    img = model.generate_images(text[:1], generator=seeded(5), return_codes=True)
    primed = model.generate_images(text, canvas=(12, 8), img=img, num_init_img_tokens=20, generator=seeded(),
                                   return_codes=True)
    assert torch.equal(primed[:, :20], img[:, :20].expand(2, 20))
    assert not torch.equal(primed[:, 20:64], img[:, 20:].expand(2, 44))
    mask = torch.zeros(F, F, dtype=torch.bool)
    mask[:, :3] = True  # keep the image's three left columns
    masked = model.generate_images(text, canvas=(8, 12), img=img, img_offset=(0, 4), mask=mask, generator=seeded(),
                                   return_codes=True).view(2, 8, 12)
    assert torch.equal(masked[:, :, 4:7], img.view(F, F)[:, :3].expand(2, F, 3))
    uncached = model.generate_images(text, canvas=(8, 12), img=img, img_offset=(0, 4), mask=mask, generator=seeded(),
                                     return_codes=True, use_cache=False).view(2, 8, 12)
    assert torch.equal(masked, uncached)


@pytest.mark.parametrize("kwargs,message", [
    (dict(canvas=(7, 16)), "at least the trained grid, 8x8"),
    (dict(canvas=(8.0, 16)), "two integers"),
    (dict(canvas=8), "two integers"),
    (dict(canvas=(8, 16), compile=True), "does not combine with compile"),
    (dict(canvas=(8, 16), speculative=4), "does not combine with speculative"),
    (dict(canvas=(8, 16), mask=torch.ones(8, 8)), "need img"),
    (dict(canvas=(8, 16), img=torch.zeros(1, 64, dtype=torch.long), img_offset=(0, 9)), r"column in \[0, 8\]"),
])
def test_bad_canvases_are_refused(model, kwargs, message):
    with pytest.raises(ValueError, match=message):
        model.generate_images(random_text(), **kwargs)


def test_pipeline_canvas_records_it_and_previews_the_whole_canvas():
    from tests.helpers import tiny_pipeline

    pipe = tiny_pipeline()
    previews = []
    out = pipe.generate("a red circle", num_images=2, seed=1, canvas=(8, 12), callback_steps=40,
                        callback=lambda step: previews.append((step.filled, step.total, step.preview().shape)))
    assert out.images.shape == (2, 3, 32, 48) and out.codes.shape == (2, 96)
    assert out.settings["canvas"] == [8, 12]
    assert previews[-1] == (96, 96, (2, 3, 32, 48)) and previews[0][0] == 40
    direct = pipe.model.generate_images(pipe.tokenize(["a red circle"]), canvas=(8, 12), num_images=2,
                                        filter_thres=0.9, generator=torch.Generator().manual_seed(1), return_codes=True)
    assert torch.equal(out.codes, direct)


def test_a_canvas_with_a_quantized_model():
    """Quantized decoding composes with a canvas: int8 and int4 layers run the window's steps and prefills
    (cached == uncached)."""
    from dalle_pytorch import quantize

    for mode in ("int8", "int4"):
        model = tiny_dalle("full").eval()
        quantize(model, mode)
        text = random_text()
        cached = model.generate_images(text, canvas=(8, 12), generator=seeded(), return_codes=True)
        uncached = model.generate_images(text, canvas=(8, 12), generator=seeded(), return_codes=True, use_cache=False)
        assert torch.equal(cached, uncached), mode
