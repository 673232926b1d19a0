"""The flags both training scripts share, and the one way parsed flags become a `TrainConfig`.

    parser = argparse.ArgumentParser(...); <the script's own flags>; add_common_args(parser, name="vae", ...)
    args = finish_flags(parser.parse_args(argv))
    train_from_flags(args, VaeConfig, vae_task)     # config_from_flags, run, errors in flag words

Every setting of `TrainConfig` (and of the task's `VaeConfig` / `DalleConfig`) is the flag
``--<field>`` (dest = field; aliases such as --save_every_n_steps lead to the same dest), so the
library's messages, which name fields as `field`, are shown with the flags (`messages.flag_errors`).
What exists only on the command line stays here: DALLE-pytorch's --fp16 / --amp (a precision), its
launcher flags (--deepspeed, --distributed_backend, --deepspeed_config, --local_rank), --debug, and
the text forms of lists ("full,axial_row", "jpg,txt").
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import shlex
import sys
from typing import Any, Callable, Optional

import torch

from dalle_pytorch.cli.flags import flag_names
from dalle_pytorch.cli.messages import flag_errors, flag_of, one_line, one_line_warnings
from dalle_pytorch.distributed import device_type
from dalle_pytorch.errors import CheckpointError, TrainingError
from dalle_pytorch.train.config import GROUPS, TrainConfig
from dalle_pytorch.train.run import run
from dalle_pytorch.train.tasks import TaskBuilder

__all__ = ["add_common_args", "add_backend_args", "positive_int", "non_negative_int", "finish_flags",
           "config_from_flags", "flag_notes", "check_launcher_flags", "resolve_precision", "train_from_flags",
           "run_cli"]


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def add_common_args(
    parser: argparse.ArgumentParser,
    *,
    name: str,
    learning_rate: float,
    batch_size: int,
    clip_grad_norm: float,
    lr_schedule: str = "constant",
    epochs: int = 20,
    wandb_project: str = "dalle_pytorch",
) -> argparse.ArgumentParser:
    """Add the flags both scripts share (defaults differ per script through the keyword arguments)."""
    train = parser.add_argument_group("training")
    train.add_argument("--epochs", type=positive_int, default=epochs,
                       help=f"number of passes over the data (default {epochs}); ignored when --max_steps is set")
    train.add_argument("--max_steps", type=positive_int, default=None,
                       help="stop after this many optimizer steps (takes precedence over --epochs)")
    train.add_argument("--batch_size", type=positive_int, default=batch_size,
                       help=f"samples per process per micro-batch (default {batch_size})")
    train.add_argument("--learning_rate", type=float, default=learning_rate,
                       help=f"peak learning rate (default {learning_rate})")
    train.add_argument("--weight_decay", type=float, default=0.0,
                       help="AdamW weight decay on weight matrices (not biases / norms) (default 0)")
    train.add_argument("--ga_steps", type=positive_int, default=1,
                       help="gradient accumulation: micro-batches per optimizer step (default 1)")
    train.add_argument("--clip_grad_norm", type=float, default=clip_grad_norm,
                       help=f"clip the gradient norm to this value; 0 disables (default {clip_grad_norm})")
    train.add_argument("--lr_schedule", choices=("constant", "cosine", "exponential"), default=lr_schedule,
                       help=f"learning-rate shape after warmup (default {lr_schedule})")
    train.add_argument("--warmup_steps", type=non_negative_int, default=0,
                       help="linear warmup from 0 over this many steps (default 0)")
    train.add_argument("--lr_decay_rate", type=float, default=0.98,
                       help="exponential schedule: multiply the lr by this every --lr_decay_every steps (default 0.98)")
    train.add_argument("--lr_decay_every", type=positive_int, default=100,
                       help="exponential schedule: steps between decays (default 100)")
    train.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default=None,
                       help="autocast precision (default fp32); fp16 needs CUDA (GradScaler)")
    train.add_argument("--fp16", action="store_true",
                       help="DALLE-pytorch's flag: --precision fp16 (float16 autocast + loss scaling; needs CUDA)")
    train.add_argument("--amp", action="store_true",
                       help="DALLE-pytorch's flag (Apex O1 there): mixed precision, --precision fp16 on CUDA, "
                            "bf16 on CPU")
    train.add_argument("--flops_profiler", action="store_true",
                       help="print the FLOPs of one training step (--flops_profiler_step), per module; the run "
                            "goes on (pass --max_steps to stop after it)")
    train.add_argument("--flops_profiler_step", type=non_negative_int, default=200,
                       help="the step --flops_profiler counts (default 200, DALLE-pytorch's; the last step of a "
                            "shorter run)")
    train.add_argument("--compile", action="store_true", help="torch.compile the model for training")
    train.add_argument("--seed", type=int, default=42, help="random seed (default 42)")
    train.add_argument("--num_workers", type=non_negative_int, default=0,
                       help="DataLoader worker processes per rank (default 0)")
    train.add_argument("--device", choices=("auto", "cpu", "cuda", "mps"), default="auto",
                       help="auto: CUDA when available, else Apple's MPS (one process), else the CPU (default auto; "
                            "mps is untested)")
    train.add_argument("--max_bad_fraction", type=float, default=0.01,
                       help="fraction of unreadable samples tolerated before the dataset raises (default 0.01)")
    train.add_argument("--max_nonfinite", type=non_negative_int, default=5,
                       help="stop after more than this many non-finite losses in a row (default 5)")
    train.add_argument("--fsdp", action="store_true",
                       help="shard the model with PyTorch FSDP2 (fully_shard) instead of DDP (needs torchrun)")

    out = parser.add_argument_group("outputs")
    out.add_argument("--name", default=name, help=f"run name: default output folder runs/<name> and final "
                     f"model <name>.safetensors (default {name})")
    out.add_argument("--output_dir", default=None, help="folder for checkpoints, logs and images (default runs/<name>)")
    out.add_argument("--save_every_steps", "--save_every_n_steps", dest="save_every_steps",
                     type=non_negative_int, default=1000,
                     help="write a checkpoint every N steps; 0: only at the end (default 1000)")
    out.add_argument("--keep_last", "--keep_n_checkpoints", dest="keep_last", type=non_negative_int, default=3,
                     help="keep the newest K checkpoint pairs; 0 keeps all (default 3)")
    out.add_argument("--resume", action="store_true",
                     help="continue exactly from the newest training state in the output folder")
    out.add_argument("--sample_every", type=non_negative_int, default=100,
                     help="write an image grid every N steps; 0 disables (default 100)")
    out.add_argument("--log_every", type=positive_int, default=10,
                     help="print a console line every N steps (the JSONL log has every step) (default 10)")
    out.add_argument("--no_progress", action="store_true", help="no tqdm progress bar")
    out.add_argument("--debug", action="store_true",
                     help="show the full traceback of an error (also DALLE_PYTORCH_DEBUG=1); by default an error is "
                          "one line")
    out.add_argument("--tensorboard", action="store_true", help="also log to TensorBoard (needs tensorboard)")
    out.add_argument("--wandb", action="store_true", help="also log to Weights & Biases (needs wandb)")
    out.add_argument("--wandb_name", default=None,
                     help=f"W&B project (default {wandb_project}); giving it (or --wandb_entity) turns --wandb on, "
                          "as in DALLE-pytorch")
    out.add_argument("--wandb_entity", default=None, help="W&B entity (team or user); turns --wandb on")
    parser.set_defaults(wandb_project=wandb_project)
    add_backend_args(parser)
    return parser


def add_backend_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """DALLE-pytorch's distributed-backend flags, and those the DeepSpeed launcher adds or passes.

    What they do here: `check_launcher_flags`, `ComputeConfig.deepspeed` (dalle_pytorch.train.backends).
    """
    group = parser.add_argument_group(
        "DALLE-pytorch launchers (this package runs DDP under torchrun or the deepspeed launcher; see "
        "docs/training.md)")
    group.add_argument("--distributed_backend", "--distr_backend", dest="distributed_backend", default=None,
                       type=str.lower, choices=("deepspeed", "horovod", "dummy"),
                       help="deepspeed: --batch_size is the global batch per optimizer step, as under DeepSpeed "
                            "(the run itself is DDP); horovod: refused (use torchrun); dummy: no effect")
    group.add_argument("--deepspeed", action="store_true", help="the same as --distributed_backend deepspeed")
    group.add_argument("--deepspeed_config", default=None,
                       help="accepted and ignored (DALLE-pytorch's own settings took precedence over it too)")
    group.add_argument("--deepscale", action="store_true", help=argparse.SUPPRESS)  # DeepSpeed's deprecated names
    group.add_argument("--deepscale_config", default=None, help=argparse.SUPPRESS)
    group.add_argument("--deepspeed_mpi", action="store_true", help=argparse.SUPPRESS)
    group.add_argument("--local_rank", "--local-rank", dest="local_rank", type=int, default=-1,
                       help="passed by launchers; ignored (LOCAL_RANK from the environment is used)")
    return parser


def finish_flags(args: argparse.Namespace) -> argparse.Namespace:
    """What the flags mean together, settled once after parsing (returns `args`): naming a W&B project
    or entity turns --wandb on, as DALLE-pytorch always logs to W&B; the project defaults to the script's."""
    if args.wandb_name is not None or args.wandb_entity is not None:
        args.wandb = True
    if args.wandb_name is None:
        args.wandb_name = args.wandb_project
    return args


