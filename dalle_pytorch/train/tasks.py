"""What the training scripts train: a `Task` (model, data, loss, sample images), and the builders of
the two tasks, `vae_task` (train_vae.py) and `dalle_task` (train_dalle.py).

A builder is called by `dalle_pytorch.train.run.run(args, builder)` with the parsed flags, the
distributed environment and the model of the checkpoint being resumed (or None).
"""
from __future__ import annotations

import argparse
import dataclasses
import os
from typing import Any, Callable, Optional

import torch
from torch import nn

from dalle_pytorch.checkpoint.build import LoadedCheckpoint
from dalle_pytorch.checkpoint.ours import load_checkpoint
from dalle_pytorch.checkpoint.pretrained import vae_flags, vae_from_flags
from dalle_pytorch.distributed import DistEnv
from dalle_pytorch.errors import TrainingError
from dalle_pytorch.formats.files import write_text
from dalle_pytorch.formats.images import save_image_grid
from dalle_pytorch.models.dalle import DALLE
from dalle_pytorch.models.vae import DiscreteVAE
from dalle_pytorch.text.factory import select_tokenizer
from dalle_pytorch.train.datasets import ImageFolder, TextImageDataset
from dalle_pytorch.train.schedules import AnnealedTemperature
from dalle_pytorch.train.webdataset import webdataset_loader

__all__ = ["Task", "TaskBuilder", "vae_task", "dalle_task", "parse_ids", "pretrained_vae"]


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
        set_steps_per_epoch: called by the trainer with the optimizer steps per epoch (None for
            streaming data) before training, for schedules that restart with every epoch.
        start_state: what a DALLE-pytorch `--dalle_path` file holds beyond the weights
            (`LoadedCheckpoint.training`: epoch, optimizer and scheduler states), restored by the
            trainer when the run starts.
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
    set_steps_per_epoch: Optional[Callable[[Optional[int]], None]] = None
    start_state: Optional[dict] = None


#: (args, env, the checkpoint being resumed or None) -> Task
TaskBuilder = Callable[[argparse.Namespace, DistEnv, Optional[LoadedCheckpoint]], Task]


def vae_task(args: argparse.Namespace, env: DistEnv, resumed: Optional[LoadedCheckpoint]) -> Task:
    """DiscreteVAE on a folder of images (``train_vae.py``)."""
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
    k = args.num_images_save
    # DALLE-pytorch train_vae.py's annealing: compounding, after the first step of every epoch and
    # every 100th step within it; a function of the step (and the epoch length), so resumes match
    schedule = {"temperature": AnnealedTemperature(starting_temp=args.starting_temp, temp_min=args.temp_min,
                                                   anneal_rate=args.anneal_rate)}

    def set_steps_per_epoch(steps: Optional[int]) -> None:
        schedule["temperature"] = AnnealedTemperature(
            batches_per_epoch=steps, starting_temp=args.starting_temp, temp_min=args.temp_min,
            anneal_rate=args.anneal_rate)

    def temperature(step: int) -> float:
        return schedule["temperature"](step)

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
                set_steps_per_epoch=set_steps_per_epoch,
                info=[f"{len(dataset)} images in {dataset.folder}",
                      f"VAE: {sum(p.numel() for p in model.parameters()):,} parameters, "
                      f"{model.image_size}px -> {model.fmap_size}x{model.fmap_size} codes of {model.num_tokens}"])



def pretrained_vae(args: argparse.Namespace, resumed: Optional[LoadedCheckpoint]) -> Optional[nn.Module]:
    """The pretrained VAE train_dalle.py's flags select, as DALLE-pytorch chooses it; None for --vae_path.

    A new model without --vae_path gets the VQGAN with --taming (from --vqgan_model_path /
    --vqgan_config_path, else ~/.cache/dalle) and OpenAI's dVAE otherwise (--openai_*_path, else
    ~/.cache/dalle); --dalle_path takes the one the flags give (its file may need it). Nothing is
    downloaded: a missing file stops the run naming it (`pretrained.vae_from_flags`).
    """
    flags = vae_flags(args)
    given = any(v not in (None, False) for v in flags.values())
    if args.vae_path and given:
        raise TrainingError("--vae_path and --taming / --vqgan_* / --openai_* ask for two different VAEs; choose one")
    if resumed is not None or args.vae_path or (args.dalle_path and not given):
        return None
    vqgan = args.taming or args.vqgan_model_path is not None or args.vqgan_config_path is not None
    try:  # without --taming DALLE-pytorch trains over OpenAI's dVAE
        return vae_from_flags(openai=not args.dalle_path and not vqgan, **flags)
    except (ValueError, OSError) as e:
        raise TrainingError(f"train_dalle.py: {e}") from None


