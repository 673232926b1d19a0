"""generate.py, dalle_pytorch.pipeline.text_to_image and dalle_pytorch.pipeline.outputs: output folders, files, metadata, reproducibility, flags, errors."""
from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from dalle_pytorch import DALLE, DiscreteVAE, __version__
from dalle_pytorch.checkpoint import load_checkpoint, save
from dalle_pytorch.cli.flags import flag_names
from dalle_pytorch.errors import GenerationError
from dalle_pytorch.formats.images import make_grid, tensor_to_pil
from dalle_pytorch.pipeline.outputs import load_image, make_run_dir, slugify
from dalle_pytorch.pipeline.text_to_image import batch_seeds
from dalle_pytorch.synthetic import COLORS, SHAPES, render
from dalle_pytorch.text.factory import HugTokenizer
from dalle_pytorch.train.datasets import image_to_tensor

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
CAPTION = "a red circle on a blue background"


def _load_generate():
    import dalle_pytorch.cli.generate as module

    return module


generate = _load_generate()


def word_tokenizer(path: Path) -> Path:
    """A word-level `tokenizers` JSON over the synthetic captions' words ([PAD] = 0)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

    words = ["[PAD]", "[UNK]", "a", "on", "background", ","] + list(COLORS) + list(SHAPES)
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(path))
    return path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(checkpoint path, tokenizer JSON path) of a tiny random DALLE saved with checkpoint.save."""
    folder = tmp_path_factory.mktemp("tiny")
    tok_path = word_tokenizer(folder / "tokenizer.json")
    tokenizer = HugTokenizer(tok_path)
    torch.manual_seed(0)
    vae = DiscreteVAE(image_size=32, num_layers=2, num_tokens=64, codebook_dim=16, hidden_dim=16)
    model = DALLE(dim=32, vae=vae, num_text_tokens=tokenizer.vocab_size, text_seq_len=8, depth=2, heads=2,
                  dim_head=16)
    path = folder / "tiny.safetensors"
    save(model, path, tokenizer=tokenizer, metadata={"what": "tiny test model"})
    save(vae, folder / "vae.safetensors")
    return path, tok_path


def run(*argv, **kwargs) -> list:
    args = generate.parse_args([str(a) for a in argv] + ["--no_progress"])
    return generate.main(args)


def run_tiny(tiny, out, *argv):
    return run("--dalle_path", tiny[0], "--outputs_dir", out, *argv)


