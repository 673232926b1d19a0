"""Training curves as pictures: dalle-plot (python -m dalle_pytorch.cli.plot), refreshed at every checkpoint."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dalle_pytorch.synthetic import make_dataset
from dalle_pytorch.train.curves import load_curves
from tests.train.test_training import VAE_FLAGS, train_vae

ROOT = Path(__file__).resolve().parents[2]
pytest.importorskip("matplotlib", reason="the plot extra (matplotlib) is not installed")


pytestmark = pytest.mark.usefixtures("one_thread")


def panel_spreads(png: Path) -> list[float]:
    """The pixel standard deviation of each quarter of the figure (one panel each)."""
    pixels = np.asarray(Image.open(png).convert("L"), dtype=np.float64)
    h, w = pixels.shape
    return [pixels[r * h // 2 : (r + 1) * h // 2, c * w // 2 : (c + 1) * w // 2].std() for r in (0, 1) for c in (0, 1)]


def test_curves_of_a_killed_and_resumed_run(tmp_path):
    images = tmp_path / "shapes"
    make_dataset(images, 8, image_size=32, seed=0)
    out = tmp_path / "run"
    args = ["--image_folder", str(images), *VAE_FLAGS, "--sample_every", "0", "--output_dir", str(out),
            "--save_every_steps", "2", "--keep_last", "0"]
    train_vae.main(train_vae.parse_args([*args, "--max_steps", "4"]))
    assert (out / "curves.png").is_file()  # refreshed at every checkpoint
    # a kill after step 3 of a run resumed from step 2: its step 3 and 4 records are in the log, and the
    # resume drops them (they follow the checkpoint it resumes from) before writing steps 3.. again
    (out / "latest").write_text(json.dumps({"step": 2, "model": "checkpoints/step_00000002.safetensors",
                                            "state": "checkpoints/step_00000002.state.pt"}))
    train_vae.main(train_vae.parse_args([*args, "--max_steps", "6", "--resume"]))
    curves = load_curves(out)
    assert curves.steps == [1, 2, 3, 4, 5, 6] and curves.resumes == [2] and curves.kind == "vae"
    assert all(np.isfinite(curves.values["loss"])) and all(v > 0 for v in curves.values["lr"])

    result = subprocess.run([sys.executable, "-m", "dalle_pytorch.cli.plot", str(out), "-o", str(tmp_path / "c.png")],
                            capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stderr
    with Image.open(tmp_path / "c.png") as im:
        assert im.size == (1000, 700)
    assert all(spread > 5 for spread in panel_spreads(tmp_path / "c.png")), "an empty panel"


def test_skipped_steps_are_marked_and_bad_lines_ignored(tmp_path):
    records = [{"event": "start", "step": 0, "kind": "dalle"}]
    for step in range(1, 11):
        skipped = step in (4, 7)
        records.append({"event": "step", "step": step, "loss": float("nan") if skipped else 5.0 / step, "lr": 1e-3,
                        "grad_norm": None if skipped else 1.0, "samples_per_sec": 10.0 + step,
                        **({"skipped_step": True} if skipped else {})})
    lines = [json.dumps(r) for r in records] + ['{"event": "step", "step": 11, "loss']  # a line cut by a kill
    (tmp_path / "log.jsonl").write_text("\n".join(lines) + "\n")
    curves = load_curves(tmp_path)
    assert curves.steps == list(range(1, 11)) and curves.skipped == [4, 7] and curves.kind == "dalle"
    from dalle_pytorch.train.curves import write_curves

    path = write_curves(tmp_path)
    red = np.asarray(Image.open(path).convert("RGB"), dtype=np.int32)
    assert ((red[..., 0] > 180) & (red[..., 1] < 80) & (red[..., 2] < 80)).sum() > 10  # the red crosses
    assert subprocess.run([sys.executable, "-m", "dalle_pytorch.cli.plot", str(tmp_path / "missing")],
                          capture_output=True, text=True, cwd=ROOT).returncode == 1
