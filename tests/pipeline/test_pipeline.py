"""Pipeline: captions in, PIL images with seeds and settings out; the per-step callback and previews."""
import numpy as np
import pytest
import torch

from dalle_pytorch.errors import GenerationError
from dalle_pytorch.pipeline.text_to_image import PREVIEW_GREY, preview_images
from tests.helpers import tiny_pipeline

CAPTIONS = ["a red circle on a blue background", "a green square on a black background"]


@pytest.fixture(scope="module")
def pipe():
    return tiny_pipeline()


def _arrays(images):
    return [np.asarray(im) for im in images]


def test_call_returns_pil_images_with_seeds_settings_and_equals_generate(pipe):
    out = pipe(CAPTIONS, num_images=3, seed=7, batch_size=2, cond_scale=2.0, top_k=0.8, temperature=0.9,
               negative_prompt="a black square on a white background")
    assert len(out.images) == 6 and out.images[0].size == (32, 32)
    assert out.seeds == [7, 7, 8, 7, 7, 8] and out.captions == [CAPTIONS[0]] * 3 + [CAPTIONS[1]] * 3
    assert out.settings["seed"] == 7 and out.settings["cond_scale"] == 2.0 and out.settings["filter_thres"] == 0.8
    assert out.settings["null_text"] == "a black square on a white background" and out.settings["batch_size"] == 2
    sampling = pipe.sampling_config(top_k=0.8, temperature=0.9, cond_scale=2.0)
    for i, caption in enumerate(CAPTIONS):
        alone = pipe.generate(caption, num_images=3, seed=7, batch_size=2, sampling=sampling,
                              negative_prompt="a black square on a white background")
        assert all(np.array_equal(a, b) for a, b in zip(_arrays(out.images[3 * i : 3 * i + 3]),
                                                        _arrays(alone.pil_images())))


def test_a_fresh_seed_is_drawn_and_recorded(pipe):
    out = pipe(CAPTIONS[0], num_images=1)
    again = pipe(CAPTIONS[0], num_images=1, seed=out.settings["seed"])
    assert out.seeds == again.seeds and np.array_equal(*_arrays([out.images[0], again.images[0]]))


@pytest.mark.parametrize("kwargs, reason", [
    (dict(top_k=1.0), "filter_thres must be in"),
    (dict(top_p=0.0), "top_p must be in"),
    (dict(temperature=0), "temperature must be > 0"),
    (dict(cond_scale=-1), "cond_scale must be >= 0"),
    (dict(negative_prompt="a red circle"), "only has an effect with guidance"),
    (dict(captions=["a red circle on a blue background , a red circle"]), "longer than"),
    (dict(captions=[]), "at least one caption"),
])
def test_bad_requests_raise_one_line_reasons(pipe, kwargs, reason):
    captions = kwargs.pop("captions", CAPTIONS)
    with pytest.raises(GenerationError, match=reason):
        pipe(captions, num_images=1, seed=0, **kwargs)


def test_callback_sees_codes_and_previews_without_changing_the_images(pipe):
    seen = []

    def callback(step):
        preview = step.preview()
        assert preview.shape == (step.codes.shape[0], 3, 32, 32)
        seen.append((step.batch, step.seed, step.filled, step.total, preview))

    out = pipe(CAPTIONS[0], num_images=3, seed=2, batch_size=2, callback=callback, callback_steps=10)
    plain = pipe(CAPTIONS[0], num_images=3, seed=2, batch_size=2)
    assert all(np.array_equal(a, b) for a, b in zip(_arrays(out.images), _arrays(plain.images)))
    filled = [10, 20, 30, 40, 50, 60, 64]
    assert [(b, s, f) for b, s, f, _, _ in seen] == [(0, 2, f) for f in filled] + [(1, 3, f) for f in filled]
    assert all(t == 64 for _, _, _, t, _ in seen)
    # mid-way: the bottom rows are grey; at the end the preview is the image itself
    _, _, _, _, mid = seen[2]  # 30 codes of 8x8: rows 0-2 and 6 codes of row 3
    assert torch.all(mid[:, :, 16:] == PREVIEW_GREY) and not torch.all(mid[:, :, :12] == PREVIEW_GREY)
    final = out.results[0].images[:2]
    assert torch.allclose(seen[6][4], final, atol=1 / 255)


def test_preview_of_no_codes_is_grey_and_of_all_codes_is_the_decode(pipe):
    vae = pipe.model.vae
    codes = torch.randint(0, 64, (2, 64))
    assert torch.all(preview_images(vae, codes, 0) == PREVIEW_GREY)
    assert torch.equal(preview_images(vae, codes, 64), vae.decode(codes).clamp(0, 1))