def png_bytes(folder: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.png"))}


def pixels(path: Path) -> torch.Tensor:
    with Image.open(path) as im:
        return image_to_tensor(im.convert("RGB"))


# -- files and metadata -------------------------------------------------------------------------------


def test_writes_pngs_grid_and_json(tiny, tmp_path):
    out = tmp_path / "outputs"
    (result,) = run_tiny(tiny, out, "--text", CAPTION, "--seed", "7", "--num_images", "3", "--batch_size", "2",
                         "--top_k", "0.8", "--temperature", "0.9")
    folder = out / "a-red-circle-on-a-blue-background"
    assert result.folder == folder
    names = sorted(p.name for p in folder.iterdir())
    assert names == ["000_seed7.png", "001_seed7.png", "002_seed8.png", "generation.json", "grid.png"]

    with Image.open(folder / "000_seed7.png") as im:
        assert im.size == (32, 32) and im.mode == "RGB"
        assert im.text["caption"] == CAPTION
        assert im.text["seed"] == "7"
        png_settings = json.loads(im.text["settings"])
    assert png_settings["filter_thres"] == 0.8 and png_settings["temperature"] == 0.9
    with Image.open(folder / "002_seed8.png") as im:
        assert im.text["seed"] == "8"
    with Image.open(folder / "grid.png") as im:
        assert im.size == (2 + 2 * 34, 2 + 2 * 34)  # 2 x 2 tiles of 32 px, 2 px apart
        assert im.text["caption"] == CAPTION

    record = json.loads((folder / "generation.json").read_text())
    assert record["caption"] == CAPTION
    assert record["seed"] == 7 and record["seeds"] == [7, 7, 8]
    assert record["num_images"] == 3
    s = record["settings"]
    assert {"filter_thres", "top_p", "temperature", "cond_scale", "null_text", "num_init_img_tokens", "img",
            "batch_size", "use_cache"} <= set(s)
    assert s["filter_thres"] == 0.8 and s["temperature"] == 0.9 and s["top_p"] is None and s["cond_scale"] == 1.0
    assert record["use_cache"] is True
    assert record["checkpoint"]["path"] == str(tiny[0].resolve())
    assert record["checkpoint"]["sha256"] == hashlib.sha256(tiny[0].read_bytes()).hexdigest()
    assert record["checkpoint"]["demo"] is False and record["checkpoint"]["source"] == "dalle_pytorch"
    assert record["package_version"] == __version__
    assert record["device"] == "cpu" and record["dtype"] == "float32"
    assert record["elapsed_seconds"] > 0 and record["images_per_second"] > 0
    assert record["files"] == ["000_seed7.png", "001_seed7.png", "002_seed8.png"]
    assert record["tokenizer"] == "HugTokenizer"


def test_demo_model(tmp_path):
    """`--dalle_path demo` (and no --dalle_path) is the model shipped in the package."""
    (r,) = run("--dalle_path", "demo", "--text", CAPTION, "--seed", "0", "--num_images", "2",
               "--outputs_dir", tmp_path)
    record = json.loads(r.json_path.read_text())
    assert record["checkpoint"]["demo"] is True and record["tokenizer"] == "HugTokenizer"
    assert record["checkpoint"]["path"].endswith(os.path.join("dalle_pytorch", "demo", "dalle.safetensors"))
    assert [p.name for p in r.files] == ["000_seed0.png", "001_seed0.png"] and r.grid.is_file()
    (default,) = run("--text", CAPTION, "--seed", "0", "--num_images", "2", "--outputs_dir", tmp_path)
    assert default.folder.name == r.folder.name + "-2"
    assert png_bytes(default.folder) == png_bytes(r.folder)


def test_second_run_gets_a_new_folder(tiny, tmp_path):
    out = tmp_path / "outputs"
    run_tiny(tiny, out, "--text", CAPTION, "--seed", "1", "--num_images", "1")
    first = out / "a-red-circle-on-a-blue-background"
    before = png_bytes(first)
    (r2,) = run_tiny(tiny, out, "--text", CAPTION, "--seed", "2", "--num_images", "1")
    (r3,) = run_tiny(tiny, out, "--text", CAPTION, "--seed", "3", "--num_images", "1")
    assert r2.folder == out / "a-red-circle-on-a-blue-background-2"
    assert r3.folder == out / "a-red-circle-on-a-blue-background-3"
    assert png_bytes(first) == before  # never overwritten
    assert (r2.folder / "000_seed2.png").exists() and (r3.folder / "000_seed3.png").exists()


def test_same_seed_gives_identical_files(tiny, tmp_path):
    a = run_tiny(tiny, tmp_path / "a", "--text", CAPTION, "--seed", "11", "--num_images", "3", "--batch_size", "2")
    b = run_tiny(tiny, tmp_path / "b", "--text", CAPTION, "--seed", "11", "--num_images", "3", "--batch_size", "2")
    assert png_bytes(a[0].folder) == png_bytes(b[0].folder)
    c = run_tiny(tiny, tmp_path / "c", "--text", CAPTION, "--seed", "12", "--num_images", "3", "--batch_size", "2")
    assert not torch.equal(a[0].images, c[0].images)


def test_batch_seed_reproduces_a_later_batch(tiny, tmp_path):
    """Batch k is sampled with seed + k: images 2-3 of --seed 5 are images 0-1 of --seed 6."""
    (a,) = run_tiny(tiny, tmp_path / "a", "--text", CAPTION, "--seed", "5", "--num_images", "4", "--batch_size", "2")
    (b,) = run_tiny(tiny, tmp_path / "b", "--text", CAPTION, "--seed", "6", "--num_images", "2", "--batch_size", "2")
    assert a.seeds == [5, 5, 6, 6] and b.seeds == [6, 6]
    assert (a.folder / "002_seed6.png").read_bytes() == (b.folder / "000_seed6.png").read_bytes()
    assert (a.folder / "003_seed6.png").read_bytes() == (b.folder / "001_seed6.png").read_bytes()


def test_no_use_cache_gives_the_same_images(tiny, tmp_path):
    (cached,) = run_tiny(tiny, tmp_path / "a", "--text", CAPTION, "--seed", "3", "--num_images", "2")
    (plain,) = run_tiny(tiny, tmp_path / "b", "--text", CAPTION, "--seed", "3", "--num_images", "2", "--no_use_cache")
    assert torch.equal(cached.images, plain.images)
    assert png_bytes(cached.folder) == png_bytes(plain.folder)  # use_cache is not a sampling setting
    assert json.loads(plain.json_path.read_text())["use_cache"] is False


def test_no_pack_weights_gives_the_same_images(tiny, tmp_path):
    (packed,) = run_tiny(tiny, tmp_path / "a", "--text", CAPTION, "--seed", "3", "--num_images", "2")
    (plain,) = run_tiny(tiny, tmp_path / "b", "--text", CAPTION, "--seed", "3", "--num_images", "2",
                        "--no_pack_weights")
    assert torch.equal(packed.images, plain.images)
    assert png_bytes(packed.folder) == png_bytes(plain.folder)
    assert json.loads(packed.json_path.read_text())["settings"]["pack_weights"] is True
    assert json.loads(plain.json_path.read_text())["settings"]["pack_weights"] is False


@pytest.mark.slow
def test_compile_gives_the_same_images(tiny, tmp_path):
    (eager,) = run_tiny(tiny, tmp_path / "a", "--text", CAPTION, "--seed", "3", "--num_images", "2")
    (compiled,) = run_tiny(tiny, tmp_path / "b", "--text", CAPTION, "--seed", "3", "--num_images", "2", "--compile")
    assert png_bytes(eager.folder) == png_bytes(compiled.folder)  # compile is not a sampling setting
    assert json.loads(compiled.json_path.read_text())["settings"]["compile"] == "prefix"


def test_guidance_and_negative_prompt(tiny, tmp_path):
    (r,) = run_tiny(tiny, tmp_path, "--text", CAPTION, "--seed", "0", "--num_images", "2", "--cond_scale", "3",
                    "--null_text", "a blue circle on a red background")
    s = json.loads(r.json_path.read_text())["settings"]
    assert s["cond_scale"] == 3.0 and s["null_text"] == "a blue circle on a red background"
    with pytest.raises(GenerationError, match="cond_scale"):
        run_tiny(tiny, tmp_path, "--text", CAPTION, "--null_text", "a red square on a green background")


def test_speculative_decoding_is_recorded_reproducible_and_counts_its_forward_passes(tmp_path):
    """--speculative K on the demo model: the window is a setting (other samples than plain decoding), the same
    seed gives the same files, and generation.json counts the forward passes (far fewer than 63 per batch)."""
    common = ["--text", CAPTION, "--seed", "3", "--num_images", "2", "--batch_size", "1"]
    (a,) = run(*common, "--speculative", "8", "--outputs_dir", tmp_path / "a")
    (b,) = run(*common, "--speculative", "8", "--outputs_dir", tmp_path / "b")
    (plain,) = run(*common, "--outputs_dir", tmp_path / "plain")
    record = json.loads(a.json_path.read_text())
    assert record["settings"]["speculative"] == 8 and "speculative" not in plain.record["settings"]
    assert plain.record["forward_passes"] == [63, 63]
    assert all(n < 63 / 2 for n in record["forward_passes"]), record["forward_passes"]
    assert png_bytes(a.folder) == png_bytes(b.folder)
    with pytest.raises(GenerationError, match="--speculative must be a window"):
        run(*common, "--speculative", "0", "--outputs_dir", tmp_path / "c")


def test_prompts_file_and_pipe_separated_text(tiny, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle on a blue background\n\n# a comment\na green square on a white background\n")
    results = run_tiny(tiny, tmp_path / "out", "--prompts_file", prompts, "--seed", "0", "--num_images", "1")
    assert [r.folder.name for r in results] == ["a-red-circle-on-a-blue-background",
                                                "a-green-square-on-a-white-background"]
    assert json.loads(results[1].json_path.read_text())["caption"] == "a green square on a white background"
    results = run_tiny(tiny, tmp_path / "out2", "--text", "a red circle on a blue background | a black square on a "
                       "yellow background", "--seed", "0", "--num_images", "1")
    assert [r.caption for r in results] == ["a red circle on a blue background", "a black square on a yellow background"]


def test_priming_with_an_image(tiny, tmp_path):
    img_path = tmp_path / "prime.png"
    render("square", "yellow", "black", 48, rng=0).save(img_path)  # resized to the model's 32 px
    (r,) = run_tiny(tiny, tmp_path / "out", "--text", CAPTION, "--seed", "4", "--num_images", "2",
                    "--img", img_path, "--num_init_img_tokens", "24")
    record = json.loads(r.json_path.read_text())
    assert record["settings"]["num_init_img_tokens"] == 24 and record["settings"]["img"] == "prime.png"
    assert record["img_path"] == str(img_path.resolve())

    # the CLI did exactly what the library does with the same image, codes and seed
    loaded = load_checkpoint(tiny[0])
    model, tok = loaded.model, loaded.tokenizer
    img = load_image(img_path, 32)
    expected = model.generate_images(tok.tokenize([CAPTION], model.text_seq_len), img=img, num_init_img_tokens=24,
                                     num_images=2, filter_thres=0.9, generator=torch.Generator().manual_seed(4),
                                     return_codes=True)
    assert torch.equal(expected[:, :24], model.vae.get_codebook_indices(img)[:, :24].expand(2, -1))
    images = model.vae.decode(expected).clamp(0, 1)
    for i in range(2):
        assert torch.equal(pixels(r.files[i]), image_to_tensor(tensor_to_pil(images[i])))
    (unprimed,) = run_tiny(tiny, tmp_path / "out", "--text", CAPTION, "--seed", "4", "--num_images", "2")
    assert not torch.equal(unprimed.images, r.images)


def test_gentxt_writes_a_caption_then_images(tiny, tmp_path):
    (r,) = run_tiny(tiny, tmp_path, "--gentxt", "--seed", "0", "--num_images", "1")
    record = json.loads(r.json_path.read_text())
    assert record["gentxt"] is True and record["gentxt_prompt"] is None
    assert r.folder.name == slugify(record["caption"])
    (r,) = run_tiny(tiny, tmp_path, "--gentxt", "--text", "a red", "--seed", "0", "--num_images", "1")
    assert r.caption.startswith("a red")


def test_bfloat16_runs_and_float16_is_refused_on_cpu(tiny, tmp_path):
    (r,) = run_tiny(tiny, tmp_path, "--text", CAPTION, "--seed", "0", "--num_images", "1", "--dtype", "bfloat16")
    assert json.loads(r.json_path.read_text())["dtype"] == "bfloat16"
    with pytest.raises(GenerationError, match="float16 is not supported on CPU"):
        run_tiny(tiny, tmp_path, "--text", CAPTION, "--dtype", "float16", "--device", "cpu")


def test_vae_path_and_tokenizer_override(tiny, tmp_path):
    vae_path = tiny[0].parent / "vae.safetensors"
    (r,) = run_tiny(tiny, tmp_path, "--text", CAPTION, "--seed", "0", "--num_images", "1", "--vae_path", vae_path,
                    "--bpe_path", tiny[1], "--hug")
    record = json.loads(r.json_path.read_text())
    assert record["vae_path"] == str(vae_path.resolve()) and record["tokenizer"] == "HugTokenizer"


def test_dalle_pytorch_checkpoint(tmp_path):
    """A DALLE-pytorch 1.6.6 train_dalle.py file (num_text_tokens 200) with a word-level tokenizer."""
    tok = word_tokenizer(tmp_path / "tok.json")
    fixture = FIXTURES / "full_shift_rotary-v1.6.6.pt"
    (r,) = run("--dalle_path", fixture, "--outputs_dir", tmp_path / "out", "--text", CAPTION, "--seed", "0",
               "--num_images", "2", "--bpe_path", tok, "--hug")
    record = json.loads(r.json_path.read_text())
    assert record["checkpoint"]["source"] == "dalle-pytorch-legacy"
    assert record["checkpoint"]["sha256"] == hashlib.sha256(fixture.read_bytes()).hexdigest()
    assert len(r.files) == 2


def test_a_dalle_pytorch_checkpoint_without_its_tokenizer_says_to_pass_it(tmp_path):
    """DALLE-pytorch files store no tokenizer: the default CLIP one gives ids the model has no embedding for,
    and the error says so (not "text token ids must be in [0, 200)")."""
    with pytest.warns(UserWarning, match="is it the tokenizer the model was trained with"):
        with pytest.raises(GenerationError, match=r"token id \d+, not in \[0, 200\) \(the model's text tokens\): .*SimpleTokenizer "
                                                  r"\(DALLE-pytorch files do not store theirs\).*as --bpe_path"):
            run("--dalle_path", FIXTURES / "full_shift_rotary-v1.6.6.pt", "--outputs_dir", tmp_path, "--text", CAPTION)
    assert not list(tmp_path.iterdir())


# -- errors -------------------------------------------------------------------------------------------


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    missing = tmp_path / "nope.safetensors"
    with pytest.raises(GenerationError, match="does not exist"):
        run("--dalle_path", missing, "--text", CAPTION, "--outputs_dir", tmp_path)
    assert not list(tmp_path.iterdir())  # nothing written
    proc = subprocess.run([sys.executable, str(ROOT / "generate.py"), "--dalle_path", str(missing), "--text", CAPTION,
                           "--outputs_dir", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "error" in proc.stderr and str(missing) in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("argv, message", [
    ([], "give a caption"),
    (["--text", CAPTION, "--num_images", "0"], "--num_images must be >= 1"),
    (["--text", CAPTION, "--batch_size", "0"], "--batch_size must be >= 1"),
    (["--text", CAPTION, "--num_init_img_tokens", "3"], "needs --img"),
    (["--text", CAPTION, "--compile", "--no_use_cache"], "cannot be used with --no_use_cache"),
    (["--text", CAPTION, "--img", "missing.png"], "does not exist"),
    (["--text", CAPTION, "--vae_path", "missing.safetensors"], "does not exist"),
    (["--text", CAPTION, "--bpe_path", "missing.json", "--hug"], "does not exist"),
    (["--text", CAPTION, "--prompts_file", "missing.txt"], "does not exist"),
    (["--text", "a " * 20 + "circle"], "longer than the context length"),
    (["--text", CAPTION, "--top_k", "1.5"], "filter_thres must be in [0, 1)"),
    (["--gentxt", "--top_k", "1.5"], "--gentxt: filter_thres must be in [0, 1)"),
    (["--gentxt", "--temperature", "0"], "--gentxt: "),
])
def test_bad_requests(tiny, tmp_path, argv, message):
    with pytest.raises(GenerationError, match=re.escape(message)):
        run_tiny(tiny, tmp_path / "out", *argv)


def test_clip_path_reranks_by_clip_score(tiny, tmp_path):
    from dalle_pytorch import CLIP

    torch.manual_seed(0)
    clip = CLIP(dim_text=32, dim_image=32, dim_latent=16, num_text_tokens=64, text_enc_depth=1, text_seq_len=8,
                text_heads=2, visual_enc_depth=1, visual_heads=2, visual_image_size=32, visual_patch_size=8)
    save(clip, tmp_path / "clip.safetensors")
    [result] = run_tiny(tiny, tmp_path / "out", "--text", CAPTION, "--num_images", "4", "--seed", "0",
                        "--clip_path", tmp_path / "clip.safetensors", "--no_progress")
    scores = result.record["clip_scores"]
    assert len(scores) == 4 and scores == sorted(scores, reverse=True)
    assert sorted(result.record["clip_original_index"]) == [0, 1, 2, 3]
    with pytest.raises(GenerationError, match="not a CLIP"):
        run_tiny(tiny, tmp_path, "--text", CAPTION, "--clip_path", tiny[0])
    with pytest.raises(GenerationError, match="does not exist"):
        run_tiny(tiny, tmp_path, "--text", CAPTION, "--clip_path", tmp_path / "clip.pt")


def test_vae_checkpoint_is_not_a_dalle(tiny, tmp_path):
    with pytest.raises(GenerationError, match="vae checkpoint"):
        run("--dalle_path", tiny[0].parent / "vae.safetensors", "--text", CAPTION, "--outputs_dir", tmp_path)


# -- helpers --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("caption, slug", [
    ("a red circle on a blue background", "a-red-circle-on-a-blue-background"),
    ("../../etc/passwd", "etc-passwd"),
    ("a/b\\c", "a-b-c"),
    ("..", "untitled"),
    ("", "untitled"),
    ("   ", "untitled"),
    ("☕🎨", "untitled"),
    ("Café Über Naïve", "cafe-uber-naive"),
    ("A  RED -- circle!!", "a-red-circle"),
    ("x" * 100, "x" * 60),
    ("word " * 30, ("word-" * 12)[:59]),
])
def test_slugify(caption, slug):
    assert slugify(caption) == slug


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_slugify_is_always_a_safe_name(text):
    slug = slugify(text)
    assert re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", slug)
    assert 1 <= len(slug) <= 60 and ".." not in slug and "/" not in slug


@pytest.mark.parametrize("caption", ["../escape", "/abs/path", "..", "", "ünïcödé/../x", "a\x00b"])
def test_run_dir_stays_inside_outputs(tmp_path, caption):
    out = tmp_path / "outputs"
    first = make_run_dir(out, caption)
    second = make_run_dir(out, caption)
    for d in (first, second):
        assert d.is_dir() and d.parent == out
    assert second.name == first.name + "-2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["outputs"]


def test_batch_seeds():
    assert batch_seeds(10, 5, 2) == [(10, 2), (11, 2), (12, 1)]
    assert batch_seeds(0, 4, 8) == [(0, 4)]
    with pytest.raises(GenerationError):
        batch_seeds(0, 0, 1)


def test_grid_layout():
    tiles = [Image.new("RGB", (4, 4), (i * 40, 0, 0)) for i in range(5)]
    grid = make_grid(tiles, padding=1)
    assert grid.size == (1 + 3 * 5, 1 + 2 * 5)  # 3 per row, 2 rows
    assert grid.getpixel((1 + 5 * 2, 1)) == (80, 0, 0)  # third tile, first row
    assert grid.getpixel((1, 1 + 5)) == (120, 0, 0)  # fourth tile, second row
    assert grid.getpixel((0, 0)) == (0, 0, 0)


def test_tensor_to_pil_roundtrip():
    x = torch.rand(3, 8, 8)
    back = image_to_tensor(tensor_to_pil(x))
    assert (back - x).abs().max() <= 0.5 / 255 + 1e-6


def test_img_modes_bombs_and_fifos(tmp_path, monkeypatch):
    """--img: a 16-bit image is scaled (not clipped to white); a bomb, junk or a FIFO is one error line."""
    import numpy as np

    Image.fromarray(np.full((32, 32), 32768, np.uint16)).save(tmp_path / "grey16.png")
    img = load_image(tmp_path / "grey16.png", 32)
    assert torch.allclose(img, torch.full_like(img, 128 / 255), atol=1e-6)
    Image.new("RGB", (64, 64)).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(GenerationError, match="--img .*big.png.*decompression bomb"), flag_names():
        load_image(tmp_path / "big.png", 32)
    os.mkfifo(tmp_path / "pipe.png")
    with pytest.raises(GenerationError, match="--img .*pipe.png.*FIFO"), flag_names():
        load_image(tmp_path / "pipe.png", 32)


@pytest.mark.slow
def test_torchrun_shards_captions_like_one_process(tmp_path):
    """torchrun --nproc_per_node 2: each rank samples its captions (i % 2), with the seeds and folder names
    one process would use (a repeated caption included), and rank 0 appends the run to the index."""
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle on a blue background\na green square on a white background\n"
                       "a red circle on a blue background\na yellow triangle on a black background\n",
                       encoding="utf-8")
    common = ["--prompts_file", str(prompts), "--num_images", "2", "--seed", "5", "--no_progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one, two = tmp_path / "one", tmp_path / "two"
    single = subprocess.run([sys.executable, str(ROOT / "generate.py"), *common, "--outputs_dir", str(one)],
                            capture_output=True, text=True, env=env, timeout=300)
    assert single.returncode == 0, single.stderr
    sharded = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                              "--master_port", str(29500 + os.getpid() % 1000), str(ROOT / "generate.py"), *common,
                              "--outputs_dir", str(two), "--device", "cpu"],
                             capture_output=True, text=True, env=env, timeout=300)
    assert sharded.returncode == 0, sharded.stderr

    def files(root):
        return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.png"))}

    assert sorted(p.name for p in two.iterdir() if p.is_dir()) == sorted(p.name for p in one.iterdir() if p.is_dir())
    assert "a-red-circle-on-a-blue-background-2" in {p.name for p in two.iterdir()}
    assert files(one) == files(two) and len(files(one)) == 4 * 3
    for folder in two.iterdir():
        if folder.is_dir():
            a = json.loads((one / folder.name / "generation.json").read_text())
            b = json.loads((folder / "generation.json").read_text())
            for record in (a, b):
                for key in ("elapsed_seconds", "images_per_second"):
                    record.pop(key)
            assert a == b
    (index,) = [json.loads(line) for line in (two / "generate-index.jsonl").read_text().splitlines()]
    assert index["world_size"] == 2 and index["images"] == 8
    assert [c["rank"] for c in index["captions"]] == [0, 1, 0, 1]
    assert [c["folder"] for c in index["captions"]] == [
        "a-red-circle-on-a-blue-background", "a-green-square-on-a-white-background",
        "a-red-circle-on-a-blue-background-2", "a-yellow-triangle-on-a-black-background"]


