"""`TrainConfig`: every setting of a training run, built once and handed to `run.run(config, build_task)`,
which passes it to the task builder and the trainer.

    config = TrainConfig(task=VaeConfig(image_folder="images", image_size=64),
                         optim=OptimConfig(learning_rate=1e-3, lr_schedule="exponential"),
                         loop=LoopConfig(batch_size=8, max_steps=1000))
    run(config, vae_task)

The settings are grouped by what reads them: `optim` (the optimizer and learning-rate schedule),
`loop` (run length, batches, data loading, seed), `compute` (device, precision, parallelism),
`outputs` (run folder, checkpoints, logs, samples) and `task`, the settings of what is trained
(`VaeConfig` or `DalleConfig`, in task_config.py). Each field's name is unique over all the groups:
errors and notes name a setting by it, as `field` (`dalle_pytorch.errors`), and the scripts' flags
are `--<field>`. Values are checked once, in `__post_init__` (a TrainingError naming the field); files
and folders are checked when the run starts (`check_inputs`). `settings()` is the flat, JSON-able
dict a run folder's config.json holds. The defaults are train_dalle.py's.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Optional, Union

from dalle_pytorch.errors import TrainingError
from dalle_pytorch.train.task_config import DalleConfig, VaeConfig, at_least, one_of

__all__ = ["OptimConfig", "LoopConfig", "ComputeConfig", "OutputConfig", "TrainConfig", "TaskConfig",
           "VaeConfig", "DalleConfig", "LR_SCHEDULES", "PRECISIONS", "DEVICES"]

LR_SCHEDULES = ("constant", "cosine", "exponential")
PRECISIONS = ("fp32", "bf16", "fp16")
DEVICES = ("auto", "cpu", "cuda", "mps")

#: the settings of what a run trains (read by its task builder)
TaskConfig = Union[VaeConfig, DalleConfig]


@dataclass
class OptimConfig:
    """The optimizer (AdamW) and the learning-rate schedule (`optim.LRSchedule`)."""

    learning_rate: float = 3e-4  # peak learning rate
    weight_decay: float = 0.0  # AdamW weight decay on weight matrices (not biases / norms)
    clip_grad_norm: float = 0.5  # clip the gradient norm to this value; 0 disables
    lr_schedule: str = "constant"  # after warmup: constant, cosine (to 0 at the last step) or exponential
    warmup_steps: int = 0  # linear warmup from 0 over this many steps
    lr_decay_rate: float = 0.98  # exponential: multiply the lr by this every lr_decay_every steps
    lr_decay_every: int = 100  # exponential: steps between decays (and at every epoch start)
    lr_decay: bool = False  # DALLE-pytorch's ReduceLROnPlateau, once per epoch (replaces the per-step schedule)

    def __post_init__(self) -> None:
        if not self.learning_rate > 0:
            raise TrainingError(f"`learning_rate` must be > 0, got {self.learning_rate}")
        if not self.weight_decay >= 0:
            raise TrainingError(f"`weight_decay` must be >= 0, got {self.weight_decay}")
        if not self.clip_grad_norm >= 0:
            raise TrainingError(f"`clip_grad_norm` must be >= 0 (0 disables), got {self.clip_grad_norm}")
        one_of(self, "lr_schedule", LR_SCHEDULES)
        at_least(self, 0, "warmup_steps")
        at_least(self, 1, "lr_decay_every")
        if not 0 < self.lr_decay_rate <= 1:
            raise TrainingError(f"`lr_decay_rate` must be in (0, 1], got {self.lr_decay_rate}")
        if self.lr_decay and (self.lr_schedule != "constant" or self.warmup_steps):
            raise TrainingError("`lr_decay` is DALLE-pytorch's plateau schedule (halve the lr after 11 epochs without "
                                "improvement); it replaces `lr_schedule` / `warmup_steps`: drop those")


@dataclass
class LoopConfig:
    """How long a run is, how big its batches are, how its data is read (`loader.EpochData`)."""

    epochs: int = 20  # passes over the data; max_steps takes precedence
    max_steps: Optional[int] = None  # stop after this many optimizer steps (None: epochs decide)
    batch_size: int = 4  # samples per process per micro-batch (the global batch with compute.deepspeed)
    ga_steps: int = 1  # gradient accumulation: micro-batches per optimizer step
    seed: int = 42  # seeds the weights, the data order and every random draw of the run
    num_workers: int = 0  # DataLoader worker processes per rank
    max_bad_fraction: float = 0.01  # fraction of unreadable samples tolerated before the dataset raises
    max_nonfinite: int = 5  # stop after more than this many non-finite losses in a row

    def __post_init__(self) -> None:
        at_least(self, 1, "epochs", "max_steps", "batch_size", "ga_steps")
        at_least(self, 0, "num_workers", "max_nonfinite")
        if not self.max_bad_fraction >= 0:
            raise TrainingError(f"`max_bad_fraction` must be >= 0, got {self.max_bad_fraction}")


@dataclass
class ComputeConfig:
    """Where and how the steps run: device, precision, compilation, parallelism."""

    device: str = "auto"  # auto (CUDA, else Apple's MPS for one process, else CPU), cpu, cuda or mps
    precision: str = "fp32"  # autocast precision: fp32, bf16 or fp16 (float16 with loss scaling, CUDA only)
    compile: bool = False  # torch.compile the model for training
    fsdp: bool = False  # shard the model with FSDP2 instead of replicating it with DDP (needs >= 2 processes)
    deepspeed: bool = False  # DALLE-pytorch's DeepSpeed runs: batch_size is the global batch per optimizer step
    flops_profiler: bool = False  # count the FLOPs of one training step (flops_profiler_step), per module
    flops_profiler_step: int = 200  # the step flops_profiler counts (the last step of a shorter run)

    def __post_init__(self) -> None:
        one_of(self, "device", DEVICES)
        one_of(self, "precision", PRECISIONS)
        at_least(self, 0, "flops_profiler_step")
        if self.flops_profiler and self.compile:
            raise TrainingError("`flops_profiler` counts the eager model's operations: drop `compile`")


@dataclass
class OutputConfig:
    """The run folder and what is written to it: checkpoints, logs, sample images."""

    name: str = "dalle"  # run name: the default output_dir runs/<name>, the final model <name>.safetensors
    output_dir: Optional[str] = None  # folder for checkpoints, logs and images (None: runs/<name>)
    resume: bool = False  # continue exactly from the newest training state in the output folder
    save_every_steps: int = 1000  # a checkpoint pair every N steps; 0: only at the end
    keep_last: int = 3  # keep the newest K checkpoint pairs; 0 keeps all
    sample_every: int = 100  # an image grid every N steps; 0 disables
    log_every: int = 10  # a console line every N steps (the JSONL log has every step)
    no_progress: bool = False  # no tqdm progress bar
    tensorboard: bool = False  # also log to TensorBoard (needs tensorboard)
    wandb: bool = False  # also log to Weights & Biases (needs wandb)
    wandb_name: str = "dalle_pytorch"  # the W&B project
    wandb_entity: Optional[str] = None  # the W&B entity (team or user)

    def __post_init__(self) -> None:
        if not self.name:
            raise TrainingError("`name` is empty: give the run a name (it names the run folder and the final model)")
        at_least(self, 0, "save_every_steps", "keep_last", "sample_every")
        at_least(self, 1, "log_every")

    @property
    def run_dir(self) -> str:
        """The run folder (absolute): output_dir, or runs/<name>."""
        return os.path.abspath(self.output_dir or os.path.join("runs", self.name))


GROUPS = {"optim": OptimConfig, "loop": LoopConfig, "compute": ComputeConfig, "outputs": OutputConfig}


@dataclass
class TrainConfig:
    """Every setting of a training run (see the module docstring); checked when built."""

    task: Optional[TaskConfig] = None  # what is trained: VaeConfig (vae_task) or DalleConfig (dalle_task)
    optim: OptimConfig = field(default_factory=OptimConfig)  # the optimizer and learning-rate schedule
    loop: LoopConfig = field(default_factory=LoopConfig)  # run length, batches, data loading, seed
    compute: ComputeConfig = field(default_factory=ComputeConfig)  # device, precision, parallelism
    outputs: OutputConfig = field(default_factory=OutputConfig)  # run folder, checkpoints, logs, samples

    def __post_init__(self) -> None:
        for name, kind in GROUPS.items():
            if not isinstance(getattr(self, name), kind):
                raise TrainingError(f"TrainConfig.{name} must be a {kind.__name__}, got "
                                    f"{type(getattr(self, name)).__name__}")
        if self.task is not None and not isinstance(self.task, (VaeConfig, DalleConfig)):
            raise TrainingError(f"TrainConfig.task must be a VaeConfig or a DalleConfig, got "
                                f"{type(self.task).__name__}")

    @property
    def streaming(self) -> bool:
        """Whether the data is a stream of WebDataset shards (no epoch length, no exact resume): images (`wds`) or
        code shards given with their `codes_manifest`."""
        return bool(getattr(self.task, "wds", None)) or bool(getattr(self.task, "codes_streamed", False))

    def settings(self) -> dict:
        """Every setting by its field name, one flat JSON-able dict (the run folder's config.json)."""
        flat: dict = {}
        for part in (self.task, self.optim, self.loop, self.compute, self.outputs):
            if part is not None:
                flat.update(dataclasses.asdict(part))
        return flat


def field_names() -> dict[str, str]:
    """Every setting's field name -> its group ("task" for the fields of VaeConfig and DalleConfig)."""
    names: dict[str, str] = {}
    for group, kind in [*GROUPS.items(), ("task", VaeConfig), ("task", DalleConfig)]:
        for f in dataclasses.fields(kind):
            if names.setdefault(f.name, group) != group:
                raise AssertionError(f"the setting {f.name!r} is defined twice ({names[f.name]}, {group})")
    return names