def parse_ids(text: Optional[str]):
    if text is None:
        return None
    items = [t.strip() for t in text.split(",") if t.strip()]
    return tuple(int(t) if t.lstrip("-").isdigit() else t for t in items)


def dalle_task(args: argparse.Namespace, env: DistEnv, resumed: Optional[LoadedCheckpoint]) -> Task:
    """DALLE on captioned images (``train_dalle.py``): folder pairs or webdataset shards."""
    info = []
    if args.optimize_for_inference:
        info.append("note: --optimize_for_inference only affects inference; it is ignored for training")
    start_state = None
    if resumed is not None and (args.taming or args.vqgan_model_path or args.openai_encoder_path):
        info.append("note: the VAE flags are not used: the run's checkpoint holds its VAE")
    if resumed is None and args.dalle_path:
        if not os.path.exists(args.dalle_path):
            raise TrainingError(f"--dalle_path {args.dalle_path!r} does not exist")
        # a DALLE-pytorch file over a pretrained VAE takes it from --taming / --vqgan_* / --openai_* (or
        # the files in ~/.cache/dalle), as there
        resumed = load_checkpoint(args.dalle_path, map_location="cpu", vae=pretrained_vae(args, None))
        if resumed.kind != "dalle":
            raise TrainingError(f"--dalle_path {args.dalle_path!r} holds a {resumed.kind} model, not a DALLE "
                                "(pass a VAE with --vae_path)")
        start_state = resumed.training  # DALLE-pytorch files: epoch, optimizer and scheduler states
        if start_state is None:
            what = "weights and tokenizer" if resumed.tokenizer is not None else "weights"
            info.append(f"initialised from {args.dalle_path} ({resumed.source}): its {what} (--resume continues a run "
                        "of this script exactly)")
    try:
        tokenizer = select_tokenizer(args.bpe_path, hug=args.hug, chinese=args.chinese,
                                        stored=resumed.tokenizer if resumed else None,
                                        model_text_tokens=resumed.model.num_user_text_tokens if resumed else None)
    except ValueError as e:
        raise TrainingError(str(e)) from None

    if resumed is not None:
        model = resumed.model
        if not isinstance(model, DALLE):
            raise TrainingError(f"the checkpoint holds a {type(model).__name__}, not a DALLE")
    else:  # a new model: its tokenizer is settled first, then its VAE (as DALLE-pytorch)
        vae = pretrained_vae(args, None)
        if vae is not None:
            info.append(f"VAE: the pretrained {type(vae).__name__} ({vae.image_size}px -> {vae.num_tokens} codes)")
        else:
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
            shared_attn_ids=parse_ids(args.shared_attn_ids), shared_ff_ids=parse_ids(args.shared_ff_ids),
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
        try:
            data = TextImageDataset(args.image_text_folder, text_len=text_len, image_size=image_size,
                                    truncate_captions=args.truncate_captions, resize_ratio=args.resize_ratio,
                                    transparent=transparent, tokenizer=tokenizer,
                                    max_bad_fraction=args.max_bad_fraction, seed=args.seed)
        except ValueError as e:  # no pairs in the folder, a bad --resize_ratio, ...
            raise TrainingError(f"--image_text_folder: {e}") from None
        info.append(f"{len(data)} image-text pairs in {data.folder}")
        first_caption = first_caption_of(data)

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
        write_text(stem + ".txt", caption + "\n")
        return path, caption

    def dummy_batch():
        text = tokenizer.tokenize([caption], text_len, truncate_text=True)
        return text, torch.rand(1, vae.channels, image_size, image_size)

    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    info.append(f"DALLE: {n_params:,} trainable parameters, {model.text_seq_len} text + {model.image_seq_len} image "
                f"tokens, vocab {tokenizer.vocab_size}")
    return Task(kind="dalle", model=model, data=data, loss_fn=loss_fn, dummy_batch=dummy_batch,
                image_fn=image_fn if num_images > 0 else None, image_needs_model=True, tokenizer=tokenizer, info=info,
                start_state=start_state)


def first_caption_of(dataset) -> Optional[str]:
    """First caption line of the dataset's first pair (the default sample caption)."""
    try:
        with open(os.path.join(dataset.folder, dataset.pairs[0][1]), encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    return line.strip()
    except (OSError, UnicodeDecodeError, IndexError, AttributeError):
        pass
    return None

