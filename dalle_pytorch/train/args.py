"""The flags both training scripts share (`add_common_args`) and their checks."""
from __future__ import annotations

import argparse
import importlib.util

from dalle_pytorch.errors import TrainingError

__all__ = ["add_common_args", "add_backend_args", "check_common_args", "check_optional_packages", "positive_int",
           "non_negative_int"]


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

    What they do here: `dalle_pytorch.train.backends.apply_backend_args`.
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


def check_common_args(args: argparse.Namespace) -> None:
    if not args.learning_rate > 0:
        raise TrainingError(f"--learning_rate must be > 0, got {args.learning_rate}")
    if args.weight_decay < 0:
        raise TrainingError(f"--weight_decay must be >= 0, got {args.weight_decay}")
    if args.clip_grad_norm < 0:
        raise TrainingError(f"--clip_grad_norm must be >= 0 (0 disables), got {args.clip_grad_norm}")
    if not 0 < args.lr_decay_rate <= 1:
        raise TrainingError(f"--lr_decay_rate must be in (0, 1], got {args.lr_decay_rate}")
    if args.max_bad_fraction < 0:
        raise TrainingError(f"--max_bad_fraction must be >= 0, got {args.max_bad_fraction}")
    if args.wandb_name is not None or args.wandb_entity is not None:
        args.wandb = True  # DALLE-pytorch always logs to W&B; naming a project or entity asks for it here
    if args.wandb_name is None:
        args.wandb_name = args.wandb_project
    if args.flops_profiler and args.compile:
        raise TrainingError("--flops_profiler counts the eager model's operations: drop --compile")



def check_optional_packages(args: argparse.Namespace) -> None:
    """Fail before any work when an optional package a flag needs is missing."""
    needs = [("tensorboard", "tensorboard", "--tensorboard"), ("wandb", "wandb", "--wandb"),
             ("wds", "webdataset", "--wds")]
    for attr, module, flag in needs:
        if getattr(args, attr, None) and importlib.util.find_spec(module) is None:
            raise TrainingError(f"{flag} needs the optional package '{module}': pip install {module}")

