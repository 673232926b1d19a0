"""Careless and hostile input to the Python API and generate.py: clear errors, found early, as one line.

Each test reproduces a probe that used to fail badly (a traceback, a silent wrong answer, images
written before an error, a hang on a FIFO, Infinity in generation.json, a 0-byte PNG).
"""
from __future__ import annotations

import contextlib
import errno
import io
import json
import math
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dalle_pytorch import GenerationError
from dalle_pytorch.cli.flags import flag_names
from dalle_pytorch.pipeline import outputs
from dalle_pytorch.pipeline.text_to_image import batch_seeds
from tests.helpers import random_text, tiny_dalle

ROOT = Path(__file__).resolve().parents[2]
CAPTION = "a red circle on a blue background"


def run_generate(*argv, timeout=120, preexec=None, process=False):
    """generate.py with the shipped demo model: its command line (`cli`) in this process, as `python
    generate.py` runs it (argv[0], stdout, stderr, the exit status), or with `process` in a subprocess
    (threads: 1 for a fast start) where a test needs one: a FIFO must not hang the test, limits set by
    `preexec` must not apply to it."""
    argv = ["--no_progress", *argv]
    if process or preexec is not None:
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        return subprocess.run([sys.executable, str(ROOT / "generate.py"), *argv], capture_output=True,
                              text=True, timeout=timeout, env=env, preexec_fn=preexec)
    from dalle_pytorch.cli.generate import cli

    out, err, argv0 = io.StringIO(), io.StringIO(), sys.argv[0]
    sys.argv[0] = str(ROOT / "generate.py")
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = cli(argv)
    finally:
        sys.argv[0] = argv0
    return subprocess.CompletedProcess(argv, code, out.getvalue(), err.getvalue())


def one_line_error(result) -> str:
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("generate.py: error: "), result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


# -- the Python API ---------------------------------------------------------------------------------


@pytest.mark.parametrize("changes, message", [
    ({"heads": 0}, "heads must be a positive integer, got 0"),
    ({"text_seq_len": 0}, "text_seq_len must be a positive integer, got 0"),
    ({"dim": 0}, "dim must be a positive integer, got 0"),
    ({"dim_head": 0}, "dim_head must be a positive integer, got 0"),
    ({"attn_types": ()}, "attn_types must name at least one attention type"),
    ({"depth": 2.5}, "depth must be a positive integer"),
    ({"attn_dropout": 1.5}, "attn_dropout must be a probability"),
    ({"attn_types": ("full", "mlp")}, "gMLP layers"),
])
def test_nonsense_constructor_arguments(changes, message):
    with pytest.raises(ValueError, match=message):
        tiny_dalle(**changes)


@pytest.mark.parametrize("kwargs, message", [
    ({"cond_scale": math.inf}, "cond_scale must be finite"),
    ({"cond_scale": math.nan}, "cond_scale must be finite"),
    ({"temperature": math.inf}, "temperature must be finite"),
    ({"top_p": math.nan}, "top_p must be finite"),
    ({"filter_thres": -0.1}, r"filter_thres must be in \[0, 1\)"),
])
def test_sampling_settings_must_be_finite(kwargs, message):
    model = tiny_dalle().eval()
    with pytest.raises(ValueError, match=message):
        model.generate_images(random_text()[:1], **kwargs)


def test_prime_images_must_be_finite_pixels_in_range():
    model = tiny_dalle().eval()
    img = torch.rand(1, 3, 32, 32)
    with pytest.raises(ValueError, match="finite numbers; found NaN"):
        model.generate_images(random_text()[:1], img=img.clone().index_fill_(2, torch.tensor([3]), math.nan))
    with pytest.raises(ValueError, match=r"pixels must be in \[0, 1\].*1/255"):
        model.generate_images(random_text()[:1], img=img * 255)
    with pytest.raises(ValueError, match=r"pixels must be in \[0, 1\]"):
        model(random_text(), img.expand(2, -1, -1, -1) - 0.5, return_loss=True)


def test_an_empty_batch_gives_an_empty_result():
    model = tiny_dalle().eval()
    empty = torch.zeros(0, 6, dtype=torch.long)
    assert model.generate_images(empty).shape == (0, 3, 32, 32)
    assert model.generate_images(empty, num_images=3, cond_scale=2.0, return_codes=True).shape == (0, 64)


def test_seed_range():
    assert batch_seeds(2**64 - 2, 4, 2) == [(2**64 - 2, 2), (2**64 - 1, 2)]
    for seed, n in ((-1, 1), (2**64, 1), (2**64 - 1, 2)):
        with pytest.raises(GenerationError, match=r"--seed must be in \[0, 2\*\*64"), flag_names():
            batch_seeds(seed, n, 1)


# -- generate.py: everything is checked before the first image ---------------------------------------


