"""Training curves as a picture.

    write_curves("runs/<name>")          # runs/<name>/curves.png  (the command line: dalle-plot)

Four panels from the run's `log.jsonl`: loss, learning rate, gradient norm and samples/s against the
step. Steps whose optimizer update was skipped (a non-finite loss or gradient) are marked with red
crosses on the loss panel, and resumes with dashed lines. A killed and resumed run is one continuous
curve: the log keeps one record per step (records written after the last checkpoint by a killed run
are dropped when it resumes), and if a step appears twice here the later record wins.

The training scripts refresh `curves.png` at every checkpoint when matplotlib is installed (the
`plot` extra, or just `pip install matplotlib`).
"""
from __future__ import annotations

import io
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from dalle_pytorch.formats.files import atomic_write_bytes, read_bytes

__all__ = ["Curves", "load_curves", "plot_curves", "write_curves", "refresh_curves"]

LOG_NAME = "log.jsonl"
CURVES_NAME = "curves.png"
PANELS = (("loss", "loss"), ("lr", "learning rate"), ("grad_norm", "gradient norm"), ("samples_per_sec", "samples/s"))


@dataclass
class Curves:
    """The per-step values of a run, one entry per step in increasing order."""

    steps: list[int] = field(default_factory=list)
    values: dict[str, list[float]] = field(default_factory=dict)  # PANELS key -> value per step (nan: none)
    skipped: list[int] = field(default_factory=list)  # steps whose optimizer update was skipped
    resumes: list[int] = field(default_factory=list)  # steps a run resumed at
    kind: str = ""


def _number(value) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan


def load_curves(run_dir: str | os.PathLike) -> Curves:
    """Read `run_dir/log.jsonl` into `Curves` (lines that are not JSON, e.g. cut by a kill, are skipped)."""
    text = read_bytes(Path(run_dir) / LOG_NAME, "training log", 1 << 30).decode("utf-8", errors="replace")
    by_step: dict[int, dict] = {}
    curves = Curves()
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if not isinstance(record, dict):
            continue
        event = record.get("event")
        if event == "step" and isinstance(record.get("step"), int):
            by_step[record["step"]] = record  # a repeated step: the later record wins
        elif event == "resume" and isinstance(record.get("step"), int):
            curves.resumes.append(record["step"])
        elif event in ("start", "resume") and not curves.kind:
            curves.kind = str(record.get("kind", ""))
    curves.steps = sorted(by_step)
    curves.values = {key: [_number(by_step[s].get(key)) for s in curves.steps] for key, _ in PANELS}
    curves.skipped = [s for s in curves.steps if by_step[s].get("skipped_step")]
    return curves


def plot_curves(curves: Curves, title: str = "") -> bytes:
    """The PNG bytes of a 2 x 2 grid of panels (needs matplotlib)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as e:
        raise ImportError("plotting training curves needs matplotlib: pip install matplotlib") from e
    fig = Figure(figsize=(10, 7), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, 2)
    for ax, (key, label) in zip(axes.flat, PANELS):
        ys = curves.values.get(key, [])
        points = [(s, y) for s, y in zip(curves.steps, ys) if math.isfinite(y)]
        if points:
            ax.plot([p[0] for p in points], [p[1] for p in points], color="tab:blue", linewidth=1.2)
        if key == "loss" and curves.skipped:
            finite = [y for _, y in points] or [0.0]
            ax.scatter(curves.skipped, [max(finite)] * len(curves.skipped), marker="x", color="tab:red",
                       label=f"skipped steps ({len(curves.skipped)})", zorder=3)
            ax.legend(loc="best", fontsize=8)
        for step in curves.resumes:
            ax.axvline(step, color="gray", linestyle="--", linewidth=0.8)
        ax.set_title(label, fontsize=10)
        ax.set_xlabel("step", fontsize=8)
        ax.grid(True, alpha=0.3)
        ax.tick_params(labelsize=8)
    fig.suptitle(title or "training curves", fontsize=11)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def write_curves(run_dir: str | os.PathLike, out: Optional[str | os.PathLike] = None) -> Path:
    """Plot `run_dir`'s log into `out` (default `run_dir/curves.png`, written atomically); returns the path."""
    run_dir = Path(run_dir)
    curves = load_curves(run_dir)
    path = Path(out) if out is not None else run_dir / CURVES_NAME
    title = f"{run_dir.name}: {curves.kind} run, {len(curves.steps)} steps" if curves.kind else run_dir.name
    atomic_write_bytes(path, plot_curves(curves, title))
    return path


def refresh_curves(run_dir: str | os.PathLike) -> Optional[Path]:
    """`write_curves` when matplotlib is installed (None otherwise): the training scripts call it at
    every checkpoint, and a plotting problem never stops a run (it is returned as None)."""
    import importlib.util

    if importlib.util.find_spec("matplotlib") is None:
        return None
    try:
        return write_curves(run_dir)
    except (OSError, ValueError, RuntimeError):
        return None