def test_mask_keeps_the_codes_of_img(tiny, tmp_path):
    """--mask: white keeps --img's codes; a mask of the top half samples exactly what priming with half the
    codes does (the same PNG files), and the mask is recorded."""
    img_path = tmp_path / "prime.png"
    render("circle", "red", "blue", 32, rng=0).save(img_path)
    top = Image.new("L", (32, 32), 0)
    top.paste(255, (0, 0, 32, 16))
    top.save(tmp_path / "top.png")
    (masked,) = run_tiny(tiny, tmp_path / "a", "--text", CAPTION, "--seed", "1", "--num_images", "2", "--img",
                         str(img_path), "--mask", str(tmp_path / "top.png"))
    (primed,) = run_tiny(tiny, tmp_path / "b", "--text", CAPTION, "--seed", "1", "--num_images", "2", "--img",
                         str(img_path), "--num_init_img_tokens", "32")
    assert png_bytes(masked.folder).keys() == png_bytes(primed.folder).keys()
    assert all(torch.equal(pixels(masked.folder / n), pixels(primed.folder / n)) for n in png_bytes(masked.folder))
    assert masked.record["settings"]["mask"] == "top.png"
    with pytest.raises(GenerationError, match="--mask needs --img"):
        run_tiny(tiny, tmp_path, "--text", CAPTION, "--mask", str(tmp_path / "top.png"))


