"""The shipped demo model generates what its captions ask for."""
import torch

from dalle_pytorch.checkpoint import load_checkpoint
from dalle_pytorch.generation import demo_path
from dalle_pytorch.synthetic import caption, dominant_colors

CASES = [("circle", "red", "blue"), ("square", "yellow", "black"), ("triangle", "white", "green"),
         ("square", "green", "red"), ("circle", "black", "white"), ("triangle", "blue", "yellow")]


def test_demo_model_draws_the_requested_colours():
    demo = load_checkpoint(demo_path())
    model, tok = demo.model, demo.tokenizer
    assert demo.kind == "dalle" and tok is not None
    text = tok.tokenize([caption(*c) for c in CASES], model.text_seq_len)
    images = model.generate_images(text, num_images=4, use_cache=True, generator=torch.Generator().manual_seed(0))
    assert images.shape == (len(CASES) * 4, 3, 32, 32)
    background = shape = 0
    for i, image in enumerate(images):
        _, want_shape, want_bg = CASES[i // 4]
        got_bg, got_shape = dominant_colors(image)
        background += got_bg == want_bg
        shape += got_shape == want_shape
    n = len(images)
    assert background / n >= 0.75, f"background colour right in {background}/{n} images"
    assert shape / n >= 0.75, f"shape colour right in {shape}/{n} images"


def test_demo_files_are_small_and_shipped():
    path = demo_path()
    assert path.stat().st_size < 8 * 2**20
    assert path.with_name("tokenizer.json").exists()
