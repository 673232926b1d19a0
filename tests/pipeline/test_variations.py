"""Pipeline.variations: strength 0 is the image itself, strength 1 free sampling, the kept codes are kept
exactly in both modes, pixels and codes give the same variations, and it composes with speculative
decoding, guidance and int8 weights."""
import math

import pytest
import torch

from dalle_pytorch.errors import GenerationError
from dalle_pytorch.models.quantize import quantize
from dalle_pytorch.pipeline.text_to_image import Pipeline
from dalle_pytorch.pipeline.variations import plan_variation
from tests.helpers import demo_tokenizer, tiny_pipeline

pytestmark = pytest.mark.usefixtures("one_thread")

RED = "a red circle on a blue background"


@pytest.fixture(scope="module")
def pipe():
    return tiny_pipeline()  # 8 x 8 codes


@pytest.fixture(scope="module")
def source(pipe):
    return pipe.generate(RED, num_images=1, seed=0)


@pytest.mark.parametrize("mode", ["suffix", "random"])
def test_strength_0_is_the_image_itself_nothing_sampled(pipe, source, mode):
    out = pipe.variations(source.codes[0], 3, 0.0, caption=RED, mode=mode, seed=4)
    assert torch.equal(out.codes, source.codes.expand(3, -1))
    assert torch.equal(out.images, source.images.expand(3, -1, -1, -1))
    assert out.forward_passes == [] and out.seeds == [4, 4, 4]
    assert out.settings["variation"]["kept_codes"] == pipe.model.image_seq_len


def test_strength_1_samples_freely_as_generate(pipe, source):
    for mode in ("suffix", "random"):
        out = pipe.variations(source.codes[0], 3, 1.0, caption=RED, mode=mode, seed=5, batch_size=2)
        free = pipe.generate(RED, num_images=3, seed=5, batch_size=2)
        assert torch.equal(out.codes, free.codes) and torch.equal(out.images, free.images)
        assert out.settings["variation"]["kept_codes"] == 0


@pytest.mark.parametrize("mode", ["suffix", "random"])
@pytest.mark.parametrize("strength", [0.25, 0.5, 0.75])
def test_the_kept_codes_are_kept_exactly(pipe, source, mode, strength):
    n_codes = pipe.model.image_seq_len
    out = pipe.variations(source.codes[0], 4, strength, caption=RED, mode=mode, seed=2, batch_size=2)
    plan = plan_variation(source.codes, strength, mode, seed=2)
    assert plan.kept == n_codes - round(strength * n_codes)
    if mode == "suffix":  # the first codes in raster order
        assert torch.equal(plan.keep, torch.arange(n_codes) < plan.kept)
    else:  # a seeded random set: the same one for the same seed, another for another seed
        assert torch.equal(plan.keep, plan_variation(source.codes, strength, mode, seed=2).keep)
        assert not torch.equal(plan.keep, plan_variation(source.codes, strength, mode, seed=3).keep)
    assert torch.equal(out.codes[:, plan.keep], source.codes[:, plan.keep].expand(4, -1))
    assert bool((out.codes[:, ~plan.keep] != source.codes[:, ~plan.keep]).any())  # something was resampled
    assert len({tuple(c.tolist()) for c in out.codes}) > 1  # and differently per variation
    assert out.settings["variation"] == plan.settings()
    assert out.settings["num_init_img_tokens"] == (plan.kept if mode == "suffix" else None)


def test_pixels_and_pil_images_are_encoded_once_and_equal_the_codes(pipe, source):
    codes = pipe.model.vae.get_codebook_indices(source.images)
    by_codes = pipe.variations(codes[0], 2, 0.5, caption=RED, seed=1)
    for image in (source.images, source.images[0], source.pil_images()[0], codes, codes[0].tolist()):
        out = pipe.variations(image, 2, 0.5, caption=RED, seed=1)
        assert torch.equal(out.codes, by_codes.codes)


