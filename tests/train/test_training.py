"""train_vae.py / train_dalle.py and dalle_pytorch.train: tiny models on the synthetic shapes data."""
from __future__ import annotations

import importlib.util
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from dalle_pytorch.checkpoint import load_checkpoint, load_training_state
from dalle_pytorch.errors import TrainingError
from dalle_pytorch.formats.images import image_grid
from dalle_pytorch.models.dalle import DALLE
from dalle_pytorch.models.dalle_pytorch_keys import native_state_dict
from dalle_pytorch.models.vae import DiscreteVAE
from dalle_pytorch.synthetic import COLORS, SHAPES, make_dataset
from dalle_pytorch.train.checkpoints import weights_digest
from dalle_pytorch.train.datasets import ImageFolder
from dalle_pytorch.train.optim import lr_multiplier
from dalle_pytorch.train.schedules import vae_learning_rate, vae_temperature

ROOT = Path(__file__).resolve().parents[2]


def _script(name):
    return importlib.import_module(f"dalle_pytorch.cli.{name}")


train_vae = _script("train_vae")
train_dalle = _script("train_dalle")

VAE_FLAGS = ["--image_size", "32", "--num_layers", "2", "--hidden_dim", "16", "--num_tokens", "32",
             "--emb_dim", "16", "--num_resnet_blocks", "1", "--batch_size", "4", "--no_progress"]
