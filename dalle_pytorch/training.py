"""Training machinery shared by ``train_vae.py`` and ``train_dalle.py``.

The two scripts only parse their flags and call :func:`run`; everything else lives here or in the
training-side modules this one imports (their names stay importable from here):

* distributed setup (:mod:`dalle_pytorch.distributed`: ``torchrun``'s RANK / WORLD_SIZE / LOCAL_RANK;
  gloo on CPU, nccl on CUDA), DDP wrapping (``find_unused_parameters`` only when a dry run finds
  unused parameters) or PyTorch FSDP2 (``torch.distributed.fsdp.fully_shard``) with ``--fsdp``;
* data (:mod:`dalle_pytorch.training_data`): a deterministic, resumable sampler
  (``DistributedSampler`` order + a start offset), bad-sample counts surfaced from the datasets;
* AdamW, warmup + constant / cosine / exponential learning-rate schedule, gradient accumulation,
  clipping, autocast (bf16 / fp16 with GradScaler), ``torch.compile``;
* non-finite losses: the optimizer step is skipped and counted; too many in a row stops the run;
* checkpoints: model file (``checkpoint.save``) + training state (``checkpoint.save_training_state``)
  pairs, rotation, a ``latest`` pointer and ``last.*`` links (:mod:`dalle_pytorch.run_checkpoints`),
  exact ``--resume``;
* logging (:mod:`dalle_pytorch.runlog`): JSONL, console / tqdm on rank 0, optional TensorBoard and
  Weights & Biases;
* the two tasks (:func:`build_vae_task`, :func:`build_dalle_task`): model, data, loss, images.

Model modules stay single-device: wrapping, autocast and logging only happen on the training side.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import gc
import itertools
import json
import math
import os
import random
import sys
import time
import warnings
from typing import Any, Callable, Iterable, Optional

import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torch.utils.data.distributed import DistributedSampler

from dalle_pytorch.distributed import DistEnv, init_distributed
from dalle_pytorch.images import grid_of_rows, tensor_to_pil
from dalle_pytorch.run_checkpoints import LATEST_NAME, CheckpointManager, CheckpointPoint, _link, weights_digest
from dalle_pytorch.runlog import LOG_NAME, _jsonable, _RunLogger
from dalle_pytorch.training_common import TrainingError, _write_text
from dalle_pytorch.training_data import ImageFolder, _collate_with_skips, _ReportSkips, _ResumableSampler, _to_device

__all__ = [
    "TrainingError",
    "DistEnv",
    "ImageFolder",
    "Task",
    "CheckpointManager",
    "add_common_args",
    "init_distributed",
    "check_precision",
    "lr_multiplier",
    "image_grid",
    "save_image_grid",
    "weights_digest",
    "build_vae_task",
    "build_dalle_task",
    "run",
    "cli",
    "LATEST_NAME",  # defined in run_checkpoints, re-exported
    "LOG_NAME",  # defined in runlog, re-exported
]

STATE_FORMAT = "dalle_pytorch/training-state"
STATE_VERSION = 1


# --------------------------------------------------------------------------------------------------
# flags
# --------------------------------------------------------------------------------------------------


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _non_negative_int(text: str) -> int:
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
    train.add_argument("--epochs", type=_positive_int, default=epochs,
                       help=f"number of passes over the data (default {epochs}); ignored when --max_steps is set")
    train.add_argument("--max_steps", type=_positive_int, default=None,
                       help="stop after this many optimizer steps (takes precedence over --epochs)")
    train.add_argument("--batch_size", type=_positive_int, default=batch_size,
                       help=f"samples per process per micro-batch (default {batch_size})")
    train.add_argument("--learning_rate", type=float, default=learning_rate,
                       help=f"peak learning rate (default {learning_rate})")
    train.add_argument("--weight_decay", type=float, default=0.0,
                       help="AdamW weight decay on weight matrices (not biases / norms) (default 0)")
    train.add_argument("--ga_steps", type=_positive_int, default=1,
                       help="gradient accumulation: micro-batches per optimizer step (default 1)")
    train.add_argument("--clip_grad_norm", type=float, default=clip_grad_norm,
                       help=f"clip the gradient norm to this value; 0 disables (default {clip_grad_norm})")
    train.add_argument("--lr_schedule", choices=("constant", "cosine", "exponential"), default=lr_schedule,
                       help=f"learning-rate shape after warmup (default {lr_schedule})")
    train.add_argument("--warmup_steps", type=_non_negative_int, default=0,
                       help="linear warmup from 0 over this many steps (default 0)")
    train.add_argument("--lr_decay_rate", type=float, default=0.98,
                       help="exponential schedule: multiply the lr by this every --lr_decay_every steps (default 0.98)")
    train.add_argument("--lr_decay_every", type=_positive_int, default=100,
                       help="exponential schedule: steps between decays (default 100)")
    train.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32",
                       help="autocast precision (default fp32); fp16 needs CUDA (GradScaler)")
    train.add_argument("--compile", action="store_true", help="torch.compile the model for training")
    train.add_argument("--seed", type=int, default=42, help="random seed (default 42)")
    train.add_argument("--num_workers", type=_non_negative_int, default=0,
                       help="DataLoader worker processes per rank (default 0)")
    train.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                       help="auto: CUDA when available (default auto)")
    train.add_argument("--max_bad_fraction", type=float, default=0.01,
                       help="fraction of unreadable samples tolerated before the dataset raises (default 0.01)")
    train.add_argument("--max_nonfinite", type=_non_negative_int, default=5,
                       help="stop after more than this many non-finite losses in a row (default 5)")
    train.add_argument("--fsdp", action="store_true",
                       help="shard the model with PyTorch FSDP2 (fully_shard) instead of DDP (needs torchrun)")

    out = parser.add_argument_group("outputs")
    out.add_argument("--name", default=name, help=f"run name: default output folder runs/<name> and final "
                     f"model <name>.safetensors (default {name})")
    out.add_argument("--output_dir", default=None, help="folder for checkpoints, logs and images (default runs/<name>)")
    out.add_argument("--save_every_steps", "--save_every_n_steps", dest="save_every_steps",
                     type=_non_negative_int, default=1000,
                     help="write a checkpoint every N steps; 0: only at the end (default 1000)")
    out.add_argument("--keep_last", "--keep_n_checkpoints", dest="keep_last", type=_non_negative_int, default=3,
                     help="keep the newest K checkpoint pairs; 0 keeps all (default 3)")
    out.add_argument("--resume", action="store_true",
                     help="continue exactly from the newest training state in the output folder")
    out.add_argument("--sample_every", type=_non_negative_int, default=100,
                     help="write an image grid every N steps; 0 disables (default 100)")
    out.add_argument("--log_every", type=_positive_int, default=10,
                     help="print a console line every N steps (the JSONL log has every step) (default 10)")
    out.add_argument("--no_progress", action="store_true", help="no tqdm progress bar")
    out.add_argument("--tensorboard", action="store_true", help="also log to TensorBoard (needs tensorboard)")
    out.add_argument("--wandb", action="store_true", help="also log to Weights & Biases (needs wandb)")
    out.add_argument("--wandb_name", default=wandb_project, help=f"W&B project (default {wandb_project})")
    out.add_argument("--wandb_entity", default=None, help="W&B entity (team or user)")
    return parser


def _check_common_args(args: argparse.Namespace) -> None:
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


# --------------------------------------------------------------------------------------------------
# precision, seeds, RNG state
# --------------------------------------------------------------------------------------------------

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def check_precision(precision: str, device: torch.device) -> None:
    """Refuse precision settings the device cannot run, with what to use instead."""
    if precision == "fp16" and device.type != "cuda":
        raise TrainingError(
            "--precision fp16 needs a CUDA GPU: float16 autocast with loss scaling (GradScaler) is not "
            f"supported on {device.type.upper()}. Use --precision bf16 (or fp32) on CPU."
        )
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise TrainingError("--precision bf16: this GPU does not support bfloat16; use --precision fp16 or fp32")


def _autocast(precision: str, device: torch.device):
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=_DTYPES[precision])


def _seed_all(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    try:
        import numpy as np

        np.random.seed(seed % 2**32)
    except ImportError:  # pragma: no cover
        pass


def _capture_rng(device: torch.device) -> dict:
    """This process's RNG states as tensors and primitives (loadable with weights_only=True)."""
    version, internal, gauss = random.getstate()
    state: dict = {
        "torch": torch.get_rng_state(),
        "python": {"version": version, "state": torch.tensor(internal, dtype=torch.int64), "gauss": gauss},
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    try:
        import numpy as np

        kind, keys, pos, has_gauss, cached = np.random.get_state()
        state["numpy"] = {"kind": str(kind), "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                          "has_gauss": int(has_gauss), "cached": float(cached)}
    except ImportError:  # pragma: no cover
        pass
    return state


def _restore_rng(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"].cpu())
    py = state["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["state"].tolist()), py["gauss"]))
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"].cpu(), device)
    if "numpy" in state:
        try:
            import numpy as np

            n = state["numpy"]
            np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
        except ImportError:  # pragma: no cover
            pass


# --------------------------------------------------------------------------------------------------
# images
# --------------------------------------------------------------------------------------------------


def image_grid(rows: list[torch.Tensor], padding: int = 2, pad_value: float = 1.0) -> Image.Image:
    """Tile image rows into one PIL image.

    Args:
        rows: one tensor per row, each (n, C, H, W) float in [0, 1] (values are clamped);
            all rows share C, H, W (C = 1, 3 or 4); rows may have different n.
    Returns:
        PIL image (mode L, RGB or RGBA) of the grid, ``padding`` pixels between tiles.
    """
    fill = (round(pad_value * 255),) * 4
    return grid_of_rows([[tensor_to_pil(img) for img in row] for row in rows], padding, fill)


def save_image_grid(rows: list[torch.Tensor], path: str | os.PathLike) -> str:
    """Write :func:`image_grid` of ``rows`` as a PNG (atomically). Returns the path."""
    import io

    from dalle_pytorch.fileio import atomic_write_bytes

    buf = io.BytesIO()
    image_grid(rows).save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())
    return os.fspath(path)


# --------------------------------------------------------------------------------------------------
# optimizer, schedule
# --------------------------------------------------------------------------------------------------


def _build_optimizer(model: nn.Module, args: argparse.Namespace) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim < 2 or name.endswith("bias") or ".norm" in name or "scale" in name.rsplit(".", 1)[-1]:
            no_decay.append(p)
        else:
            decay.append(p)
    groups = [g for g in ({"params": decay, "weight_decay": args.weight_decay},
                          {"params": no_decay, "weight_decay": 0.0}) if g["params"]]
    if not groups:
        raise TrainingError("the model has no trainable parameters")
    return torch.optim.AdamW(groups, lr=args.learning_rate)


def lr_multiplier(step: int, *, schedule: str, warmup_steps: int = 0, total_steps: Optional[int] = None,
                  decay_rate: float = 0.98, decay_every: int = 100) -> float:
    """Factor on the peak learning rate for the optimizer step after ``step`` completed steps.

    Linear warmup over ``warmup_steps``, then ``constant`` (1), ``cosine`` (1 -> 0 at ``total_steps``)
    or ``exponential`` (``decay_rate ** (steps since warmup // decay_every)``).
    """
    if warmup_steps and step < warmup_steps:
        return (step + 1) / warmup_steps
    after = step - warmup_steps
    if schedule == "constant":
        return 1.0
    if schedule == "cosine":
        span = max(1, (total_steps or 1) - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, after / span)))
    if schedule == "exponential":
        return decay_rate ** (after // decay_every)
    raise ValueError(f"unknown lr schedule {schedule!r}")


def _build_scheduler(optimizer, args, total_steps: Optional[int]):
    if args.lr_schedule == "cosine" and total_steps is None:
        raise TrainingError("--lr_schedule cosine needs the run length: pass --max_steps (the streaming "
                            "--wds data has no known epoch length)")
    schedule, warmup, decay_rate, decay_every = args.lr_schedule, args.warmup_steps, args.lr_decay_rate, args.lr_decay_every

    def factor(step: int) -> float:
        return lr_multiplier(step, schedule=schedule, warmup_steps=warmup, total_steps=total_steps,
                             decay_rate=decay_rate, decay_every=decay_every)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


# --------------------------------------------------------------------------------------------------
# tasks
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Task:
    """What a script trains.

    Attributes:
        kind: "vae" or "dalle" (stored in checkpoints; a resume must match).
        model: the single-device model, weights loaded, on CPU.
        data: a map-style Dataset of single samples (exact resume) or an iterable of ready batches
            (streaming; resumes at a fresh stream position).
        loss_fn: (train_model, batch on device, step) -> (scalar loss, aux); called under autocast.
        dummy_batch: () -> a batch of one sample on CPU (for the DDP unused-parameter dry run).
        image_fn: (model, step, aux of the step's last micro-batch, path stem) -> (png path, caption);
            called on rank 0 every --sample_every steps.
        image_needs_model: image_fn uses the model (under FSDP a full copy is gathered for it).
        log_fn: step -> extra values for the step's log record.
        tokenizer: stored in the model checkpoints.
        info: lines printed at start.
    """

    kind: str
    model: nn.Module
    data: Any
    loss_fn: Callable[[nn.Module, Any, int], tuple[torch.Tensor, Any]]
    dummy_batch: Callable[[], Any]
    image_fn: Optional[Callable[[nn.Module, int, Any, str], tuple[str, str]]] = None
    image_needs_model: bool = False
    log_fn: Optional[Callable[[int], dict]] = None
    tokenizer: Any = None
    info: list = dataclasses.field(default_factory=list)


def build_vae_task(args: argparse.Namespace, env: DistEnv, resumed: Any) -> Task:
    """DiscreteVAE on a folder of images (``train_vae.py``)."""
    from dalle_pytorch.vae import DiscreteVAE

    if resumed is not None:
        model = resumed.model
        if not isinstance(model, DiscreteVAE):
            raise TrainingError(f"the checkpoint to resume holds a {type(model).__name__}, not a DiscreteVAE")
    else:
        channels = 4 if args.transparent else 3
        model = DiscreteVAE(
            image_size=args.image_size, num_tokens=args.num_tokens, codebook_dim=args.emb_dim,
            num_layers=args.num_layers, num_resnet_blocks=args.num_resnet_blocks, hidden_dim=args.hidden_dim,
            channels=channels, smooth_l1_loss=args.smooth_l1_loss, straight_through=args.straight_through,
            reinmax=args.reinmax, kl_div_loss_weight=args.kl_loss_weight,
            normalization=((0.5,) * channels, (0.5,) * channels),
        )
    if args.transparent and model.channels != 4:
        raise TrainingError(f"--transparent needs a 4-channel VAE; the resumed one has {model.channels} channels")
    dataset = ImageFolder(args.image_folder, model.image_size, transparent=model.channels == 4,
                          max_bad_fraction=args.max_bad_fraction)
    starting_temp, temp_min, anneal_rate = args.starting_temp, args.temp_min, args.anneal_rate
    k = args.num_images_save

    def temperature(step: int) -> float:
        return max(starting_temp * math.exp(-anneal_rate * step), temp_min)

    def loss_fn(m, images, step):
        loss, recons = m(images, return_loss=True, return_recons=True, temp=temperature(step))
        return loss, (images[:k].detach(), recons[:k].detach().float())  # for the reconstruction grid

    def image_fn(m, step, aux, stem):
        images, recons = aux
        path = save_image_grid([images, recons], stem + ".png")
        return path, "top: originals, bottom: reconstructions"

    def dummy_batch():
        return torch.rand(1, model.channels, model.image_size, model.image_size)

    return Task(kind="vae", model=model, data=dataset, loss_fn=loss_fn, dummy_batch=dummy_batch,
                image_fn=image_fn if k > 0 else None, log_fn=lambda step: {"temperature": temperature(step)},
                info=[f"{len(dataset)} images in {dataset.folder}",
                      f"VAE: {sum(p.numel() for p in model.parameters()):,} parameters, "
                      f"{model.image_size}px -> {model.fmap_size}x{model.fmap_size} codes of {model.num_tokens}"])


def _tokenizer_from_args(args: argparse.Namespace, resumed: Any):
    from dalle_pytorch.tokenizer import get_default_tokenizer, tokenizer_from_file

    if args.bpe_path:
        if not os.path.exists(args.bpe_path):
            raise TrainingError(f"--bpe_path {args.bpe_path!r} does not exist")
        try:
            return tokenizer_from_file(args.bpe_path, hug=args.hug)
        except ValueError as e:
            raise TrainingError(f"--bpe_path: {e}") from None
    if resumed is not None and resumed.tokenizer is not None:
        return resumed.tokenizer
    return get_default_tokenizer()


def _parse_ids(text: Optional[str]):
    if text is None:
        return None
    items = [t.strip() for t in text.split(",") if t.strip()]
    return tuple(int(t) if t.lstrip("-").isdigit() else t for t in items)


def build_dalle_task(args: argparse.Namespace, env: DistEnv, resumed: Any) -> Task:
    """DALLE on captioned images (``train_dalle.py``): folder pairs or webdataset shards."""
    from dalle_pytorch.checkpoint import load_checkpoint
    from dalle_pytorch.dalle import DALLE
    from dalle_pytorch.datasets import TextImageDataset, webdataset_loader
    from dalle_pytorch.vae import DiscreteVAE

    info = []
    if args.optimize_for_inference:
        info.append("note: --optimize_for_inference only affects inference; it is ignored for training")
    if resumed is None and args.dalle_path:
        if not os.path.exists(args.dalle_path):
            raise TrainingError(f"--dalle_path {args.dalle_path!r} does not exist")
        resumed = load_checkpoint(args.dalle_path, map_location="cpu")
        if resumed.kind != "dalle":
            raise TrainingError(f"--dalle_path {args.dalle_path!r} holds a {resumed.kind} model, not a DALLE "
                                "(pass a VAE with --vae_path)")
        info.append(f"initialised from {args.dalle_path} ({resumed.source})")
    tokenizer = _tokenizer_from_args(args, resumed)

    if resumed is not None:
        model = resumed.model
        if not isinstance(model, DALLE):
            raise TrainingError(f"the checkpoint holds a {type(model).__name__}, not a DALLE")
    else:
        if not args.vae_path:
            raise TrainingError("train_dalle.py needs --vae_path (a trained DiscreteVAE) or --dalle_path (a DALLE to "
                                "continue from); the pretrained OpenAI / VQGAN VAEs are not supported")
        if not os.path.exists(args.vae_path):
            raise TrainingError(f"--vae_path {args.vae_path!r} does not exist")
        loaded_vae = load_checkpoint(args.vae_path, map_location="cpu")
        vae = loaded_vae.model.vae if loaded_vae.kind == "dalle" else loaded_vae.model
        if not isinstance(vae, DiscreteVAE):
            raise TrainingError(f"--vae_path {args.vae_path!r} does not hold a DiscreteVAE")
        attn_types = tuple(t.strip() for t in args.attn_types.split(",") if t.strip())
        model = DALLE(
            dim=args.dim, vae=vae, num_text_tokens=tokenizer.vocab_size, text_seq_len=args.text_seq_len,
            depth=args.depth, heads=args.heads, dim_head=args.dim_head, reversible=args.reversible,
            attn_dropout=args.attn_dropout, ff_dropout=args.ff_dropout, attn_types=attn_types,
            loss_img_weight=args.loss_img_weight, stable=args.stable, sandwich_norm=args.sandwich_norm,
            shift_tokens=args.shift_tokens, rotary_emb=args.rotary_emb,
            shared_attn_ids=_parse_ids(args.shared_attn_ids), shared_ff_ids=_parse_ids(args.shared_ff_ids),
            share_input_output_emb=args.share_input_output_emb, attn_kernel=args.attn_kernel,
        )
    if tokenizer.vocab_size > model.num_user_text_tokens:
        raise TrainingError(f"the tokenizer has {tokenizer.vocab_size} tokens but the model only "
                            f"{model.num_user_text_tokens} text tokens; use the tokenizer the model was trained with")
    vae = model.vae
    if args.transparent and vae.channels != 4:
        raise TrainingError(f"--transparent needs a 4-channel (RGBA) VAE; this one has {vae.channels} channels")
    transparent = vae.channels == 4
    text_len, image_size = model.text_seq_len, vae.image_size

    if args.wds:
        keys = [k.strip() for k in args.wds.split(",")]
        if len(keys) != 2 or not all(keys):
            raise TrainingError(f"--wds takes the image and caption keys as 'img,cap' (e.g. jpg,txt), got {args.wds!r}")
        data = webdataset_loader(args.image_text_folder, image_key=keys[0], caption_key=keys[1], text_len=text_len,
                                 image_size=image_size, tokenizer=tokenizer, truncate_captions=args.truncate_captions,
                                 resize_ratio=args.resize_ratio, batch_size=args.batch_size,
                                 num_workers=args.num_workers, transparent=transparent)
        info.append(f"webdataset shards {args.image_text_folder} (keys {keys[0]}, {keys[1]})")
        first_caption = None
    else:
        if not os.path.isdir(args.image_text_folder):
            raise TrainingError(f"--image_text_folder {args.image_text_folder!r} is not a directory")
        data = TextImageDataset(args.image_text_folder, text_len=text_len, image_size=image_size,
                                truncate_captions=args.truncate_captions, resize_ratio=args.resize_ratio,
                                transparent=transparent, tokenizer=tokenizer, max_bad_fraction=args.max_bad_fraction,
                                seed=args.seed)
        info.append(f"{len(data)} image-text pairs in {data.folder}")
        first_caption = _first_caption(data)

    caption = args.sample_caption or first_caption or "a picture"
    sample_tokens = tokenizer.tokenize([caption], text_len, truncate_text=True)
    num_images, seed = args.num_sample_images, args.seed

    def loss_fn(m, batch, step):
        text, images = batch
        return m(text, images, return_loss=True, null_cond_prob=args.null_cond_prob), None

    def image_fn(m, step, aux, stem):
        device = next(m.parameters()).device
        generator = torch.Generator().manual_seed(seed)
        images = m.generate_images(sample_tokens.to(device), num_images=num_images, generator=generator,
                                   filter_thres=args.sample_filter_thres)
        path = save_image_grid([images], stem + ".png")
        _write_text(stem + ".txt", caption + "\n")
        return path, caption

    def dummy_batch():
        text = tokenizer.tokenize([caption], text_len, truncate_text=True)
        return text, torch.rand(1, vae.channels, image_size, image_size)

    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    info.append(f"DALLE: {n_params:,} trainable parameters, {model.text_seq_len} text + {model.image_seq_len} image "
                f"tokens, vocab {tokenizer.vocab_size}")
    return Task(kind="dalle", model=model, data=data, loss_fn=loss_fn, dummy_batch=dummy_batch,
                image_fn=image_fn if num_images > 0 else None, image_needs_model=True, tokenizer=tokenizer, info=info)


def _first_caption(dataset) -> Optional[str]:
    """First caption line of the dataset's first pair (the default sample caption)."""
    try:
        with open(os.path.join(dataset.folder, dataset.pairs[0][1]), encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    return line.strip()
    except (OSError, UnicodeDecodeError, IndexError, AttributeError):
        pass
    return None


# --------------------------------------------------------------------------------------------------
# the training loop
# --------------------------------------------------------------------------------------------------


def _fsdp_units(model: nn.Module) -> list[nn.Module]:
    """Submodules sharded as separate FSDP units: those whose forward is called (not just their weights)."""
    from dalle_pytorch.dalle import DALLE
    from dalle_pytorch.vae import DiscreteVAE

    if isinstance(model, DALLE):
        return [*model.transformer.attns, *model.transformer.ffs, model.vae]
    if isinstance(model, DiscreteVAE):
        return [model.encoder, model.decoder]
    return []


def _unused_parameters(model: nn.Module, task: Task, device: torch.device) -> list[str]:
    """Trainable parameters that get no gradient in one forward/backward (RNG state untouched)."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        loss, _ = task.loss_fn(model, _to_device(task.dummy_batch(), device), 0)
        loss.float().backward()
    unused = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    model.zero_grad(set_to_none=True)
    return unused


class Trainer:
    """Runs one task: wraps the model, loops over the data, logs, checkpoints, resumes."""

    def __init__(self, args: argparse.Namespace, env: DistEnv, task: Task, run_dir: str,
                 manager: CheckpointManager, resume: Optional[tuple[CheckpointPoint, dict]]) -> None:
        self.args, self.env, self.task = args, env, task
        self.run_dir, self.manager = run_dir, manager
        self.resume = resume
        self.samples_dir = os.path.join(run_dir, "samples")

    # -- setup -------------------------------------------------------------------------------------

    def _wrap(self) -> None:
        args, env, raw = self.args, self.env, self.task.model
        self.shadow = None
        if args.fsdp:
            from torch.distributed.device_mesh import init_device_mesh
            from torch.distributed.fsdp import fully_shard

            # the model's branches return views that are never modified in place, so this warning does not apply
            warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module .* returned a view tensor")
            if env.is_main:
                self.shadow = copy.deepcopy(raw).cpu()  # full copy on rank 0 for saving / sampling
            raw.to(env.device)
            mesh = init_device_mesh(env.device.type, (env.world_size,))
            for unit in _fsdp_units(raw):
                fully_shard(unit, mesh=mesh)
            fully_shard(raw, mesh=mesh)
            wrapped: nn.Module = raw
            self.mode = "fsdp"
        elif env.distributed:
            from torch.nn.parallel import DistributedDataParallel as DDP

            raw.to(env.device)
            unused = _unused_parameters(raw, self.task, env.device)
            if unused:
                self.log_lines.append(f"DDP: {len(unused)} parameters get no gradient (e.g. {unused[0]}); "
                                      "using find_unused_parameters=True")
            wrapped = DDP(raw, device_ids=[env.device.index] if env.device.type == "cuda" else None,
                          find_unused_parameters=bool(unused))
            self.mode = "ddp"
        else:
            raw.to(env.device)
            wrapped = raw
            self.mode = "single"
        self.ddp = wrapped if self.mode == "ddp" else None
        self.train_model = torch.compile(wrapped) if args.compile else wrapped
        self.params = [p for p in raw.parameters() if p.requires_grad]

    def _sync(self, last: bool):
        """No gradient all-reduce on the micro-batches before the last one of a step."""
        if self.mode == "ddp" and not last:
            return self.ddp.no_sync()
        if self.mode == "fsdp":
            self.task.model.set_requires_gradient_sync(last)
        return contextlib.nullcontext()

    # -- state ------------------------------------------------------------------------------------

    def _param_names(self) -> list[list[str]]:
        names = {id(p): n for n, p in self.task.model.named_parameters()}
        return [[names[id(p)] for p in group["params"]] for group in self.optimizer.param_groups]

    def _optimizer_state(self) -> dict:
        """The full optimizer state keyed by parameter names (the same for single / DDP / FSDP runs)."""
        if self.mode == "fsdp":
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

            return get_optimizer_state_dict(self.task.model, self.optimizer,
                                            options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        sd = self.optimizer.state_dict()
        groups = self._param_names()
        flat = [n for names in groups for n in names]
        return {"state": {flat[i]: v for i, v in sd["state"].items()},
                "param_groups": [{**g, "params": names} for g, names in zip(sd["param_groups"], groups)]}

    def _load_optimizer_state(self, sd: dict) -> None:
        groups = self._param_names()
        saved = [list(g["params"]) for g in sd["param_groups"]]
        if [sorted(g) for g in saved] != [sorted(g) for g in groups]:
            raise TrainingError("the optimizer state does not match the model's trainable parameters; was the "
                                "run started with a different model?")
        if self.mode == "fsdp":
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

            set_optimizer_state_dict(self.task.model, self.optimizer, sd,
                                     options=StateDictOptions(full_state_dict=True))
            return
        index = {n: i for i, n in enumerate(n for names in groups for n in names)}
        self.optimizer.load_state_dict({
            "state": {index[n]: v for n, v in sd["state"].items()},
            "param_groups": [{**g, "params": [index[n] for n in names]}
                             for g, names in zip(sd["param_groups"], groups)],
        })

    def _full_model(self) -> nn.Module:
        """A module with the full weights (collective under FSDP; the result is valid on rank 0)."""
        if self.mode != "fsdp":
            return self.task.model
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        sd = get_model_state_dict(self.task.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if self.env.is_main:
            self.shadow.load_state_dict(sd)
        return self.shadow

    def _restore(self, state: dict) -> None:
        args, env = self.args, self.env
        if state.get("format") != STATE_FORMAT:
            raise TrainingError(f"{self.resume[0].state} is not a training state of this package")
        if state.get("kind") != self.task.kind:
            raise TrainingError(f"the run folder holds a {state.get('kind')} run; this script trains a {self.task.kind}")
        self._load_optimizer_state(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if any(b != args.learning_rate for b in self.scheduler.base_lrs):
            # a new --learning_rate applies from here on, at the schedule's current position
            self.log_lines.append(f"note: --learning_rate {args.learning_rate} replaces the interrupted run's "
                                  f"{self.scheduler.base_lrs[0]}")
            factor = self.scheduler.lr_lambdas[0](self.scheduler.last_epoch)
            self.scheduler.base_lrs = [args.learning_rate for _ in self.optimizer.param_groups]
            for group in self.optimizer.param_groups:
                group["initial_lr"] = args.learning_rate
                group["lr"] = args.learning_rate * factor
            self.scheduler._last_lr = [g["lr"] for g in self.optimizer.param_groups]
        if state.get("scaler") and self.scaler.is_enabled():
            self.scaler.load_state_dict(state["scaler"])
        self.step = int(state["step"])
        self.epoch = int(state["epoch"])
        self.batches_in_epoch = int(state["batches_in_epoch"])
        self.samples_seen = int(state.get("samples_seen", 0))
        self.nonfinite_total = int(state.get("nonfinite_total", 0))
        self.nonfinite_run = int(state.get("nonfinite_consecutive", 0))
        self.skipped_files = set(state.get("skipped_files", []))
        self.skipped_total = int(state.get("skipped_total", len(self.skipped_files)))
        same_layout = (state.get("world_size") == env.world_size and state.get("batch_size") == args.batch_size
                       and state.get("ga_steps") == args.ga_steps and state.get("seed") == args.seed)
        if not same_layout:
            self.log_lines.append(
                "note: world size / batch size / ga_steps / seed differ from the interrupted run; the data order "
                "and RNG streams continue approximately, not exactly")
            if state.get("batch_size") and state.get("world_size"):
                seen = self.batches_in_epoch * state["batch_size"] * state["world_size"]
                per_step = args.batch_size * env.world_size * args.ga_steps
                self.batches_in_epoch = (seen // per_step) * args.ga_steps
        rngs = state.get("rng") or []
        if len(rngs) == env.world_size and same_layout:
            _restore_rng(rngs[env.rank], env.device)
        else:
            _seed_all(args.seed + env.rank + 7919 * self.step)

    def _training_state(self) -> dict:
        opt_sd = self._optimizer_state()
        rngs = self.env.all_gather_object(_capture_rng(self.env.device))
        return {
            "format": STATE_FORMAT,
            "version": STATE_VERSION,
            "kind": self.task.kind,
            "step": self.step,
            "epoch": self.epoch,
            "batches_in_epoch": self.batches_in_epoch,
            "samples_seen": self.samples_seen,
            "batch_size": self.args.batch_size,
            "ga_steps": self.args.ga_steps,
            "world_size": self.env.world_size,
            "seed": self.args.seed,
            "optimizer": opt_sd,
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
            "rng": rngs,
            "nonfinite_total": self.nonfinite_total,
            "nonfinite_consecutive": self.nonfinite_run,
            "skipped_files": sorted(self.skipped_files),
            "skipped_total": self.skipped_total,
        }

    def save(self) -> str:
        """Write the checkpoint pair of the current step (all ranks call this)."""
        from dalle_pytorch.checkpoint import save, save_training_state

        env = self.env
        env.barrier()
        model = self._full_model()
        state = self._training_state()
        model_path, state_path = self.manager.pair(self.step)
        error: Optional[BaseException] = None
        if env.is_main:
            try:
                os.makedirs(self.manager.dir, exist_ok=True)
                meta = {"step": self.step, "epoch": self.epoch, "run": self.args.name, "kind": self.task.kind}
                save(model, model_path, tokenizer=self.task.tokenizer, metadata=meta)
                save_training_state(state_path, state)
                self.manager.commit(self.step)
            except Exception as e:  # noqa: BLE001 - reported on every rank below
                error = e
        if not env.all_ok(error is None):
            last = self.manager.latest()
            where = f"; the last good checkpoint is {last.model} (step {last.step})" if last else ""
            if isinstance(error, ValueError) and "non-finite" in str(error):
                raise TrainingError(f"stopping at step {self.step}: the weights have become non-finite (NaN/inf), "
                                    f"so no checkpoint was written{where}. Lower --learning_rate, use "
                                    "--clip_grad_norm or --precision fp32, and resume from there.") from error
            if error is not None:
                raise TrainingError(f"could not write the checkpoint of step {self.step}: {error}") from error
            raise TrainingError(f"rank 0 could not write the checkpoint of step {self.step}")
        self.last_saved = self.step
        self.logger.event("checkpoint", step=self.step, model=os.path.relpath(model_path, self.run_dir))
        return model_path

    # -- images -------------------------------------------------------------------------------------

    def _images(self, aux: Any) -> None:
        task = self.task
        if task.image_fn is None:
            return
        model = self._full_model() if task.image_needs_model else self.task.model
        if self.env.is_main:
            os.makedirs(self.samples_dir, exist_ok=True)
            stem = os.path.join(self.samples_dir, f"step_{self.step:08d}")
            result = task.image_fn(model, self.step, aux, stem)
            if result:
                path, caption = result
                self.logger.event("images", step=self.step, path=os.path.relpath(path, self.run_dir), caption=caption)
                self.logger.image(path, self.step, caption)

    # -- loop -------------------------------------------------------------------------------------

    def fit(self) -> dict:
        args, env, task = self.args, self.env, self.task
        self.log_lines: list[str] = list(task.info)
        task.model.train()
        self._wrap()
        self.optimizer = _build_optimizer(task.model, args)
        self.scaler = torch.amp.GradScaler(env.device.type, enabled=args.precision == "fp16")

        map_style = isinstance(task.data, Dataset) and hasattr(task.data, "__len__")
        bs, ga = args.batch_size, args.ga_steps
        if map_style:
            self.dataset = _ReportSkips(task.data)
            base = DistributedSampler(self.dataset, num_replicas=env.world_size, rank=env.rank, shuffle=True,
                                      seed=args.seed, drop_last=True)
            self.sampler = _ResumableSampler(base)
            steps_per_epoch = (len(base) // bs) // ga
            if steps_per_epoch == 0:
                raise TrainingError(
                    f"the dataset has {len(task.data)} samples: too few for one optimizer step of {bs * ga} samples "
                    f"per process x {env.world_size} processes (--batch_size {bs}, --ga_steps {ga}); lower them")
            total = args.max_steps or args.epochs * steps_per_epoch
        else:
            steps_per_epoch = None
            if env.distributed and not args.max_steps:
                raise TrainingError("streaming data (--wds) under torchrun needs --max_steps: shards split unevenly "
                                    "across ranks, so epochs end at different times")
            total = args.max_steps
        self.total = total
        self.scheduler = _build_scheduler(self.optimizer, args, total)

        self.step = self.epoch = self.batches_in_epoch = self.samples_seen = 0
        self.nonfinite_total = self.nonfinite_run = 0
        self.skipped_files: set[str] = set()
        self.skipped_total = 0
        self.last_saved = -1
        resume_step = None
        if self.resume is not None:
            point, state = self.resume
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                self._restore(state)
            resume_step = self.step
            self.last_saved = self.step
            if not map_style:
                self.batches_in_epoch = 0
                self.log_lines.append("note: streaming data resumes at a fresh stream position (not exact)")
        else:
            _seed_all(args.seed + env.rank)

        self.logger = _RunLogger(self.run_dir, args, env, resume_step)
        try:
            return self._loop(map_style, steps_per_epoch, resume_step)
        finally:
            self.logger.close()

    def _loop(self, map_style: bool, steps_per_epoch: Optional[int], resume_step: Optional[int]) -> dict:
        args, env, task, log = self.args, self.env, self.task, self.logger
        bs, ga = args.batch_size, args.ga_steps
        log.event("resume" if resume_step is not None else "start", step=self.step, epoch=self.epoch,
                  world_size=env.world_size, device=str(env.device), mode=self.mode, total_steps=self.total)
        for line in self.log_lines:
            log.print(line)
        log.print(f"training {task.kind} on {env.world_size} x {env.device.type} ({self.mode}), "
                  f"{bs * ga * env.world_size} samples per step"
                  + (f", {steps_per_epoch} steps per epoch" if steps_per_epoch else "")
                  + (f", {self.total} steps" if self.total else "")
                  + (f"; resuming at step {self.step} (epoch {self.epoch})" if resume_step is not None else ""))
        if env.is_main and not args.no_progress:
            from tqdm.auto import tqdm

            log.bar = tqdm(total=self.total, initial=self.step, desc=task.kind, dynamic_ncols=True)

        start_time = self._tick = time.time()
        last_loss = None
        done = self.total is not None and self.step >= self.total
        while not done:
            if map_style:
                self.sampler.set_epoch(self.epoch)
                self.dataset.set_epoch(self.epoch)
                self.sampler.start = self.batches_in_epoch * bs
                loader = DataLoader(self.dataset, batch_size=bs, sampler=self.sampler, num_workers=args.num_workers,
                                    collate_fn=_collate_with_skips, drop_last=True,
                                    pin_memory=env.device.type == "cuda",
                                    generator=torch.Generator().manual_seed((args.seed * 100003 + self.epoch) % 2**63))
                limit = steps_per_epoch * ga - self.batches_in_epoch
                batches: Iterable = itertools.islice(loader, max(0, limit))
            else:
                batches = ((b, None) for b in task.data)
            pending: list = []
            got_any = False
            for item in batches:
                got_any = True
                pending.append(item)
                if len(pending) < ga:
                    continue
                last_loss = self._step(pending)
                pending = []
                if self.total is not None and self.step >= self.total:
                    done = True
                    break
            if done:
                break
            if not map_style and not got_any:
                raise TrainingError("the data stream produced no batches (empty or unreadable shards?)")
            self.epoch += 1
            self.batches_in_epoch = 0
            if self.total is None and self.epoch >= args.epochs:
                break

        epoch_done = map_style and self.batches_in_epoch >= steps_per_epoch * ga
        self.epochs_completed = self.epoch + (1 if epoch_done else 0)
        if self.last_saved != self.step and self.step > 0:
            self.save()
        return self._finish(start_time, last_loss)

    def _step(self, micro_batches: list) -> float:
        args, env, task = self.args, self.env, self.task
        ga = len(micro_batches)
        lr = self.optimizer.param_groups[0]["lr"]
        want_images = bool(args.sample_every and task.image_fn is not None
                           and (self.step + 1) % args.sample_every == 0)
        loss_sum = torch.zeros((), device=env.device)
        finite_local = True
        new_skips: list[str] = []
        aux = None
        samples = 0
        for i, (batch, skipped) in enumerate(micro_batches):
            last = i == ga - 1
            if skipped:
                new_skips.extend(skipped)
            batch = _to_device(batch, env.device)
            samples += _batch_len(batch)
            with self._sync(last):
                with _autocast(args.precision, env.device):
                    loss, micro_aux = task.loss_fn(self.train_model, batch, self.step)
                loss = loss.float()
                if not bool(torch.isfinite(loss.detach())):
                    finite_local = False
                self.scaler.scale(loss / ga).backward()
            loss_sum += loss.detach()
            if last and want_images:
                aux = micro_aux
        self.batches_in_epoch += ga

        fresh = [f for f in new_skips if f not in self.skipped_files]
        self.skipped_files.update(fresh)
        stats = torch.stack([
            loss_sum / ga if finite_local else torch.zeros((), device=env.device),
            torch.tensor(0.0 if finite_local else 1.0, device=env.device),
            torch.tensor(float(len(fresh)), device=env.device),
            torch.tensor(float(samples), device=env.device),
        ])
        env.all_reduce_sum(stats)
        nonfinite = float(stats[1].item()) > 0
        self.skipped_total += int(stats[2].item())
        self.samples_seen += int(stats[3].item())
        loss_value = float("nan") if nonfinite else float(stats[0].item()) / env.world_size

        grad_norm = None
        if not nonfinite:
            if self.scaler.is_enabled():
                self.scaler.unscale_(self.optimizer)
            max_norm = args.clip_grad_norm if args.clip_grad_norm > 0 else float("inf")
            norm = torch.nn.utils.clip_grad_norm_(self.params, max_norm)
            if hasattr(norm, "full_tensor"):
                norm = norm.full_tensor()
            grad_norm = float(norm.item())
            if not math.isfinite(grad_norm) and not self.scaler.is_enabled():
                nonfinite = True
        if nonfinite:
            self.optimizer.zero_grad(set_to_none=True)
            self.nonfinite_total += 1
            self.nonfinite_run += 1
        else:
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.optimizer.zero_grad(set_to_none=True)
            self.nonfinite_run = 0
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "scheduler.step() before optimizer.step()" on a skip
            self.scheduler.step()
        self.step += 1

        dt = max(time.time() - self._tick, 1e-9)  # data loading + compute since the previous step
        record = {"event": "step", "step": self.step, "epoch": self.epoch, "loss": loss_value, "lr": lr,
                  "grad_norm": grad_norm, "samples_per_sec": float(stats[3].item()) / dt,
                  "nonfinite_steps": self.nonfinite_total, "skipped_samples": self.skipped_total}
        if nonfinite:
            record["skipped_step"] = True
        if task.log_fn is not None:
            record.update(task.log_fn(self.step - 1))
        self.logger.write(record)
        log = self.logger
        if log.bar is not None:
            log.bar.update(1)
            log.bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{lr:.2e}", refresh=False)
        if nonfinite:
            log.print(f"step {self.step}: non-finite loss or gradient; optimizer step skipped "
                      f"({self.nonfinite_run} in a row, {self.nonfinite_total} in total)")
            if self.nonfinite_run > args.max_nonfinite:
                last = self.manager.latest()
                where = f" The last checkpoint is {last.model} (step {last.step})." if last else ""
                raise TrainingError(
                    f"stopping at step {self.step}: the loss was non-finite (NaN/inf) for {self.nonfinite_run} "
                    f"steps in a row, more than --max_nonfinite {args.max_nonfinite}.{where} Try a lower "
                    "--learning_rate, --warmup_steps, --clip_grad_norm, or --precision fp32/bf16 instead of fp16.")
        elif self.step % args.log_every == 0 and (log.bar is None):
            log.print(f"epoch {self.epoch} step {self.step}: loss {loss_value:.5f} lr {lr:.3e}")
        if fresh and env.is_main:
            log.print(f"skipped bad samples: {', '.join(fresh)} ({self.skipped_total} so far)")

        if want_images:
            self._images(aux)
        if args.save_every_steps and self.step % args.save_every_steps == 0:
            self.save()
        self._tick = time.time()
        return loss_value

    def _finish(self, start_time: float, last_loss: Optional[float]) -> dict:
        args, env = self.args, self.env
        final_path = os.path.join(self.run_dir, f"{args.name}.safetensors")
        point = self.manager.latest()
        if env.is_main and point is not None:
            _link(point.model, final_path)
        digest = None
        if env.distributed:
            if self.mode == "fsdp":
                from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

                sd = get_model_state_dict(self.task.model, options=StateDictOptions(full_state_dict=True))
            else:
                sd = self.task.model.state_dict()
            digest = weights_digest(sd)
            os.makedirs(os.path.join(self.run_dir, "replicas"), exist_ok=True)
            _write_text(os.path.join(self.run_dir, "replicas", f"rank{env.rank}.sha256"), digest + "\n")
        digests = self.env.all_gather_object(digest)
        summary = {
            "kind": self.task.kind,
            "steps": self.step,
            "epochs_completed": self.epochs_completed,
            "samples_seen": self.samples_seen,
            "final_loss": last_loss,
            "nonfinite_steps": self.nonfinite_total,
            "skipped_samples": self.skipped_total,
            "skipped_files": sorted(self.skipped_files),
            "world_size": env.world_size,
            "mode": self.mode,
            "seconds": time.time() - start_time,
            "model": final_path if point is not None else None,
            "replicas_in_sync": (len(set(digests)) == 1) if env.distributed else None,
        }
        if env.is_main:
            _write_text(os.path.join(self.run_dir, "summary.json"), json.dumps(summary, indent=2) + "\n")
            self.logger.event("end", step=self.step, **{k: v for k, v in summary.items() if k != "skipped_files"})
            if self.logger.bar is not None:
                self.logger.bar.close()
                self.logger.bar = None
            skipped = (f"{self.skipped_total} bad samples skipped"
                       + (f" ({', '.join(summary['skipped_files'][:5])}"
                          + (", ..." if len(summary["skipped_files"]) > 5 else "") + ")" if self.skipped_files else ""))
            loss = f"{last_loss:.5f}" if last_loss is not None else "n/a"
            self.logger.print(
                f"done: {self.step} steps, {self.epochs_completed} epochs completed, final loss {loss}, "
                f"{self.nonfinite_total} non-finite steps skipped, {skipped}"
                + (f"; model: {final_path}" if point is not None else ""))
            if summary["replicas_in_sync"] is False:
                self.logger.print("warning: the ranks ended with different weights (see replicas/*.sha256)")
        return summary


def _batch_len(batch: Any) -> int:
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0])
    if isinstance(batch, (list, tuple)) and batch:
        return _batch_len(batch[0])
    return 0


# --------------------------------------------------------------------------------------------------
# entry points
# --------------------------------------------------------------------------------------------------


def run(args: argparse.Namespace, kind: str) -> dict:
    """Train ``kind`` ("vae" or "dalle") as configured by ``args``; returns the run summary.

    Works alone or under torchrun. Raises TrainingError for configuration problems, non-finite
    divergence and unwritable checkpoints.
    """
    from dalle_pytorch.checkpoint import load_checkpoint, load_training_state

    builders = {"vae": build_vae_task, "dalle": build_dalle_task}
    if kind not in builders:
        raise ValueError(f"unknown task {kind!r}")
    _check_common_args(args)
    _check_optional_packages(args)
    env = init_distributed(args.device)
    task = trainer = None
    try:
        check_precision(args.precision, env.device)
        if args.fsdp and not env.distributed:
            raise TrainingError("--fsdp shards the model across processes: launch with torchrun "
                                "--nproc_per_node N (N >= 2), or drop --fsdp")
        run_dir = os.path.abspath(args.output_dir or os.path.join("runs", args.name))
        if env.is_main:
            os.makedirs(run_dir, exist_ok=True)
        env.barrier()
        manager = CheckpointManager(run_dir, args.keep_last)
        point = manager.latest()
        seen = env.all_gather_object(point.step if point is not None else None)
        if len(set(seen)) != 1:
            raise TrainingError(f"the ranks see different checkpoints in {run_dir} (steps {seen}); the output folder "
                                "must be on a file system shared by all nodes")
        if point is not None and not args.resume:
            raise TrainingError(f"{run_dir} already holds a training run (newest checkpoint: step {point.step}). "
                                "Pass --resume to continue it, or choose another --output_dir / --name.")
        resume = None
        resumed_model = None
        if args.resume and point is not None:
            resumed_model = load_checkpoint(point.model, map_location="cpu")
            if resumed_model.kind != kind:
                raise TrainingError(f"{run_dir} holds a {resumed_model.kind} run; this script trains a {kind}")
            resume = (point, load_training_state(point.state, map_location="cpu"))
        elif args.resume and env.is_main:
            print(f"--resume: no training state in {run_dir} yet; starting a new run", flush=True)
        if env.is_main:
            config = {k: v for k, v in vars(args).items() if _jsonable(v)}
            config.update(world_size=env.world_size, kind=kind)
            _write_text(os.path.join(run_dir, "config.json"), json.dumps(config, indent=2) + "\n")
        _seed_all(args.seed)  # identical initial weights on every rank
        with env.main_first():
            task = builders[kind](args, env, resumed_model)
        trainer = Trainer(args, env, task, run_dir, manager, resume)
        result = trainer.fit()
        env.barrier()  # every rank reaches teardown together
        return result
    finally:
        # Release the model, its DDP/FSDP wrapper and their pending gloo work while the interpreter
        # is fully alive: gloo threads still holding such work at interpreter exit abort the process
        # ("terminate called without an active exception"; see pytorch/pytorch#179291).
        task = trainer = None
        gc.collect()
        env.close()


def _check_optional_packages(args: argparse.Namespace) -> None:
    """Fail before any work when an optional package a flag needs is missing."""
    import importlib.util

    needs = [("tensorboard", "tensorboard", "--tensorboard"), ("wandb", "wandb", "--wandb"),
             ("wds", "webdataset", "--wds")]
    for attr, module, flag in needs:
        if getattr(args, attr, None) and importlib.util.find_spec(module) is None:
            raise TrainingError(f"{flag} needs the optional package '{module}': pip install {module}")


def cli(main: Callable[[argparse.Namespace], Any], parse_args: Callable[[], argparse.Namespace]) -> int:
    """Run a script's ``main`` with clean error messages for TrainingError (exit status 1)."""
    try:
        main(parse_args())
    except TrainingError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        print("interrupted; continue with --resume (from the last checkpoint)", file=sys.stderr, flush=True)
        return 130
    return 0