def test_a_bad_second_caption_stops_the_run_before_any_image(tmp_path):
    out = tmp_path / "outputs"
    line = one_line_error(run_generate("--text", f"{CAPTION}|{'red ' * 40}circle", "--num_images", "1",
                                       "--outputs_dir", str(out)))
    assert "longer than the context length" in line
    assert not any(out.rglob("*.png")), "the first caption's images were written before the error"
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(f"{CAPTION}\n{'blue ' * 40}\n", encoding="utf-8")
    one_line_error(run_generate("--prompts_file", str(prompts), "--outputs_dir", str(out)))
    assert not any(out.rglob("*.png"))


@pytest.mark.parametrize("flag, value", [("--temperature", "inf"), ("--cond_scale", "inf"), ("--top_p", "nan")])
def test_infinite_settings_are_one_line_errors(tmp_path, flag, value):
    line = one_line_error(run_generate("--text", CAPTION, flag, value, "--outputs_dir", str(tmp_path)))
    assert "must be finite" in line
    assert not list(tmp_path.rglob("generation.json"))


def test_outputs_dir_problems_are_found_before_sampling(tmp_path, monkeypatch):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    assert "exists and is not a folder" in one_line_error(run_generate("--text", CAPTION, "--outputs_dir", str(a_file)))
    assert "lies under a file" in one_line_error(run_generate("--text", CAPTION, "--outputs_dir", str(a_file / "sub")))

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(outputs.tempfile, "mkstemp", read_only)
    with pytest.raises(GenerationError, match="is not writable .*Read-only file system"):
        outputs.check_outputs_dir(tmp_path / "ro")


@pytest.mark.parametrize("argv, message", [
    (["--seed", "-1"], "--seed must be in"),
    (["--seed", str(2**64)], "--seed must be in"),
    (["--seed", str(2**64 - 1), "--num_images", "8", "--batch_size", "4"], "seed + k"),
])
def test_bad_seeds(tmp_path, argv, message):
    assert message in one_line_error(run_generate("--text", CAPTION, "--outputs_dir", str(tmp_path), *argv))


def test_a_non_utf8_prompts_file(tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_bytes(b"a red circle on a blue background\n\xff\xfe caf\xe9\n")
    assert "is not UTF-8 text" in one_line_error(run_generate("--prompts_file", str(prompts),
                                                              "--outputs_dir", str(tmp_path)))


@pytest.mark.parametrize("flag", ["--dalle_path", "--img", "--bpe_path", "--prompts_file", "--vae_path"])
def test_a_fifo_is_refused_not_waited_on(tmp_path, flag):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    argv = ["--outputs_dir", str(tmp_path / "out"), flag, str(fifo)]
    if flag != "--prompts_file":
        argv = ["--text", CAPTION, *argv]
    line = one_line_error(run_generate(*argv, timeout=60, process=True))
    assert "FIFO" in line and "only regular files are read" in line


def test_a_full_disk_leaves_no_partial_png(tmp_path):
    """The first PNG hits the file-size limit (EFBIG, as a full disk would give ENOSPC): one error line,
    no 0-byte or partial file, no empty run folder."""
    def small_files():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (300, resource.RLIM_INFINITY))

    out = tmp_path / "outputs"
    line = one_line_error(run_generate("--text", CAPTION, "--num_images", "2", "--seed", "0",
                                       "--outputs_dir", str(out), preexec=small_files))
    assert "no space left on device while writing" in line and "000_seed0.png" in line
    assert not [p for p in out.rglob("*") if p.is_file()], sorted(out.rglob("*"))
    assert not list(out.iterdir())


def test_generation_json_holds_no_infinity(tmp_path):
    from dalle_pytorch.pipeline.outputs import save_outputs
    from dalle_pytorch.pipeline.text_to_image import Pipeline

    pipe = Pipeline.from_checkpoint("demo")
    generated = pipe.generate(CAPTION, num_images=1, seed=0)
    result = save_outputs(outputs.make_run_dir(tmp_path, CAPTION), generated, seed=0, run_info={})
    text = result.json_path.read_text()
    assert "Infinity" not in text and "NaN" not in text
    json.loads(text)


def test_a_folder_as_bpe_path_is_called_a_folder(tmp_path):
    from dalle_pytorch.cli.flags import tokenizer_for_flags

    with pytest.raises(ValueError, match="is a directory, not a file"):
        tokenizer_for_flags(tmp_path)
    with pytest.raises(ValueError, match="does not exist"):
        tokenizer_for_flags(tmp_path / "missing.json")


def test_mps_is_chosen_when_present_and_refused_when_not(monkeypatch):
    """Apple's MPS: picked by 'auto' after CUDA, one clear line when asked for without one (untested on a
    real Mac: the project's machines have none)."""
    from dalle_pytorch.distributed import init_distributed
    from dalle_pytorch.errors import TrainingError
    from dalle_pytorch.pipeline.text_to_image import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert resolve_device("auto").type == "cpu"
    with pytest.raises(GenerationError, match="no usable MPS device"):
        resolve_device("mps")
    with pytest.raises(TrainingError, match="no usable MPS device"):
        init_distributed("mps")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert resolve_device("auto").type == "mps" and resolve_device("mps").type == "mps"
    assert init_distributed("auto").device.type == "mps"
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(TrainingError, match="cannot share an MPS device"):
        init_distributed("mps")