DALLE_FLAGS = ["--dim", "32", "--depth", "2", "--heads", "2", "--dim_head", "16", "--text_seq_len", "8",
               "--truncate_captions", "--batch_size", "4", "--no_progress", "--sample_every", "0"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("shapes")
    make_dataset(folder, 16, image_size=32, seed=0)
    return folder


@pytest.fixture(scope="module")
def tokenizer_json(tmp_path_factory):
    """A word-level tokenizers JSON over the synthetic captions' words (a small vocabulary keeps DALLE tiny)."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = ["[PAD]", "[UNK]", "a", "on", "background", ","] + list(COLORS) + list(SHAPES)
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    tok.save(str(path))
    return path


@pytest.fixture(scope="module")
def vae_run(tmp_path_factory, data_dir):
    """train_vae.py for 3 steps, a checkpoint every step (rotation keeps 2), a grid every 3 steps."""
    out = tmp_path_factory.mktemp("vae_run")
    summary = train_vae.main(train_vae.parse_args(
        ["--image_folder", str(data_dir), *VAE_FLAGS, "--max_steps", "3", "--save_every_steps", "1",
         "--keep_last", "2", "--sample_every", "3", "--num_images_save", "4", "--output_dir", str(out)]))
    return out, summary


def _dalle_args(out, data_dir, tokenizer_json, vae_path, *extra):
    return train_dalle.parse_args(
        ["--vae_path", str(vae_path), "--image_text_folder", str(data_dir), "--bpe_path", str(tokenizer_json),
         "--hug", *DALLE_FLAGS, "--output_dir", str(out), *extra])


def _records(run_dir, event="step"):
    with open(Path(run_dir) / "log.jsonl", encoding="utf-8") as f:
        records = [json.loads(line) for line in f]
    return [r for r in records if r["event"] == event]


# ------------------------------------------------------------------------------------------ VAE


def test_train_vae_writes_loadable_model_grid_and_rotates(vae_run):
    out, summary = vae_run
    assert summary["steps"] == 3 and summary["kind"] == "vae"
    loaded = load_checkpoint(out / "vae.safetensors")
    assert loaded.kind == "vae" and isinstance(loaded.model, DiscreteVAE)
    assert loaded.model.image_size == 32 and loaded.model.num_tokens == 32 and loaded.model.codebook_dim == 16
    assert loaded.metadata["step"] == 3

    grid = Image.open(out / "samples" / "step_00000003.png")
    assert grid.size == (2 + 4 * 34, 2 + 2 * 34)  # originals on top, reconstructions below

    # rotation: the last 2 pairs, a pointer to the newest, last.* the same files
    ckpts = sorted(os.listdir(out / "checkpoints"))
    assert ckpts == ["step_00000002.safetensors", "step_00000002.state.pt",
                     "step_00000003.safetensors", "step_00000003.state.pt"]
    assert json.loads((out / "latest").read_text())["step"] == 3
    assert os.path.samefile(out / "last.safetensors", out / "checkpoints" / "step_00000003.safetensors")
    state = load_training_state(out / "last.state.pt")
    assert state["step"] == 3 and state["kind"] == "vae" and len(state["rng"]) == 1

    steps = _records(out)
    assert [r["step"] for r in steps] == [1, 2, 3]
    assert all(math.isfinite(r["loss"]) and r["lr"] > 0 and "samples_per_sec" in r for r in steps)
    # DALLE-pytorch's annealing and lr cadence (4 steps an epoch): see test_vae_schedules_follow_dalle_pytorch
    assert [r["temperature"] for r in steps] == [vae_temperature(g, batches_per_epoch=4) for g in range(3)]
    assert [r["lr"] for r in steps] == pytest.approx([vae_learning_rate(g, batches_per_epoch=4) for g in range(3)],
                                                     rel=1e-12)


def test_existing_run_needs_resume(vae_run, data_dir):
    out, _ = vae_run
    with pytest.raises(TrainingError, match="--resume"):
        train_vae.main(train_vae.parse_args(["--image_folder", str(data_dir), *VAE_FLAGS, "--output_dir", str(out)]))


def test_a_missing_image_folder_is_reported_before_the_run_folder(vae_run, tmp_path, capsys):
    """train_vae.py --image_folder missing/ into a folder that holds a run: the missing data is the error."""
    out, _ = vae_run
    missing = f"{tmp_path / 'missing'}/"
    assert train_vae.cli(["--image_folder", missing, *VAE_FLAGS, "--output_dir", str(out)]) == 1
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert lines == [f"error: --image_folder {missing!r} does not exist (--debug shows the traceback)"]


def test_fp16_refused_on_cpu(tmp_path, data_dir):
    args = train_vae.parse_args(["--image_folder", str(data_dir), *VAE_FLAGS, "--precision", "fp16",
                                 "--device", "cpu", "--output_dir", str(tmp_path / "run")])
    with pytest.raises(TrainingError, match="fp16 needs a CUDA GPU.*bf16"):
        train_vae.main(args)


def test_bf16_autocast_on_cpu(tmp_path, data_dir):
    summary = train_vae.main(train_vae.parse_args(
        ["--image_folder", str(data_dir), *VAE_FLAGS, "--precision", "bf16", "--device", "cpu", "--max_steps", "2",
         "--sample_every", "0", "--output_dir", str(tmp_path / "run")]))
    assert summary["steps"] == 2 and math.isfinite(summary["final_loss"])


def _nan_on_calls(monkeypatch, cls, calls):
    """Make cls.forward return a NaN loss on the given (1-based) call numbers (all calls: None)."""
    original = cls.forward
    count = {"n": 0}

    def forward(self, *args, **kwargs):
        count["n"] += 1
        out = original(self, *args, **kwargs)
        if calls is None or count["n"] in calls:
            if isinstance(out, tuple):
                return (out[0] * float("nan"),) + tuple(out[1:])
            return out * float("nan")
        return out

    monkeypatch.setattr(cls, "forward", forward)


def test_nonfinite_loss_step_is_skipped_and_counted(tmp_path, data_dir, monkeypatch):
    _nan_on_calls(monkeypatch, DiscreteVAE, {2})
    out = tmp_path / "run"
    summary = train_vae.main(train_vae.parse_args(
        ["--image_folder", str(data_dir), *VAE_FLAGS, "--max_steps", "4", "--sample_every", "0",
         "--output_dir", str(out)]))
    assert summary["steps"] == 4 and summary["nonfinite_steps"] == 1
    steps = _records(out)
    assert steps[1].get("skipped_step") is True and math.isnan(steps[1]["loss"])
    assert [r["nonfinite_steps"] for r in steps] == [0, 1, 1, 1]
    assert all(math.isfinite(r["loss"]) for i, r in enumerate(steps) if i != 1)
    model = load_checkpoint(out / "vae.safetensors").model
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_nonfinite_loss_every_step_stops_clearly(tmp_path, data_dir, monkeypatch):
    _nan_on_calls(monkeypatch, DiscreteVAE, None)
    out = tmp_path / "run"
    args = train_vae.parse_args(["--image_folder", str(data_dir), *VAE_FLAGS, "--max_steps", "20",
                                 "--max_nonfinite", "2", "--sample_every", "0", "--output_dir", str(out)])
    with pytest.raises(TrainingError, match=r"non-finite .* 3 steps in a row, more than --max_nonfinite 2"):
        train_vae.main(args)
    assert len(_records(out)) == 3
    assert not (out / "checkpoints").exists()


def test_nonfinite_weights_are_never_saved(tmp_path, data_dir, monkeypatch):
    original = DiscreteVAE.forward

    def forward(self, *args, **kwargs):
        with torch.no_grad():
            self.codebook.weight[0, 0] = float("nan")  # the weights themselves diverge
        return original(self, *args, **kwargs)

    monkeypatch.setattr(DiscreteVAE, "forward", forward)
    out = tmp_path / "run"
    args = train_vae.parse_args(["--image_folder", str(data_dir), *VAE_FLAGS, "--max_steps", "1",
                                 "--sample_every", "0", "--output_dir", str(out)])
    with pytest.raises(TrainingError, match="weights have become non-finite"):
        train_vae.main(args)
    assert not list(out.glob("**/*.safetensors"))


# ------------------------------------------------------------------------------------------ DALLE


def test_train_dalle_writes_model_state_log_and_samples(tmp_path, data_dir, tokenizer_json, vae_run, capsys):
    vae_path = vae_run[0] / "vae.safetensors"
    out = tmp_path / "run"
    args = _dalle_args(out, data_dir, tokenizer_json, vae_path, "--max_steps", "2", "--sample_every", "2",
                       "--sample_caption", "a red circle on a blue background", "--num_sample_images", "2",
                       "--optimize_for_inference", "--attn_types", "full,axial_row")
    summary = train_dalle.main(args)
    assert summary["steps"] == 2 and summary["kind"] == "dalle"
    assert "optimize_for_inference" in capsys.readouterr().out

    loaded = load_checkpoint(out / "dalle.safetensors")
    assert loaded.kind == "dalle" and isinstance(loaded.model, DALLE)
    assert loaded.model.config.attn_types == ("full", "axial_row") and loaded.model.text_seq_len == 8
    assert loaded.tokenizer is not None and loaded.tokenizer.vocab_size == 15
    assert load_training_state(out / "last.state.pt")["step"] == 2

    steps = _records(out)
    assert [r["step"] for r in steps] == [1, 2] and all(math.isfinite(r["loss"]) for r in steps)
    grid = Image.open(out / "samples" / "step_00000002.png")
    assert grid.size == (2 + 2 * 34, 2 + 34)
    assert (out / "samples" / "step_00000002.txt").read_text().strip() == "a red circle on a blue background"
    assert _records(out, "images")[0]["caption"] == "a red circle on a blue background"

    # --dalle_path continues from the weights (fresh optimizer) in a new run folder
    out2 = tmp_path / "run2"
    summary = train_dalle.main(train_dalle.parse_args(
        ["--dalle_path", str(out / "dalle.safetensors"), "--image_text_folder", str(data_dir), *DALLE_FLAGS,
         "--max_steps", "1", "--output_dir", str(out2)]))
    assert summary["steps"] == 1
    assert load_checkpoint(out2 / "dalle.safetensors").tokenizer.vocab_size == 15  # the stored tokenizer


def test_train_dalle_on_webdataset_shards(tmp_path, data_dir, tokenizer_json, vae_run):
    """--wds with the real webdataset package: the synthetic images and captions packed into 2 tar shards."""
    pytest.importorskip("webdataset")
    import tarfile

    shards = tmp_path / "shards"
    shards.mkdir()
    images = sorted(data_dir.rglob("*.png"))
    for s in range(2):
        with tarfile.open(shards / f"shapes-{s:03d}.tar", "w") as tar:
            for i, image in enumerate(images[s::2]):
                key = f"{s:03d}{i:04d}"
                tar.add(image, arcname=f"{key}.png")
                tar.add(image.with_suffix(".txt"), arcname=f"{key}.txt")
    out = tmp_path / "run"
    summary = train_dalle.main(train_dalle.parse_args(
        ["--vae_path", str(vae_run[0] / "vae.safetensors"), "--image_text_folder", str(shards), "--wds", "png,txt",
         "--bpe_path", str(tokenizer_json), "--hug", *DALLE_FLAGS, "--max_steps", "3", "--output_dir", str(out)]))
    assert summary["steps"] == 3
    steps = _records(out)
    assert [r["step"] for r in steps] == [1, 2, 3] and all(math.isfinite(r["loss"]) for r in steps)
    assert load_checkpoint(out / "dalle.safetensors").kind == "dalle"


def test_resume_reproduces_the_uninterrupted_loss_curve(tmp_path, data_dir, tokenizer_json, vae_run, monkeypatch):
    vae_path = vae_run[0] / "vae.safetensors"
    # randomness in the step itself: caption dropout and dropout both draw from the global RNG
    flags = ["--max_steps", "6", "--save_every_steps", "3", "--null_cond_prob", "0.5", "--ff_dropout", "0.1",
             "--seed", "3"]

    straight = tmp_path / "straight"
    train_dalle.main(_dalle_args(straight, data_dir, tokenizer_json, vae_path, *flags))

    # the same run, killed in step 5 (after the checkpoint of step 3, with step 4 already logged)
    resumed = tmp_path / "resumed"
    original = DALLE.forward
    calls = {"n": 0}

    def dying_forward(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt("killed")
        return original(self, *args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(DALLE, "forward", dying_forward)
        with pytest.raises(KeyboardInterrupt):
            train_dalle.main(_dalle_args(resumed, data_dir, tokenizer_json, vae_path, *flags))
    assert [r["step"] for r in _records(resumed)] == [1, 2, 3, 4]

    train_dalle.main(_dalle_args(resumed, data_dir, tokenizer_json, vae_path, *flags, "--resume"))

    a, b = _records(straight), _records(resumed)
    assert [r["step"] for r in b] == [1, 2, 3, 4, 5, 6]
    assert [r["epoch"] for r in b] == [0, 0, 0, 0, 1, 1]  # crosses an epoch boundary after resuming
    torch.testing.assert_close(torch.tensor([r["loss"] for r in b], dtype=torch.float64),
                               torch.tensor([r["loss"] for r in a], dtype=torch.float64), atol=1e-6, rtol=0)
    wa = load_checkpoint(straight / "dalle.safetensors").model.state_dict()
    wb = load_checkpoint(resumed / "dalle.safetensors").model.state_dict()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], atol=1e-6, rtol=0)


def test_bad_samples_are_skipped_and_reported(tmp_path, tokenizer_json, vae_run):
    vae_path = vae_run[0] / "vae.safetensors"
    data = tmp_path / "data"
    make_dataset(data, 16, image_size=32, seed=1)
    (data / "broken.png").write_bytes(b"not a png at all")
    (data / "broken.txt").write_text("a red square on a white background\n")
    Image.new("RGB", (32, 32), (200, 30, 30)).save(data / "nocaption.png")
    (data / "nocaption.txt").write_text("\n  \n")
    out = tmp_path / "run"
    # 18 pairs, batch 2: one epoch visits every sample
    with pytest.warns(UserWarning, match="skipping") as caught:
        summary = train_dalle.main(_dalle_args(out, data, tokenizer_json, vae_path, "--epochs", "1",
                                               "--batch_size", "2", "--max_bad_fraction", "0.2"))
    assert sum("skipping" in str(w.message) for w in caught) == 2
    assert summary["steps"] == 9
    assert summary["skipped_samples"] == 2
    assert summary["skipped_files"] == ["broken.png", "nocaption.txt"]
    assert _records(out)[-1]["skipped_samples"] == 2
    assert _records(out, "end")[0]["skipped_samples"] == 2
    assert json.loads((out / "summary.json").read_text())["skipped_samples"] == 2


# ------------------------------------------------------------------------------------------ pieces


def test_lr_schedules():
    f = lr_multiplier
    assert [f(s, schedule="constant", warmup_steps=4) for s in range(5)] == [0.25, 0.5, 0.75, 1.0, 1.0]
    assert f(0, schedule="cosine", total_steps=10) == 1.0
    assert f(5, schedule="cosine", total_steps=10) == pytest.approx(0.5)
    assert f(10, schedule="cosine", total_steps=10) == pytest.approx(0.0)
    assert f(2, schedule="cosine", warmup_steps=2, total_steps=12) == 1.0
    # exponential: DALLE-pytorch train_vae.py's cadence, decays after steps 0, 100, 200 (and every epoch start)
    assert [f(s, schedule="exponential", decay_rate=0.5, decay_every=100) for s in (0, 1, 100, 101, 250)] == [
        1.0, 0.5, 0.5, 0.25, 0.125]
    assert f(151, schedule="exponential", decay_rate=0.5, decay_every=100, steps_per_epoch=150) == 0.125
    # after warmup: only the decays after steps warmup .. step - 1 count
    assert [f(s, schedule="exponential", warmup_steps=2, decay_rate=0.5, decay_every=100) for s in (1, 2, 100, 101)] == [
        1.0, 1.0, 1.0, 0.5]
    for g in range(0, 700, 7):
        assert f(g, schedule="exponential", decay_rate=0.9, decay_every=100, steps_per_epoch=230) == pytest.approx(
            vae_learning_rate(g, batches_per_epoch=230, learning_rate=1.0, lr_decay_rate=0.9), rel=1e-12)


def test_image_grid_layout():
    top = torch.zeros(3, 3, 8, 8)
    bottom = torch.ones(2, 3, 8, 8)
    grid = image_grid([top, bottom], padding=1)
    assert grid.size == (1 + 3 * 9, 1 + 2 * 9) and grid.mode == "RGB"
    assert grid.getpixel((1, 1)) == (0, 0, 0) and grid.getpixel((1, 10)) == (255, 255, 255)
    assert image_grid([torch.rand(1, 4, 8, 8)]).mode == "RGBA"


def test_image_folder_without_captions(tmp_path):
    for i, size in enumerate([(40, 30), (16, 64)]):
        Image.new("RGB", size, (10 * i, 0, 0)).save(tmp_path / f"{i}.jpg")
    (tmp_path / "sub").mkdir()
    Image.new("RGBA", (8, 8)).save(tmp_path / "sub" / "x.png")
    ds = ImageFolder(tmp_path, 32)
    assert len(ds) == 3 and ds.paths == ["0.jpg", "1.jpg", os.path.join("sub", "x.png")]
    assert all(ds[i].shape == (3, 32, 32) for i in range(3))
    assert ImageFolder(tmp_path, 16, transparent=True)[0].shape == (4, 16, 16)


# ------------------------------------------------------------------------------------------ torchrun


def _torchrun(tmp_path, *flags):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(ROOT / "train_dalle.py"), *flags]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.mark.slow
def test_torchrun_ddp_then_fsdp_resume_on_cpu(tmp_path, data_dir, tokenizer_json, vae_run):
    """2 CPU processes (gloo): DDP for 4 steps; then the same run resumed at step 2 under FSDP2."""
    common = ["--vae_path", str(vae_run[0] / "vae.safetensors"), "--image_text_folder", str(data_dir),
              "--bpe_path", str(tokenizer_json), "--hug", *DALLE_FLAGS, "--batch_size", "2", "--max_steps", "4",
              "--save_every_steps", "2", "--null_cond_prob", "0.5", "--device", "cpu"]
    ddp = tmp_path / "ddp"
    proc = _torchrun(tmp_path, *common, "--output_dir", str(ddp))
    assert proc.stdout.count("done: 4 steps") == 1  # rank 0 prints, rank 1 does not

    h0 = (ddp / "replicas" / "rank0.sha256").read_text().strip()
    h1 = (ddp / "replicas" / "rank1.sha256").read_text().strip()  # written by rank 1 itself
    assert h0 == h1 and len(h0) == 64
    summary = json.loads((ddp / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["mode"] == "ddp" and summary["replicas_in_sync"] is True
    assert summary["samples_seen"] == 4 * 2 * 2
    loaded = load_checkpoint(ddp / "dalle.safetensors")
    with native_state_dict():  # the replicas' digests are over our module names
        assert weights_digest(loaded.model.state_dict()) == h0  # the saved model is the trained one
    ddp_steps = _records(ddp)
    assert [r["step"] for r in ddp_steps] == [1, 2, 3, 4] and all(math.isfinite(r["loss"]) for r in ddp_steps)

    # rewind a copy of the run to its step-2 checkpoint and resume it sharded with FSDP2
    fsdp = tmp_path / "fsdp"
    shutil.copytree(ddp, fsdp)
    for path in (fsdp / "checkpoints").glob("step_00000004.*"):
        path.unlink()
    (fsdp / "latest").unlink()
    _torchrun(tmp_path, *common, "--output_dir", str(fsdp), "--fsdp", "--resume")
    summary = json.loads((fsdp / "summary.json").read_text())
    assert summary["mode"] == "fsdp" and summary["replicas_in_sync"] is True and summary["steps"] == 4
    fsdp_steps = _records(fsdp)
    assert [r["step"] for r in fsdp_steps] == [1, 2, 3, 4]
    torch.testing.assert_close(torch.tensor([r["loss"] for r in fsdp_steps], dtype=torch.float64),
                               torch.tensor([r["loss"] for r in ddp_steps], dtype=torch.float64), atol=1e-5, rtol=0)
    loaded = load_checkpoint(fsdp / "dalle.safetensors")  # gathered from the shards
    with native_state_dict():
        assert weights_digest(loaded.model.state_dict()) == (fsdp / "replicas" / "rank1.sha256").read_text().strip()
    reference = load_checkpoint(ddp / "dalle.safetensors").model.state_dict()
    for k, v in loaded.model.state_dict().items():
        torch.testing.assert_close(v, reference[k], atol=1e-5, rtol=0)


def test_missing_optional_packages_fail_early(tmp_path, data_dir, tokenizer_json, monkeypatch):
    import importlib.util

    real_find_spec = importlib.util.find_spec
    hidden = {"tensorboard", "wandb", "webdataset"}  # as if not installed, whether or not they are here
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in hidden else real_find_spec(name, *a))
    for flag, module in (["--tensorboard", "tensorboard"], ["--wandb", "wandb"], ["--wds=jpg,txt", "webdataset"]):
        args = train_dalle.parse_args(["--vae_path", "missing.safetensors", "--image_text_folder", str(data_dir),
                                       "--output_dir", str(tmp_path / "run"), flag])
        with pytest.raises(TrainingError, match=f"pip install {module}"):
            train_dalle.main(args)


def test_compile_flag_trains_through_the_compiled_wrapper(tmp_path, data_dir, monkeypatch):
    compiled = []
    original = torch.compile

    def eager_compile(model, **kwargs):  # the eager backend keeps the test fast (no C++ code generation)
        compiled.append(model)
        return original(model, backend="eager")

    monkeypatch.setattr(torch, "compile", eager_compile)
    out = tmp_path / "run"
    summary = train_vae.main(train_vae.parse_args(
        ["--image_folder", str(data_dir), *VAE_FLAGS, "--compile", "--max_steps", "2", "--sample_every", "2",
         "--output_dir", str(out)]))
    assert summary["steps"] == 2 and len(compiled) == 1 and isinstance(compiled[0], DiscreteVAE)
    assert set(load_checkpoint(out / "vae.safetensors").model.state_dict()) == set(compiled[0].state_dict())
