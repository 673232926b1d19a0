"""The shipped demo model: it loads from the package, is small, and draws the colours its captions ask for."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from dalle_pytorch.checkpoint import load_checkpoint
from dalle_pytorch.pipeline.text_to_image import demo_path, resolve_checkpoint
from dalle_pytorch.synthetic import caption, combinations, dominant_colors, parse_caption
from dalle_pytorch.text.factory import HugTokenizer
from dalle_pytorch.train.datasets import image_to_tensor

ROOT = Path(__file__).resolve().parents[2]
DEMO_DIR = ROOT / "dalle_pytorch" / "demo"

# every colour appears once as a background and once as a shape colour, every shape at least once
CAPTIONS = [
    "a red circle on a blue background",
    "a yellow square on a black background",
    "a white triangle on a green background",
    "a blue square on a white background",
    "a green circle on a yellow background",
    "a black triangle on a red background",
]
MOST = 0.75  # "most images": at least 3 of every 4


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def demo():
    return load_checkpoint(demo_path())


def test_demo_ships_with_the_package_and_is_small(demo):
    path, is_demo = resolve_checkpoint(None)
    assert is_demo and path == demo_path() == DEMO_DIR / "dalle.safetensors"
    assert resolve_checkpoint("demo") == (path, True)
    assert path.stat().st_size < 5 * 2**20
    assert (DEMO_DIR / "README.md").is_file() and (DEMO_DIR / "tokenizer.json").is_file()
    assert demo.kind == "dalle" and demo.source == "dalle_pytorch"
    assert isinstance(demo.tokenizer, HugTokenizer)
    model = demo.model
    assert model.vae.image_size == 32 and model.image_seq_len == 64
    assert model.num_user_text_tokens == demo.tokenizer.vocab_size
    assert demo.metadata.get("kind") == "dalle" and demo.metadata.get("step", 0) > 0  # written by train_dalle.py
    # the shipped tokenizer file is the one stored in the checkpoint
    assert json.loads((DEMO_DIR / "tokenizer.json").read_text()) == json.loads(demo.tokenizer_description["json"])


def test_demo_tokenizer_reads_both_caption_forms(demo):
    tok = demo.tokenizer
    ids = tok.encode("a red circle on a blue background")
    assert len(ids) == 7 and 1 not in ids  # no [UNK]
    assert tok.encode("Red circle, BLUE background") == tok.encode("red circle , blue background")
    assert tok.decode(tok.tokenize(["a red circle on a blue background"], 8)[0]) == "a red circle on a blue background"


def _check(images, captions, per_caption: int):
    """Fraction of images with the right background and with the right shape colour, per caption."""
    report = {}
    for i, text in enumerate(captions):
        _, color, background = parse_caption(text)
        found = [dominant_colors(img) for img in images[i * per_caption:(i + 1) * per_caption]]
        report[text] = (sum(b == background for b, _ in found) / per_caption,
                        sum(c == color for _, c in found) / per_caption, found)
    return report


def test_demo_draws_the_requested_colours(demo):
    """6 captions x 4 images, cached, fixed seed, generate.py's default settings."""
    model, tok = demo.model, demo.tokenizer
    text = tok.tokenize(CAPTIONS, model.text_seq_len)
    images = model.generate_images(text, num_images=4, filter_thres=0.9, use_cache=True,
                                   generator=torch.Generator().manual_seed(0))
    assert images.shape == (24, 3, 32, 32)
    for text, (bg_ok, fg_ok, found) in _check(images, CAPTIONS, 4).items():
        assert bg_ok >= MOST, f"{text!r}: background right in {bg_ok:.0%} of the images: {found}"
        assert fg_ok >= MOST, f"{text!r}: shape colour right in {fg_ok:.0%} of the images: {found}"