def test_bad_input_is_one_line_before_any_work(pipe, source):
    codes = source.codes[0]
    for strength in (-0.1, 1.5, float("nan"), True, "0.5", None):
        with pytest.raises(GenerationError, match=r"^strength must be a number in \[0, 1\]"):
            pipe.variations(codes, 2, strength)
    with pytest.raises(GenerationError, match="^mode must be one of suffix, random, got 'middle'"):
        pipe.variations(codes, 2, 0.5, mode="middle")
    for n in (0, -1, 1.5, True):
        with pytest.raises(GenerationError, match="^n must be an integer >= 1"):
            pipe.variations(codes, n, 0.5)
    with pytest.raises(GenerationError, match=r"^image must be a PIL image.*codes are 64 integers, got \(1, 63\)"):
        pipe.variations(codes[:63], 2, 0.5)
    with pytest.raises(GenerationError, match=r"^image: image codes must be in \[0, 64\)"):
        pipe.variations(torch.full((64,), 64), 2, 0.5)
    with pytest.raises(GenerationError, match="^image must be .*codes are 64 integers, got \\(1, 64\\) torch.float32"):
        pipe.variations(codes.float(), 2, 0.5)
    with pytest.raises(GenerationError, match=r"^image must be .*got \(2, 64\)"):
        pipe.variations(torch.stack((codes, codes)), 2, 0.5)
    with pytest.raises(GenerationError, match="^image: image pixels must be in"):
        pipe.variations(source.images * 2, 2, 0.5)
    with pytest.raises(GenerationError, match="^image must be .*got str"):
        pipe.variations("x.png", 2, 0.5)
    with pytest.raises(GenerationError, match="leave out mask, num_init_img_tokens"):
        pipe.variations(codes, 2, 0.5, mask=torch.ones(8, 8), num_init_img_tokens=3)
    with pytest.raises(GenerationError, match="^variations do not combine with canvas yet"):
        pipe.variations(codes, 2, 0.5, canvas=(8, 16))


@pytest.mark.parametrize("mode", ["suffix", "random"])
def test_composes_with_speculative_decoding_and_guidance(pipe, source, mode):
    """Speculative windows verify drafts after the kept codes (priming) or around them (masked completion):
    the kept codes stay, and at strength 1 the samples are generate(speculative=4)'s."""
    plan = plan_variation(source.codes, 0.5, mode, seed=3)
    for kwargs in ({"speculative": 4}, {"speculative": 4, "sampling": pipe.sampling_config(cond_scale=2.0)}):
        out = pipe.variations(source.codes[0], 2, 0.5, caption=RED, mode=mode, seed=3, **kwargs)
        assert torch.equal(out.codes[:, plan.keep], source.codes[:, plan.keep].expand(2, -1))
        assert out.settings["speculative"] == 4
        assert max(out.forward_passes) < pipe.model.image_seq_len - plan.kept  # fewer passes than codes
    free = pipe.variations(source.codes[0], 2, 1.0, caption=RED, mode=mode, seed=3, speculative=4)
    assert torch.equal(free.codes, pipe.generate(RED, num_images=2, seed=3, speculative=4).codes)


def test_composes_with_int8_weights(pipe, source):
    quantized = Pipeline(quantize(tiny_pipeline().model, "int8"), demo_tokenizer())
    for mode in ("suffix", "random"):
        plan = plan_variation(source.codes, 0.25, mode, seed=0)
        out = quantized.variations(source.codes[0], 2, 0.25, caption=RED, mode=mode, speculative=4)
        assert torch.equal(out.codes[:, plan.keep], source.codes[:, plan.keep].expand(2, -1))
        assert out.settings["quantize"] == "int8" and out.settings["variation"]["mode"] == mode


def test_an_empty_caption_is_allowed_and_generate_returns_codes(pipe, source):
    out = pipe.variations(source.codes[0], 2, 0.5)
    assert out.caption == "" and out.codes.shape == (2, pipe.model.image_seq_len)
    assert torch.equal(pipe.model.vae.decode(source.codes).clamp(0, 1), source.images)
    side = math.isqrt(pipe.model.image_seq_len)
    assert out.images.shape[-1] == pipe.model.vae.image_size and side == pipe.model.fmap_size