def test_progress_is_one_clean_bar_in_a_terminal_and_none_in_a_pipe(tmp_path):
    """In a terminal: one bar over the images with the batch's codes as its postfix (no nested bar whose
    cursor movements garble the last lines); piped: no carriage returns, one line per caption."""
    import pty
    import select

    argv = [sys.executable, str(ROOT / "generate.py"), "--text", CAPTION, "--num_images", "4", "--batch_size", "2",
            "--seed", "0", "--outputs_dir", str(tmp_path / "tty")]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "120"}
    import fcntl
    import struct
    import termios

    pid, fd = pty.fork()
    if pid == 0:  # the child: generate.py with a 40 x 120 terminal on stdin, stdout and stderr
        try:
            fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
            os.execve(sys.executable, argv, env)
        finally:
            os._exit(127)
    out = b""
    while True:
        ready, _, _ = select.select([fd], [], [], 120)
        if not ready:
            break
        try:
            chunk = os.read(fd, 4096)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        out += chunk
    _, status = os.waitpid(pid, 0)
    text = out.decode("utf-8", "replace")
    assert os.WEXITSTATUS(status) == 0, text
    assert "\x1b[A" not in text and "image tokens" not in text  # no nested bar moving the cursor up
    assert "codes " in text and "/64" in text  # the batch's progress, as the bar's postfix
    screen = [line.rsplit("\r", 1)[-1] for line in text.replace("\r\n", "\n").split("\n")]
    assert sum("images: 100%" in line for line in screen) == 1, screen
    assert any(line.startswith("done: 4 images") for line in screen)

    piped = subprocess.run([*argv[:-1], str(tmp_path / "pipe")], capture_output=True, text=True, env=env, timeout=300)
    assert piped.returncode == 0 and "\r" not in piped.stderr + piped.stdout
    assert f"{CAPTION!r}: 4 images in" in piped.stdout