def parse_ids(text: Optional[str]) -> Optional[tuple]:
    """--shared_attn_ids / --shared_ff_ids: "0,1,0" -> (0, 1, 0) (ids that are not integers stay strings)."""
    if text is None:
        return None
    items = [t.strip() for t in text.split(",") if t.strip()]
    return tuple(int(t) if t.lstrip("-").isdigit() else t for t in items)


def parse_wds(text: str) -> Optional[tuple[str, str]]:
    """--wds "jpg,txt" -> ("jpg", "txt"); "" -> None (no webdataset)."""
    if not text:
        return None
    keys = [k.strip() for k in text.split(",")]
    if len(keys) != 2 or not all(keys):
        raise TrainingError(f"--wds takes the image and caption keys as 'img,cap' (e.g. jpg,txt), got {text!r}")
    return keys[0], keys[1]


#: flags whose text becomes another value in the config
CONVERT: dict[str, Callable[[Any], Any]] = {
    "attn_types": lambda text: tuple(t.strip() for t in text.split(",") if t.strip()),
    "shared_attn_ids": parse_ids,
    "shared_ff_ids": parse_ids,
    "wds": parse_wds,
}


def config_from_flags(args: argparse.Namespace, task: type, argv: Optional[list[str]] = None) -> TrainConfig:
    """The `TrainConfig` a training script's parsed flags ask for; `task` is the class of its settings
    (VaeConfig or DalleConfig). Raises TrainingError for flags that cannot be one (checked as the config
    is built: its messages name the fields)."""
    check_launcher_flags(args, argv)
    values = dict(vars(args))
    values["precision"] = resolve_precision(args.precision, args.fp16, args.amp, flag_device(args))[0]
    values["deepspeed"] = uses_deepspeed(args)
    values["wandb_name"] = args.wandb_name or args.wandb_project

    def build(kind: type) -> Any:
        fields = [f.name for f in dataclasses.fields(kind) if f.name in values]
        return kind(**{name: CONVERT.get(name, lambda v: v)(values[name]) for name in fields})

    return TrainConfig(task=build(task), **{name: build(kind) for name, kind in GROUPS.items()})