def test_demo_over_every_caption(demo):
    """All 90 (shape, colour, background) captions, 2 images each: most images are right overall."""
    model, tok = demo.model, demo.tokenizer
    captions = [caption(*c) for c in combinations()]
    images = model.generate_images(tok.tokenize(captions, model.text_seq_len), num_images=2, filter_thres=0.9,
                                   generator=torch.Generator().manual_seed(1))
    report = _check(images, captions, 2)
    bg = sum(r[0] for r in report.values()) / len(report)
    fg = sum(r[1] for r in report.values()) / len(report)
    assert bg >= 0.9 and fg >= 0.8, f"background right in {bg:.0%}, shape colour in {fg:.0%} of {len(images)} images"


def test_generate_py_uses_the_demo_by_default(tmp_path):
    import dalle_pytorch.cli.generate as generate

    text = "a green square on a black background"
    (result,) = generate.main(generate.parse_args(["--text", text, "--seed", "3", "--num_images", "4",
                                                   "--outputs_dir", str(tmp_path), "--no_progress"]))
    record = json.loads(result.json_path.read_text())
    assert record["checkpoint"]["demo"] is True and record["checkpoint"]["path"] == str(demo_path())
    found = []
    for path in result.files:
        with Image.open(path) as im:
            assert im.text["caption"] == text
            found.append(dominant_colors(image_to_tensor(im.convert("RGB"))))
    assert sum(b == "black" for b, _ in found) >= 3 and sum(c == "green" for _, c in found) >= 3, found


def test_demo_cached_and_uncached_agree(demo):
    model, tok = demo.model, demo.tokenizer
    text = tok.tokenize(["a white circle on a red background"], model.text_seq_len)
    a = model.generate_images(text, num_images=2, return_codes=True, generator=torch.Generator().manual_seed(5))
    b = model.generate_images(text, num_images=2, return_codes=True, use_cache=False,
                              generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)


def _all_captions_accuracy(model, demo):
    """(background, shape colour) accuracy and the codes over all 90 captions, 4 images each, seed 1."""
    captions = [caption(*c) for c in combinations()]
    text = demo.tokenizer.tokenize(captions, model.text_seq_len)
    codes = model.generate_images(text, num_images=4, filter_thres=0.9, return_codes=True,
                                  generator=torch.Generator().manual_seed(1))
    report = _check(demo.model.vae.decode(codes).clamp(0, 1), captions, 4)
    return [sum(r[k] for r in report.values()) / len(report) for k in (0, 1)], codes


@pytest.fixture(scope="module")
def fp32_over_all_captions(demo):
    return _all_captions_accuracy(demo.model, demo)


# mode -> (the largest drop in colour accuracy allowed, the least share of codes equal to fp32's). int4 is
# allowed 3 points: it loses about 2 on the shape colour (docs/benchmarks.md: the 1-point target is not met)
REDUCED = {"bf16": (0.01, 0.9), "int8": (0.01, 0.9), "int4": (0.03, 0.7)}


@pytest.mark.parametrize("mode", list(REDUCED))
def test_demo_in_reduced_precision_draws_the_colours_of_fp32(demo, fp32_over_all_captions, mode):
    """The opt-in reduced precisions (bf16 weights and KV cache; int8 / int4 quantized weights) keep image
    quality: over all 90 captions, 4 images each, the colour accuracy is within REDUCED's points of fp32's,
    and most sampled codes are fp32's (the same seed; a code that differs changes the rest of its image)."""
    import copy

    from dalle_pytorch import quantize

    model = copy.deepcopy(demo.model)
    model = model.to(torch.bfloat16) if mode == "bf16" else quantize(model, mode)
    (accuracy, codes), (reference, fp32_codes) = _all_captions_accuracy(model, demo), fp32_over_all_captions
    text = demo.tokenizer.tokenize(CAPTIONS[:1], model.text_seq_len)
    assert model.generate_images(text, generator=torch.Generator().manual_seed(0)).dtype == torch.float32
    same = (codes == fp32_codes).float().mean().item()
    drop, share = REDUCED[mode]
    for k, what in enumerate(("background", "shape colour")):
        assert abs(accuracy[k] - reference[k]) <= drop, f"{what}: {mode} {accuracy}, fp32 {reference}; codes equal: {same:.1%}"
    assert same >= share, f"only {same:.1%} of the {mode} codes are fp32's"
