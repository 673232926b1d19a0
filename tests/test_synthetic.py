import random

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from dalle_pytorch.synthetic import (COLORS, SHAPES, caption, dominant_colors, make_dataset, paraphrase, parse_caption,
                                     render, sample_captions)
from dalle_pytorch.train.datasets import TextImageDataset, image_to_tensor

COMBOS = [(s, c, b) for s in SHAPES for c in COLORS for b in COLORS if c != b]


class FakeTokenizer:
    def tokenize(self, texts, context_length=256, truncate_text=False):
        out = torch.zeros(len(texts), context_length, dtype=torch.long)
        for i, text in enumerate(texts):
            ids = [ord(c) for c in text][:context_length]
            out[i, : len(ids)] = torch.tensor(ids)
        return out


def decode(tokens):
    return "".join(chr(t) for t in tokens.tolist() if t)


def test_palette():
    assert 5 <= len(COLORS) <= 8 and SHAPES == ("circle", "square", "triangle")
    values = list(COLORS.values())
    for i, a in enumerate(values):
        for b in values[i + 1 :]:
            assert sum((x - y) ** 2 for x, y in zip(a, b)) ** 0.5 > 100


def test_render_every_colour_pair_is_recovered():
    rng = random.Random(0)
    for shape, color, background in COMBOS:
        img = render(shape, color, background, 32, rng)
        assert img.size == (32, 32) and img.mode == "RGB"
        assert dominant_colors(image_to_tensor(img)) == (background, color), (shape, color, background)


@settings(max_examples=40, deadline=None)
@given(
    combo=st.sampled_from(COMBOS),
    size=st.integers(16, 64),
    seed=st.integers(0, 2**32),
)
@example(combo=("triangle", "red", "green"), size=23, seed=15114)  # the smallest triangle rounds below 8%
@example(combo=("square", "red", "green"), size=28, seed=8315393)  # the largest square rounds above 50%
def test_render_recovered_any_size_and_seed(combo, size, seed):
    shape, color, background = combo
    img = image_to_tensor(render(shape, color, background, size, seed))
    assert dominant_colors(img) == (background, color)
    fraction = (img != img[:, :1, :1]).any(0).float().mean()
    # the shape covers a sensible part of the image: at least a triangle (half its bounding box) whose side is
    # 40% of the image, at most a square whose side is 70% of it, both sides rounded to whole pixels as render
    # rounds them (a 23 px image: 9 px, 7.7% of the pixels, not 8%; a 28 px one: 20 px, 51.0%, not 49%)
    min_side, max_side = round(0.4 * size), round(0.7 * size)
    assert 0.5 * min_side**2 / size**2 <= fraction <= max_side**2 / size**2


def test_render_is_deterministic_and_jittered():
    a = image_to_tensor(render("circle", "red", "blue", rng=3))
    b = image_to_tensor(render("circle", "red", "blue", rng=3))
    assert torch.equal(a, b)
    others = [image_to_tensor(render("circle", "red", "blue", rng=s)) for s in range(8)]
    assert any(not torch.equal(a, o) for o in others)


def test_render_rejects_bad_arguments():
    with pytest.raises(ValueError, match="both"):
        render("circle", "red", "red")
    with pytest.raises(ValueError, match="unknown shape"):
        render("hexagon", "red", "blue")
    with pytest.raises(ValueError, match="unknown colour"):
        render("circle", "mauve", "blue")


def test_dominant_colors_edge_cases():
    plain = image_to_tensor(render("square", "red", "green", 32, 0))
    plain[:] = torch.tensor(COLORS["green"]).view(3, 1, 1) / 255
    assert dominant_colors(plain) == ("green", None)
    noisy = image_to_tensor(render("triangle", "yellow", "black", 32, 1))
    noisy = (noisy + 0.08 * torch.randn(noisy.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    assert dominant_colors(noisy) == ("black", "yellow")
    with pytest.raises(ValueError):
        dominant_colors(torch.zeros(32, 32))


def test_caption_round_trip():
    for combo in COMBOS:
        assert parse_caption(caption(*combo)) == combo
        assert parse_caption(paraphrase(*combo)) == combo
    assert caption("circle", "red", "blue") == "a red circle on a blue background"
    assert parse_caption("  A Red circle on a blue background. ") == ("circle", "red", "blue")
    for bad in ("a red circle", "a red circle on a red background", "a mauve circle on a blue background"):
        with pytest.raises(ValueError):
            parse_caption(bad)


def test_sample_captions():
    caps = sample_captions(50, seed=1)
    assert len(caps) == 50 and caps == sample_captions(50, seed=1)
    assert caps != sample_captions(50, seed=2)
    assert all(parse_caption(c) in COMBOS for c in caps)


def test_make_dataset_readable_by_text_image_dataset(tmp_path):
    items = make_dataset(tmp_path / "shapes", 12, image_size=32, seed=0)
    assert [p.name for p, _ in items] == [f"img_{i:05d}.png" for i in range(12)]
    for path, text in items:
        lines = path.with_suffix(".txt").read_text().splitlines()
        assert lines[0] == text and parse_caption(lines[1]) == parse_caption(text)
    assert len({parse_caption(t) for _, t in items}) == 12  # balanced: no repeats before a full cycle
    assert make_dataset(tmp_path / "again", 12, image_size=32, seed=0)[5][1] == items[5][1]

    ds = TextImageDataset(
        tmp_path / "shapes", text_len=64, image_size=32, resize_ratio=1.0, tokenizer=FakeTokenizer()
    )
    assert len(ds) == 12
    for i in range(len(ds)):
        text, image = ds[i]
        shape, color, background = parse_caption(decode(text))
        assert image.shape == (3, 32, 32)
        assert dominant_colors(image) == (background, color)
