"""Training scripts under careless use and faults: one-line errors, checkpoint rotation that never loses
the pair `latest` names, resuming past a damaged pair, finished runs, stale temporary files, a full disk."""
from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from dalle_pytorch.checkpoint import training_state
from dalle_pytorch.errors import TrainingError
from dalle_pytorch.formats import files
from dalle_pytorch.synthetic import make_dataset
from tests.train.test_training import VAE_FLAGS, train_vae

ROOT = Path(__file__).resolve().parents[2]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("shapes")
    make_dataset(folder, 8, image_size=32, seed=0)
    return folder


def vae(images, out, *extra):
    return train_vae.main(train_vae.parse_args(["--image_folder", str(images), *VAE_FLAGS, "--sample_every", "0",
                                                "--output_dir", str(out), *extra]))


def steps_on_disk(out: Path) -> list[int]:
    return sorted(int(p.name[5:13]) for p in (out / "checkpoints").glob("step_*.state.pt"))


def script(name, *argv):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(ROOT / f"{name}.py"), *argv], capture_output=True, text=True,
                          timeout=300, env=env, cwd=ROOT)


# -- one-line errors ---------------------------------------------------------------------------------


def test_errors_are_one_line_and_debug_shows_the_traceback(tmp_path, images):
    garbage = tmp_path / "vae.pt"
    garbage.write_bytes(b"not a checkpoint at all")
    common = ["--image_text_folder", str(images), "--max_steps", "1", "--no_progress"]
    cases = [
        (["--vae_path", str(garbage), "--output_dir", str(tmp_path / "a")], "vae.pt"),  # a CheckpointError
        (["--vae_path", str(garbage), "--output_dir", str(garbage / "run")], "vae.pt"),  # an unwritable folder
        (["--dalle_path", str(tmp_path / "missing.safetensors"), "--output_dir", str(tmp_path / "b")], "missing"),
    ]
    for argv, needle in cases:
        result = script("train_dalle", *common, *argv)
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert result.returncode == 1 and len(lines) == 1, result.stderr
        assert lines[0].startswith("error: ") and needle in lines[0] and "Traceback" not in result.stderr
    result = script("train_dalle", *common, *cases[0][0], "--debug")
    assert result.returncode != 0 and "Traceback" in result.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    result = script("train_vae", "--image_folder", str(empty), "--output_dir", str(tmp_path / "c"), "--no_progress")
    assert result.returncode == 1 and "no images" in result.stderr and "Traceback" not in result.stderr


def test_closing_line_counts_agree_in_number(tmp_path, images, capsys):
    vae(images, tmp_path / "run", "--epochs", "1", "--batch_size", "8")  # 8 images: one step is the epoch
    said = capsys.readouterr().out
    assert "done: 1 step, 1 epoch completed, final loss" in said
    assert "0 non-finite steps skipped, 0 bad samples skipped" in said and "8 images in" in said


def test_warnings_are_one_line_without_their_source(tmp_path, images, capsys):
    data = tmp_path / "data"
    shutil.copytree(images, data)
    (data / "broken.png").write_bytes(b"not a png at all")
    argv = ["--image_folder", str(data), *VAE_FLAGS, "--batch_size", "9", "--epochs", "1", "--sample_every", "0",
            "--output_dir", str(tmp_path / "run")]  # one step reads all 9 images
    assert train_vae.cli(argv) == 0
    err = capsys.readouterr().err
    said = [line for line in err.splitlines() if "broken.png" in line]
    assert len(said) == 1 and said[0].startswith("warning: ImageFolder: skipping ") and "unreadable image" in said[0]
    assert "UserWarning" not in err and "warnings.warn" not in err


# -- rotation and the latest pointer -------------------------------------------------------------------