def test_quantize_flag_decodes_with_quantized_weights_and_is_recorded(tiny, tmp_path):
    """--quantize int8: the images of the library's quantized model with the same seed, the mode in
    generation.json's settings; a checkpoint saved quantized is used as it is, and another mode is refused."""
    from dalle_pytorch import quantize

    (r,) = run_tiny(tiny, tmp_path / "a", "--text", CAPTION, "--seed", "3", "--num_images", "2", "--quantize", "int8")
    record = json.loads(r.json_path.read_text())
    assert record["settings"]["quantize"] == "int8" and record["quantize"] == "int8"
    (plain,) = run_tiny(tiny, tmp_path / "b", "--text", CAPTION, "--seed", "3", "--num_images", "2")
    assert "quantize" not in plain.record["settings"]
    loaded = load_checkpoint(tiny[0])
    quantized = quantize(loaded.model, "int8")
    saved = tmp_path / "q.safetensors"
    save(quantized, saved, tokenizer=loaded.tokenizer)
    (again,) = run("--dalle_path", saved, "--outputs_dir", tmp_path / "c", "--text", CAPTION, "--seed", "3",
                   "--num_images", "2")
    files = sorted(r.folder.glob("*.png"))
    assert files and all(torch.equal(pixels(f), pixels(again.folder / f.name)) for f in files)  # (the PNGs name their checkpoint)
    with pytest.raises(GenerationError, match="quantized to int8"):
        run("--dalle_path", saved, "--outputs_dir", tmp_path / "d", "--text", CAPTION, "--quantize", "int4")


