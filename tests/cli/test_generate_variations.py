"""generate.py --variations_of IMAGE --strength S [--variation_mode suffix|random]: the folders, PNGs and
generation.json of an ordinary run, the variation recorded, the kept codes kept, errors naming flags."""
from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from dalle_pytorch import DALLE, DiscreteVAE
from dalle_pytorch.checkpoint import save
from dalle_pytorch.cli import generate
from dalle_pytorch.errors import GenerationError
from dalle_pytorch.pipeline.outputs import file_sha256, load_image
from dalle_pytorch.pipeline.text_to_image import Pipeline
from dalle_pytorch.synthetic import render
from dalle_pytorch.text.factory import HugTokenizer
from tests.helpers import word_tokenizer_json

pytestmark = pytest.mark.usefixtures("one_thread")

CAPTION = "a red circle on a blue background"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(checkpoint path, a source image file) of a tiny random DALLE saved with checkpoint.save."""
    folder = tmp_path_factory.mktemp("tiny")
    tokenizer = HugTokenizer(word_tokenizer_json(folder / "tokenizer.json"))
    torch.manual_seed(0)
    vae = DiscreteVAE(image_size=32, num_layers=2, num_tokens=64, codebook_dim=16, hidden_dim=16)
    model = DALLE(dim=32, vae=vae, num_text_tokens=tokenizer.vocab_size, text_seq_len=8, depth=2, heads=2, dim_head=16)
    path = folder / "tiny.safetensors"
    save(model, path, tokenizer=tokenizer)
    render("circle", "red", "blue", 32, rng=0).save(folder / "source.png")
    return path, folder / "source.png"


def run(tiny, out, *argv) -> list:
    args = generate.parse_args(["--dalle_path", str(tiny[0]), "--outputs_dir", str(out), *map(str, argv),
                                "--no_progress"])
    return generate.main(args)


@pytest.mark.parametrize("mode", ["suffix", "random"])
def test_variations_write_an_ordinary_run_with_the_variation_recorded(tiny, tmp_path, mode):
    (result,) = run(tiny, tmp_path, "--variations_of", tiny[1], "--strength", "0.25", "--variation_mode", mode,
                    "--text", CAPTION, "--num_images", "3", "--batch_size", "2", "--seed", "4")
    assert result.folder.name == "a-red-circle-on-a-blue-background" and len(result.files) == 3
    record = json.loads(result.json_path.read_text())
    variation = record["settings"]["variation"]
    assert variation["strength"] == 0.25 and variation["mode"] == mode and variation["kept_codes"] == 48
    assert variation["source"] == "source.png" and variation["source_sha256"] == file_sha256(tiny[1])
    assert record["variations_of"]["path"] == str(tiny[1]) and record["seeds"] == [4, 4, 5]
    with Image.open(result.files[0]) as im:
        assert json.loads(im.text["settings"])["variation"]["mode"] == mode
    # the same images as Pipeline.variations of the encoded file
    pipe = Pipeline.from_checkpoint(tiny[0])
    want = pipe.variations(load_image(tiny[1], 32), 3, 0.25, caption=CAPTION, mode=mode, seed=4, batch_size=2)
    assert torch.equal(result.images, want.images)


def test_codes_strength_0_and_the_empty_caption(tiny, tmp_path):
    """codes:... varies an earlier image's codes (not re-encoded): strength 0 writes that image n times;
    without --text the caption is the empty one."""
    pipe = Pipeline.from_checkpoint(tiny[0])
    codes = pipe.generate(CAPTION, num_images=1, seed=0).codes[0]
    listed = "codes:" + ",".join(map(str, codes.tolist()))
    (same,) = run(tiny, tmp_path / "a", "--variations_of", listed, "--strength", "0", "--num_images", "2")
    assert same.caption == "" and same.folder.name == "untitled"
    assert torch.equal(same.images, pipe.model.vae.decode(codes[None]).clamp(0, 1).expand(2, -1, -1, -1))
    record = json.loads(same.json_path.read_text())
    assert record["variations_of"]["source_codes"] == codes.tolist()
    assert record["settings"]["variation"]["source"] == "codes"
    (half,) = run(tiny, tmp_path / "b", "--variations_of", listed, "--text", CAPTION, "--num_images", "2",
                  "--speculative", "4")
    assert record["settings"]["variation"]["kept_codes"] == 64
    assert json.loads(half.json_path.read_text())["settings"]["variation"]["kept_codes"] == 32  # --strength 0.5
    want = pipe.variations(codes, 2, 0.5, caption=CAPTION, seed=half.seeds[0], speculative=4)
    assert torch.equal(half.images, want.images)
    assert torch.equal(want.codes[:, :32], codes[:32].expand(2, -1))


@pytest.mark.parametrize("argv, message", [
    (["--text", CAPTION, "--strength", "0.5"], "--strength needs --variations_of IMAGE"),
    (["--text", CAPTION, "--variation_mode", "random"], "--variation_mode needs --variations_of"),
    (["--variations_of", "x.png", "--strength", "1.5"], r"--strength must be a number in \[0, 1\]"),
    (["--variations_of", "x.png", "--img", "x.png"], "does not combine with --img"),
    (["--variations_of", "x.png", "--gentxt"], "does not combine with --gentxt"),
    (["--variations_of", "missing.png"], "--variations_of .*missing.png.* does not exist"),
    (["--variations_of", "codes:1,x"], "--variations_of codes:C0,C1,... must list integers"),
    (["--variations_of", "codes:1,2"], r"image must be .*codes are 64 integers, got \(1, 2\)"),
])
def test_errors_name_the_flags(tiny, tmp_path, argv, message):
    with pytest.raises(GenerationError, match=message):
        run(tiny, tmp_path, *argv, "--num_images", "1")