def test_rotation_never_deletes_the_pair_latest_names(tmp_path, images):
    """Train to 6 (a pair every step, keep 3), point `latest` back at step 4, resume to --max_steps 5
    with --keep_last 1: the new pair of step 5 is kept (and linked as the final model), step 6 (newer,
    from the longer run) is not deleted, step 4 is rotated away."""
    out = tmp_path / "run"
    vae(images, out, "--max_steps", "6", "--save_every_steps", "1", "--keep_last", "3")
    assert steps_on_disk(out) == [4, 5, 6]
    (out / "latest").write_text(json.dumps({"step": 4, "model": "checkpoints/step_00000004.safetensors",
                                            "state": "checkpoints/step_00000004.state.pt"}))
    summary = vae(images, out, "--max_steps", "5", "--save_every_steps", "10", "--keep_last", "1", "--resume")
    assert summary["steps"] == 5
    assert steps_on_disk(out) == [5, 6]  # 4 rotated away; 5 (latest) and 6 (newer) kept
    assert json.loads((out / "latest").read_text())["step"] == 5
    assert os.path.samefile(out / "vae.safetensors", out / "checkpoints" / "step_00000005.safetensors")
    assert json.loads((out / "summary.json").read_text())["steps"] == 5


def test_latest_pointing_outside_the_run_is_refused(tmp_path, images):
    out = tmp_path / "run"
    vae(images, out, "--max_steps", "1")
    (out / "latest").write_text(json.dumps({"step": 1, "model": "../../elsewhere.safetensors",
                                            "state": "checkpoints/step_00000001.state.pt"}))
    with pytest.raises(TrainingError, match="refusing to follow it"):
        vae(images, out, "--max_steps", "2", "--resume")


def test_resume_skips_a_damaged_newest_pair(tmp_path, images, capsys):
    out = tmp_path / "run"
    vae(images, out, "--max_steps", "3", "--save_every_steps", "1", "--keep_last", "0")
    newest = out / "checkpoints" / "step_00000003.safetensors"
    newest.write_bytes(newest.read_bytes()[:1000])  # truncated
    summary = vae(images, out, "--max_steps", "4", "--resume")
    said = capsys.readouterr().out
    assert "skipping the checkpoint pair of step 3" in said and "truncated or corrupted" in said
    assert "continuing from step 2" in said and summary["steps"] == 4


# -- finished runs and temporary files ------------------------------------------------------------------


def test_resuming_a_finished_run_changes_nothing(tmp_path, images, capsys):
    out = tmp_path / "run"
    vae(images, out, "--max_steps", "2")
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    for _ in range(2):
        summary = vae(images, out, "--max_steps", "2", "--resume")
        assert "already complete" in capsys.readouterr().out and summary["steps"] == 2
    after = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before, "a finished run was modified (summary.json, log.jsonl, links, temporary files)"


def test_stale_temporary_files_are_cleaned_at_start(tmp_path, images, capsys):
    out = tmp_path / "run"
    vae(images, out, "--max_steps", "1")
    stale = [out / ".summary.json.0a1b2c3d.tmp", out / "vae.safetensors.4242.tmp",
             out / "checkpoints" / ".step_00000002.state.pt.deadbeef.tmp"]
    for path in stale:
        path.write_bytes(b"left by a kill")
    keep = out / "notes.tmp"
    keep.write_text("not ours")
    vae(images, out, "--max_steps", "2", "--resume")
    assert not any(p.exists() for p in stale) and keep.exists()
    assert "removed 3 temporary files" in capsys.readouterr().out
    assert [p.name for p in out.rglob("*.tmp")] == ["notes.tmp"]


# -- a full disk -------------------------------------------------------------------------------------


def test_a_full_disk_while_saving_keeps_the_previous_checkpoint(tmp_path, images, monkeypatch):
    out = tmp_path / "run"
    real = training_state.atomic_write_bytes

    def fills_up(path, data):
        if "step_00000002.state.pt" not in str(path):
            return real(path, data)

        def write(tmp):  # the disk fills up part-way through the second checkpoint's state file
            with open(tmp, "wb") as f:
                f.write(data[:100])
            raise OSError(errno.ENOSPC, "No space left on device")

        files.atomic_write(path, write)

    monkeypatch.setattr(training_state, "atomic_write_bytes", fills_up)
    with pytest.raises(TrainingError) as err:
        vae(images, out, "--max_steps", "3", "--save_every_steps", "1")
    message = str(err.value)
    assert "no space left on device while writing" in message and "step_00000002.state.pt" in message
    assert "the previous checkpoint" in message and "step_00000001.safetensors (step 1) is intact" in message
    assert steps_on_disk(out) == [1] and not (out / "checkpoints" / "step_00000002.safetensors").exists()
    assert not list(out.rglob("*.tmp"))
    assert json.loads((out / "latest").read_text())["step"] == 1