def flag_notes(args: argparse.Namespace) -> list[str]:
    """What the command line should say when training starts about flags that mean something else here."""
    notes = []
    note = resolve_precision(args.precision, args.fp16, args.amp, flag_device(args))[1]
    notes += [note] if note else []
    if args.deepspeed_config or args.deepscale_config:
        notes.append("note: --deepspeed_config is ignored (DALLE-pytorch's own DeepSpeed settings took precedence "
                     "over it too)")
    if getattr(args, "optimize_for_inference", False):
        notes.append("note: --optimize_for_inference only affects inference; it is ignored for training")
    return notes


def flag_device(args: argparse.Namespace) -> torch.device:
    """The kind of device the run will train on (what --amp means depends on it)."""
    return torch.device(device_type(args.device)) if args.fp16 or args.amp else torch.device("cpu")


def resolve_precision(precision: Optional[str], fp16: bool, amp: bool,
                      device: torch.device) -> tuple[str, Optional[str]]:
    """The precision `--precision` / DALLE-pytorch's `--fp16` / `--amp` ask for on `device`, and a note.

    --fp16: float16 autocast with loss scaling (DALLE-pytorch cast the model to half without
    DeepSpeed, and used DeepSpeed's fp16 mixed precision with it); --amp (Apex O1 there): float16
    autocast + GradScaler on CUDA, bfloat16 autocast on CPU. Raises TrainingError when they contradict
    an explicit --precision, and for --fp16 on a CPU.
    """
    mapped, note = None, None
    if fp16:
        mapped = "fp16"
        if device.type != "cuda":
            raise TrainingError("--fp16 (float16 mixed precision) needs a CUDA GPU; on CPU use --amp or "
                                "--precision bf16")
        note = ("note: --fp16 trains with float16 autocast and loss scaling (fp32 master weights), not "
                "DALLE-pytorch's model.half()")
    elif amp:
        mapped = "fp16" if device.type == "cuda" else "bf16"
        how = "float16 autocast with loss scaling" if mapped == "fp16" else "bfloat16 autocast (float16 needs CUDA)"
        note = f"note: --amp is mixed precision here: {how}, Apex O1 in DALLE-pytorch"
    if precision is not None and mapped is not None and precision != mapped:
        flag = "--fp16" if fp16 else "--amp"
        raise TrainingError(f"{flag} means --precision {mapped} here, which contradicts --precision {precision}: "
                            "give only one")
    return precision or mapped or "fp32", note


