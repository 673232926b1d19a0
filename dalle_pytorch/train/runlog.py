"""The run logger: JSONL log (every step and event), console / tqdm lines, optional TensorBoard and
Weights & Biases, rank 0 only; and the run's closing summary (`write_summary`)."""
from __future__ import annotations

import json
import os
import time
from typing import Any, Callable, Optional

from PIL import Image

from dalle_pytorch.distributed import DistEnv
from dalle_pytorch.errors import TrainingError, name_fields
from dalle_pytorch.formats.files import write_text
from dalle_pytorch.train.config import TrainConfig

__all__ = ["LOG_NAME", "RunLogger", "counted", "write_summary"]

LOG_NAME = "log.jsonl"


class RunLogger:
    """JSONL log (every step and event), console lines, optional TensorBoard / W&B; rank 0 only.

    Console lines name settings as `name_setting(field)` (`dalle_pytorch.errors.name_fields`).
    """

    def __init__(self, run_dir: str, config: TrainConfig, env: DistEnv, resume_step: Optional[int],
                 name_setting: Optional[Callable[[str], str]] = None) -> None:
        self.active = env.is_main
        self.name_setting = name_setting
        outputs = config.outputs
        self.bar = None
        self.tb = None
        self.wandb = None
        self.file = None
        if not self.active:
            return
        path = os.path.join(run_dir, LOG_NAME)
        if resume_step is not None and os.path.exists(path):
            # drop records after the resumed step (logged by the interrupted run after its last checkpoint)
            kept = []
            with open(path, encoding="utf-8") as f:
                for line in f:
                    try:
                        record = json.loads(line)
                    except ValueError:
                        continue
                    if int(record.get("step", 0)) <= resume_step:
                        kept.append(json.dumps(record))
            write_text(path, "".join(k + "\n" for k in kept))
            self.file = open(path, "a", encoding="utf-8")
        else:
            self.file = open(path, "w", encoding="utf-8")
        if outputs.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as e:
                raise TrainingError("`tensorboard` needs the tensorboard package: pip install tensorboard") from e
            self.tb = SummaryWriter(log_dir=os.path.join(run_dir, "tensorboard"))
        if outputs.wandb:
            try:
                import wandb
            except ImportError as e:
                raise TrainingError("`wandb` needs the wandb package: pip install wandb, then wandb login") from e
            self.wandb = wandb
            wandb.init(project=outputs.wandb_name, entity=outputs.wandb_entity, name=outputs.name,
                       config=config.settings(), dir=run_dir, resume="allow")

    def write(self, record: dict) -> None:
        if not self.active:
            return
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        if record.get("event") == "step":
            step = record["step"]
            scalars = {k: v for k, v in record.items()
                       if k not in ("event", "step") and isinstance(v, (int, float)) and not isinstance(v, bool)}
            if self.tb is not None:
                for k, v in scalars.items():
                    self.tb.add_scalar(f"train/{k}", v, step)
            if self.wandb is not None:
                self.wandb.log(scalars, step=step)

    def event(self, name: str, **fields: Any) -> None:
        self.write({"event": name, **fields, "time": time.time()})

    def print(self, message: str) -> None:
        if not self.active:
            return
        message = name_fields(message, self.name_setting)
        if self.bar is not None:
            self.bar.write(message)
        else:
            print(message, flush=True)

    def image(self, path: str, step: int, caption: str) -> None:
        if not self.active:
            return
        if self.tb is not None:
            import numpy as np

            with Image.open(path) as img:
                self.tb.add_image("samples", np.asarray(img.convert("RGB")), step, dataformats="HWC")
        if self.wandb is not None:
            self.wandb.log({"samples": self.wandb.Image(path, caption=caption)}, step=step)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()
        if self.file is not None:
            self.file.close()
            self.file = None


def counted(n: int, noun: str, plural: Optional[str] = None) -> str:
    """'1 step', '2 steps' (`plural` for nouns that do not take an s)."""
    return f"{n} {noun if n == 1 else plural or noun + 's'}"


def write_summary(logger: RunLogger, run_dir: str, summary: dict) -> None:
    """Write summary.json, log the "end" event and print the closing line (rank 0)."""
    write_text(os.path.join(run_dir, "summary.json"), json.dumps(summary, indent=2) + "\n")
    logger.event("end", step=summary["steps"], **{k: v for k, v in summary.items() if k != "skipped_files"})
    if logger.bar is not None:
        logger.bar.close()
        logger.bar = None
    files = summary["skipped_files"]
    skipped = f"{counted(summary['skipped_samples'], 'bad sample')} skipped"
    if files:
        skipped += f" ({', '.join(files[:5])}" + (", ..." if len(files) > 5 else "") + ")"
    loss = f"{summary['final_loss']:.5f}" if summary["final_loss"] is not None else "n/a"
    logger.print(
        f"done: {counted(summary['steps'], 'step')}, {counted(summary['epochs_completed'], 'epoch')} completed, "
        f"final loss {loss}, {counted(summary['nonfinite_steps'], 'non-finite step')} skipped, {skipped}"
        + (f"; model: {summary['model']}" if summary["model"] is not None else ""))
    if summary["replicas_in_sync"] is False:
        logger.print("warning: the ranks ended with different weights (see replicas/*.sha256)")