def test_canvas_samples_a_wider_image_and_outpaints_img(tiny, tmp_path):
    """--canvas HxW: images of H x W codes, the canvas recorded; with --img at --img_offset the image's
    codes are kept there (the kept half decodes as the image's own codes do, away from the join)."""
    (wide,) = run_tiny(tiny, tmp_path / "a", "--text", CAPTION, "--seed", "1", "--num_images", "2", "--canvas", "8x16")
    with Image.open(wide.folder / "000_seed1.png") as im:
        assert im.size == (64, 32)
    assert wide.record["settings"]["canvas"] == [8, 16]
    img_path = tmp_path / "prime.png"
    render("circle", "red", "blue", 32, rng=0).save(img_path)
    (out,) = run_tiny(tiny, tmp_path / "b", "--text", CAPTION, "--seed", "1", "--num_images", "1", "--canvas", "8x12",
                      "--img", str(img_path), "--img_offset", "0,4")
    assert out.record["settings"]["img_offset"] == [0, 4]
    model = load_checkpoint(tiny[0]).model.eval()
    codes = model.vae.get_codebook_indices(pixels(img_path)[None])
    with torch.no_grad():
        expected = model.vae.decode(codes)
        written = pixels(out.folder / "000_seed1.png")
    assert written.shape == (3, 32, 48)
    # the kept codes decode at the canvas's right end as the image alone does (quantized to 8 bits), away from the join
    assert float((written[:, :, 24:] - expected[0, :, :, 8:]).abs().max()) <= 1.5 / 255


@pytest.mark.parametrize("argv, message", [
    (["--canvas", "16"], "must be HxW in codes"),
    (["--canvas", "4x16"], "--canvas must be at least the trained grid, 8x8 codes, got 4x16"),
    (["--canvas", "8x16", "--compile"], "--canvas does not combine with --compile"),
    (["--canvas", "8x16", "--speculative", "4"], "--canvas does not combine with --speculative"),
    (["--img_offset", "0,4"], "--img_offset places --img on a --canvas"),
])
def test_bad_canvas_flags(tiny, tmp_path, capsys, argv, message):
    with pytest.raises((GenerationError, SystemExit)) as info:
        run_tiny(tiny, tmp_path / "out", "--text", CAPTION, *argv)
    assert message in (str(info.value) if info.type is GenerationError else capsys.readouterr().err)
