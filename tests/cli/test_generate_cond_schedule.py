"""generate.py --cond_schedule: recorded in generation.json and the PNGs, the images those of the Pipeline with
the same schedule; bad values and a schedule without guidance are one-line errors naming the flags."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from dalle_pytorch import DALLE, DiscreteVAE
from dalle_pytorch.checkpoint import save
from dalle_pytorch.cli import generate
from dalle_pytorch.errors import GenerationError
from dalle_pytorch.generation.sampling import SamplingConfig
from dalle_pytorch.pipeline.text_to_image import Pipeline
from dalle_pytorch.text.factory import HugTokenizer
from tests.helpers import word_tokenizer_json

pytestmark = pytest.mark.usefixtures("one_thread")

CAPTION = "a red circle on a blue background"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny")
    tokenizer = HugTokenizer(word_tokenizer_json(folder / "tokenizer.json"))
    torch.manual_seed(0)
    vae = DiscreteVAE(image_size=32, num_layers=2, num_tokens=64, codebook_dim=16, hidden_dim=16)
    model = DALLE(dim=32, vae=vae, num_text_tokens=tokenizer.vocab_size, text_seq_len=8, depth=2, heads=2, dim_head=16)
    path = folder / "tiny.safetensors"
    save(model, path, tokenizer=tokenizer)
    return path


def run(tiny, out, *argv) -> list:
    args = generate.parse_args(["--dalle_path", str(tiny), "--outputs_dir", str(out), *map(str, argv), "--no_progress"])
    return generate.main(args)


@pytest.mark.parametrize("schedule", ["interval:0:0.5", "linear"])
def test_the_schedule_is_recorded_and_applied(tiny, tmp_path, schedule):
    (result,) = run(tiny, tmp_path, "--text", CAPTION, "--num_images", "2", "--seed", "3", "--cond_scale", "3",
                    "--cond_schedule", schedule)
    settings = json.loads(result.json_path.read_text())["settings"]
    assert settings["cond_schedule"] == schedule and settings["cond_scale"] == 3.0
    png = Image.open(result.files[0])
    assert json.loads(png.text["settings"])["cond_schedule"] == schedule
    pipe = Pipeline.from_checkpoint(str(tiny))
    want = pipe.generate(CAPTION, num_images=2, seed=3, sampling=SamplingConfig(filter_thres=0.9, cond_scale=3.0,
                                                                                cond_schedule=schedule))
    assert all(np.array_equal(np.asarray(Image.open(f).convert("RGB")), np.asarray(w))
               for f, w in zip(result.files, want.pil_images()))


def test_constant_guidance_records_no_schedule(tiny, tmp_path):
    (result,) = run(tiny, tmp_path, "--text", CAPTION, "--num_images", "1", "--seed", "0", "--cond_scale", "3")
    assert "cond_schedule" not in json.loads(result.json_path.read_text())["settings"]


@pytest.mark.parametrize("argv, message", [
    (["--cond_scale", "3", "--cond_schedule", "cosine"],
     "--cond_schedule must be one of constant, interval:A:B, linear, got 'cosine'"),
    (["--cond_scale", "3", "--cond_schedule", "interval:0.5:0.5"], "--cond_schedule interval:A:B needs 0 <= A < B <= 1"),
    (["--cond_schedule", "linear"], "--cond_schedule linear only has an effect with guidance: set --cond_scale != 1"),
])
def test_bad_schedules_name_the_flags(tiny, tmp_path, argv, message):
    with pytest.raises(GenerationError) as e:
        run(tiny, tmp_path, "--text", CAPTION, "--num_images", "1", *argv)
    assert message in str(e.value) and "\n" not in str(e.value)