# flags that only select the backend (dropped from the suggested torchrun command); value-taking first
BACKEND_VALUE_FLAGS = ("--distributed_backend", "--distr_backend", "--deepspeed_config", "--deepscale_config",
                       "--local_rank", "--local-rank")
BACKEND_SWITCHES = ("--deepspeed", "--deepscale", "--deepspeed_mpi")


def uses_deepspeed(args: argparse.Namespace) -> bool:
    """Whether the command asks for DeepSpeed (`--deepspeed`, `--deepscale` or `--distributed_backend deepspeed`)."""
    return bool(args.deepspeed or args.deepscale or args.distributed_backend == "deepspeed")


def torchrun_command(argv: list[str], processes: str) -> str:
    """The torchrun command line that runs `argv` (script and flags) without its backend flags."""
    kept, skip = [], False
    for arg in argv[1:]:
        if skip:
            skip = False
            continue
        name = arg.split("=", 1)[0]
        if name in BACKEND_VALUE_FLAGS:
            skip = "=" not in arg
            continue
        if name in BACKEND_SWITCHES:
            continue
        kept.append(arg)
    return shlex.join(["torchrun", "--nproc_per_node", processes, os.path.basename(argv[0]), *kept])


def check_launcher_flags(args: argparse.Namespace, argv: Optional[list[str]] = None) -> None:
    """Refuse Horovod (DALLE-pytorch's other launcher) with the torchrun command that runs the same training.

    DeepSpeed commands run as DDP (`ComputeConfig.deepspeed`: --batch_size stays DeepSpeed's global
    batch); --deepspeed_config and --local_rank are ignored (the environment's LOCAL_RANK is used, as
    DALLE-pytorch did).
    """
    if args.distributed_backend == "horovod":
        argv = sys.argv if argv is None else argv
        size = os.environ.get("HOROVOD_SIZE") or os.environ.get("OMPI_COMM_WORLD_SIZE") or "N"
        raise TrainingError(f"--distributed_backend horovod: Horovod is not supported; launch the same training with "
                            f"torchrun (DDP, same per-process --batch_size): {torchrun_command(argv, size)}")


def train_from_flags(args: argparse.Namespace, task: type, build_task: TaskBuilder) -> dict:
    """A training script's main: the config of its flags, trained by `build_task`; errors name the flags."""
    with flag_names(), flag_errors():
        config = config_from_flags(args, task)
        return run(config, build_task, notes=flag_notes(args), name_setting=flag_of)


#: errors a training script reports as one line (the traceback with --debug or DALLE_PYTORCH_DEBUG=1)
REPORTED = (TrainingError, CheckpointError, OSError, ImportError)


def run_cli(main: Callable[[argparse.Namespace], Any], parse_args: Callable[[], argparse.Namespace],
            interrupted: str = "interrupted; continue with --resume (from the last checkpoint)") -> int:
    """Run a script's ``main``; a configuration, checkpoint, data or file problem is one ``error:`` line
    (exit status 1), with the full traceback when --debug or DALLE_PYTORCH_DEBUG=1 is given. Warnings
    are one ``warning:`` line each; Ctrl-C prints `interrupted` (exit status 130)."""
    args = parse_args()
    debug = bool(getattr(args, "debug", False)) or os.environ.get("DALLE_PYTORCH_DEBUG", "") not in ("", "0")
    with one_line_warnings():
        try:
            main(args)
        except REPORTED as e:
            if debug:
                raise
            print(f"error: {one_line(e)} (--debug shows the traceback)", file=sys.stderr, flush=True)
            return 1
        except KeyboardInterrupt:
            print(interrupted, file=sys.stderr, flush=True)
            return 130
    return 0
