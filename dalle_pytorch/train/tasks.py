"""What the training scripts train: a `Task` (model, data, loss, sample images), and the builders of
the two tasks, `vae_task` (train_vae.py) and `dalle_task` (train_dalle.py).

A builder is called by `dalle_pytorch.train.run.run(config, builder)` with the run's `TrainConfig`
(its `task` the builder's settings: `VaeConfig` or `DalleConfig`), the distributed environment and
the model of the checkpoint being resumed (or None).
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Optional, TypeVar

import torch
from torch import nn

from dalle_pytorch.checkpoint.build import LoadedCheckpoint
from dalle_pytorch.checkpoint.ours import load_checkpoint
from dalle_pytorch.checkpoint.pretrained import asks_for_vqgan, vae_flags, vae_from_flags
from dalle_pytorch.distributed import DistEnv
from dalle_pytorch.errors import TrainingError
from dalle_pytorch.formats.files import write_text
from dalle_pytorch.formats.images import save_image_grid
from dalle_pytorch.models.dalle import DALLE
from dalle_pytorch.models.vae import DiscreteVAE
from dalle_pytorch.text.factory import select_tokenizer
from dalle_pytorch.train.config import DalleConfig, TrainConfig, VaeConfig
from dalle_pytorch.train.code_shards import MANIFEST, VAE_COPY, CodeDataset, Manifest, check_vae, code_loader, read_manifest
from dalle_pytorch.train.datasets import ImageFolder, TextImageDataset
from dalle_pytorch.train.runlog import counted
from dalle_pytorch.train.schedules import AnnealedTemperature
from dalle_pytorch.train.webdataset import webdataset_loader

__all__ = ["Task", "TaskBuilder", "vae_task", "dalle_task", "pretrained_vae"]


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
            called on rank 0 every `sample_every` steps.
        image_needs_model: image_fn uses the model (under FSDP a full copy is gathered for it).
        log_fn: step -> extra values for the step's log record.
        tokenizer: stored in the model checkpoints.
        info: lines printed at start.
        set_steps_per_epoch: called by the trainer with the optimizer steps per epoch (None for
            streaming data) before training, for schedules that restart with every epoch.
        start_state: what a DALLE-pytorch file (`dalle_path`) holds beyond the weights
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


#: (config, env, the checkpoint being resumed or None) -> Task
TaskBuilder = Callable[[TrainConfig, DistEnv, Optional[LoadedCheckpoint]], Task]

T = TypeVar("T")


def task_settings(config: TrainConfig, kind: type[T], builder: str) -> T:
    """`config.task`, which must be a `kind` (the settings of the task `builder` builds)."""
    if not isinstance(config.task, kind):
        raise TrainingError(f"{builder} needs a {kind.__name__} as TrainConfig.task, got "
                            f"{type(config.task).__name__}")
    return config.task


def vae_task(config: TrainConfig, env: DistEnv, resumed: Optional[LoadedCheckpoint]) -> Task:
    """DiscreteVAE on a folder of images (``train_vae.py``), as `config.task` (a VaeConfig) says."""
    cfg = task_settings(config, VaeConfig, "vae_task")
    if resumed is not None:
        model = resumed.model
        if not isinstance(model, DiscreteVAE):
            raise TrainingError(f"the checkpoint to resume holds a {type(model).__name__}, not a DiscreteVAE")
    else:
        channels = 4 if cfg.transparent else 3
        try:
            model = DiscreteVAE(
                image_size=cfg.image_size, num_tokens=cfg.num_tokens, codebook_dim=cfg.emb_dim,
                num_layers=cfg.num_layers, num_resnet_blocks=cfg.num_resnet_blocks, hidden_dim=cfg.hidden_dim,
                channels=channels, smooth_l1_loss=cfg.smooth_l1_loss, straight_through=cfg.straight_through,
                reinmax=cfg.reinmax, kl_div_loss_weight=cfg.kl_loss_weight,
                normalization=((0.5,) * channels, (0.5,) * channels),
            )
        except ValueError as e:  # settings the model cannot be built with (an image size not a power of 2, ...)
            raise settings_error("DiscreteVAE", e, cfg) from None
    if cfg.transparent and model.channels != 4:
        raise TrainingError(f"`transparent` needs a 4-channel VAE; the resumed one has {model.channels} channels")
    dataset = ImageFolder(cfg.image_folder, model.image_size, transparent=model.channels == 4,
                          max_bad_fraction=config.loop.max_bad_fraction)
    k = cfg.num_images_save
    # DALLE-pytorch train_vae.py's annealing: compounding, after the first step of every epoch and
    # every 100th step within it; a function of the step (and the epoch length), so resumes match
    schedule = {"temperature": AnnealedTemperature(starting_temp=cfg.starting_temp, temp_min=cfg.temp_min,
                                                   anneal_rate=cfg.anneal_rate)}

    def set_steps_per_epoch(steps: Optional[int]) -> None:
        schedule["temperature"] = AnnealedTemperature(
            batches_per_epoch=steps, starting_temp=cfg.starting_temp, temp_min=cfg.temp_min,
            anneal_rate=cfg.anneal_rate)

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
                info=[f"{counted(len(dataset), 'image')} in {dataset.folder}",
                      f"VAE: {sum(p.numel() for p in model.parameters()):,} parameters, "
                      f"{model.image_size}px -> {model.fmap_size}x{model.fmap_size} codes of {model.num_tokens}"])



def pretrained_vae(cfg: DalleConfig, resumed: Optional[LoadedCheckpoint]) -> Optional[nn.Module]:
    """The pretrained VAE the settings select, as DALLE-pytorch's train_dalle.py chooses it; None with vae_path.

    A new model without vae_path gets the VQGAN with taming (from vqgan_model_path /
    vqgan_config_path, else ~/.cache/dalle) and OpenAI's dVAE otherwise (openai_*_path, else
    ~/.cache/dalle); dalle_path takes the one the settings give (its file may need it). Nothing is
    downloaded: a missing file stops the run naming it (`pretrained.vae_from_flags`).
    """
    if resumed is not None or cfg.vae_path or (cfg.dalle_path and not cfg.pretrained_vae_given):
        return None
    if cfg.codes and not cfg.pretrained_vae_given:  # the codes folder's VAE (`codes_vae`)
        return None
    flags = vae_flags(cfg)
    try:  # without taming DALLE-pytorch trains over OpenAI's dVAE
        return vae_from_flags(openai=not cfg.dalle_path and not asks_for_vqgan(flags), **flags)
    except (ValueError, OSError) as e:
        raise TrainingError(str(e)) from None


def dalle_task(config: TrainConfig, env: DistEnv, resumed: Optional[LoadedCheckpoint]) -> Task:
    """DALLE on captioned images (``train_dalle.py``): folder pairs or webdataset shards, as `config.task`
    (a DalleConfig) says."""
    cfg = task_settings(config, DalleConfig, "dalle_task")
    info = []
    start_state = None
    if resumed is not None and cfg.pretrained_vae_given:
        info.append("note: the pretrained-VAE settings are not used: the run's checkpoint holds its VAE")
    if resumed is None and cfg.dalle_path:
        # a DALLE-pytorch file over a pretrained VAE takes it from taming / vqgan_* / openai_* (or the
        # files in ~/.cache/dalle), as there
        resumed = load_checkpoint(cfg.dalle_path, map_location="cpu", vae=pretrained_vae(cfg, None))
        if resumed.kind != "dalle":
            raise TrainingError(f"`dalle_path` {cfg.dalle_path!r} holds a {resumed.kind} model, not a DALLE: a VAE "
                                "goes in `vae_path`")
        start_state = resumed.training  # DALLE-pytorch files: epoch, optimizer and scheduler states
        if start_state is None:
            what = "weights and tokenizer" if resumed.tokenizer is not None else "weights"
            info.append(f"initialised from {cfg.dalle_path} ({resumed.source}): its {what}; `resume` continues a "
                        "run of this script exactly")
    try:
        tokenizer = select_tokenizer(cfg.bpe_path, hug=cfg.hug, chinese=cfg.chinese,
                                        stored=resumed.tokenizer if resumed else None,
                                        model_text_tokens=resumed.model.num_user_text_tokens if resumed else None)
    except ValueError as e:
        raise TrainingError(str(e)) from None

    if resumed is not None:
        model = resumed.model
        if not isinstance(model, DALLE):
            raise TrainingError(f"the checkpoint holds a {type(model).__name__}, not a DALLE")
    else:  # a new model: its tokenizer is settled first, then its VAE (as DALLE-pytorch)
        vae = pretrained_vae(cfg, None)
        if vae is not None:
            info.append(f"VAE: the pretrained {type(vae).__name__} ({vae.image_size}px -> {vae.num_tokens} codes)")
        elif cfg.vae_path:
            loaded_vae = load_checkpoint(cfg.vae_path, map_location="cpu")
            vae = loaded_vae.model.vae if loaded_vae.kind == "dalle" else loaded_vae.model
            if not isinstance(vae, DiscreteVAE):
                raise TrainingError(f"`vae_path` {cfg.vae_path!r} does not hold a DiscreteVAE")
        else:
            vae = codes_vae(cfg)
            info.append(f"VAE: the {type(vae).__name__} copied into the codes folder by dalle-encode")
        model = build_dalle(cfg, vae, tokenizer.vocab_size)
    if tokenizer.vocab_size > model.num_user_text_tokens:
        raise TrainingError(f"the tokenizer has {tokenizer.vocab_size} tokens but the model only "
                            f"{model.num_user_text_tokens} text tokens; use the tokenizer the model was trained with")
    vae = model.vae
    if cfg.transparent and vae.channels != 4:
        raise TrainingError(f"`transparent` needs a 4-channel (RGBA) VAE; this one has {vae.channels} channels")
    transparent = vae.channels == 4
    text_len, image_size = model.text_seq_len, vae.image_size

    loop = config.loop
    first_caption = None
    if cfg.codes:
        data, manifest, where = code_data(cfg, tokenizer, text_len, loop)
        check_vae(manifest, vae, where, vae_given(cfg, resumed))
        info.append(f"{counted(manifest.samples, 'pre-encoded sample')} in {where} ({counted(manifest.crops, 'crop')} "
                    f"each, taken by dalle-encode at resize_ratio {manifest.resize_ratio:g}; made by this VAE, which "
                    "does not run while training)")
        if isinstance(data, CodeDataset):
            first_caption = data.first_caption()
    elif cfg.wds:
        image_key, caption_key = cfg.wds
        try:
            data = webdataset_loader(cfg.image_text_folder, image_key=image_key, caption_key=caption_key,
                                     text_len=text_len, image_size=image_size, tokenizer=tokenizer,
                                     truncate_captions=cfg.truncate_captions, resize_ratio=cfg.resize_ratio,
                                     batch_size=loop.batch_size, num_workers=loop.num_workers, transparent=transparent)
        except ValueError as e:  # no shards there
            raise TrainingError(f"`image_text_folder`: {e}") from None
        info.append(f"webdataset shards {cfg.image_text_folder} (keys {image_key}, {caption_key})")
    else:
        try:
            data = TextImageDataset(cfg.image_text_folder, text_len=text_len, image_size=image_size,
                                    truncate_captions=cfg.truncate_captions, resize_ratio=cfg.resize_ratio,
                                    transparent=transparent, tokenizer=tokenizer,
                                    max_bad_fraction=loop.max_bad_fraction, seed=loop.seed)
        except ValueError as e:  # no pairs in the folder
            raise TrainingError(f"`image_text_folder`: {e}") from None
        info.append(f"{counted(len(data), 'image-text pair')} in {data.folder}")
        first_caption = first_caption_of(data)

    caption = cfg.sample_caption or first_caption or "a picture"
    sample_tokens = tokenizer.tokenize([caption], text_len, truncate_text=True)
    num_images, seed = cfg.num_sample_images, loop.seed

    def loss_fn(m, batch, step):
        text, images = batch
        return m(text, images, return_loss=True, null_cond_prob=cfg.null_cond_prob), None

    def image_fn(m, step, aux, stem):
        device = next(m.parameters()).device
        generator = torch.Generator().manual_seed(seed)
        images = m.generate_images(sample_tokens.to(device), num_images=num_images, generator=generator,
                                   filter_thres=cfg.sample_filter_thres)
        path = save_image_grid([images], stem + ".png")
        write_text(stem + ".txt", caption + "\n")
        return path, caption

    def dummy_batch():
        text = tokenizer.tokenize([caption], text_len, truncate_text=True)
        if cfg.codes:
            return text, torch.zeros(1, model.image_seq_len, dtype=torch.long)
        return text, torch.rand(1, vae.channels, image_size, image_size)

    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    info.append(f"DALLE: {n_params:,} trainable parameters, {model.text_seq_len} text + {model.image_seq_len} image "
                f"tokens, vocab {tokenizer.vocab_size}")
    return Task(kind="dalle", model=model, data=data, loss_fn=loss_fn, dummy_batch=dummy_batch,
                image_fn=image_fn if num_images > 0 else None, image_needs_model=True, tokenizer=tokenizer, info=info,
                start_state=start_state)


def codes_manifest_path(cfg: DalleConfig) -> str:
    """The manifest of `codes`: `codes_manifest` when given (streamed shards), else the folder's manifest.json."""
    return cfg.codes_manifest or os.path.join(cfg.codes, MANIFEST)


def codes_vae(cfg: DalleConfig) -> nn.Module:
    """The VAE dalle-encode copied beside the codes' manifest (vae.safetensors), for a new DALLE given no VAE setting."""
    path = os.path.join(os.path.dirname(os.path.abspath(codes_manifest_path(cfg))), VAE_COPY)
    if not os.path.exists(path):
        manifest = read_manifest(codes_manifest_path(cfg))
        raise TrainingError(
            f"the codes in {cfg.codes} hold no copy of their VAE ({VAE_COPY}; dalle-encode --no_save_vae): give the VAE "
            f"they were made with, a {manifest.vae.get('class')} given to dalle-encode as "
            f"{manifest.vae.get('description')} (`vae_path`, or `taming` / `vqgan_*` / `openai_*`)")
    return load_checkpoint(path, map_location="cpu").model


def vae_given(cfg: DalleConfig, resumed: Optional[LoadedCheckpoint]) -> str:
    """How the run's VAE was given, for messages."""
    if resumed is not None:
        return "the VAE of the model being resumed" if not cfg.dalle_path else f"the VAE of `dalle_path` {cfg.dalle_path}"
    if cfg.vae_path:
        return f"`vae_path` {cfg.vae_path}"
    if cfg.pretrained_vae_given:
        return "the pretrained VAE of `taming` / `vqgan_*` / `openai_*`"
    return f"the codes folder's {VAE_COPY}"


def code_data(cfg: DalleConfig, tokenizer: Any, text_len: int, loop) -> tuple[Any, Manifest, str]:
    """The training data of `codes`: a CodeDataset of a local folder (exact resume), or a stream of its shards."""
    if not cfg.codes_streamed:
        data = CodeDataset(cfg.codes, text_len=text_len, tokenizer=tokenizer, truncate_captions=cfg.truncate_captions,
                           max_bad_fraction=loop.max_bad_fraction, seed=loop.seed)
        return data, data.manifest, data.folder
    manifest = read_manifest(cfg.codes_manifest)
    try:
        data = code_loader(cfg.codes, manifest, text_len=text_len, tokenizer=tokenizer,
                           truncate_captions=cfg.truncate_captions, batch_size=loop.batch_size,
                           num_workers=loop.num_workers)
    except ValueError as e:  # no shards there
        raise TrainingError(f"`codes`: {e}") from None
    return data, manifest, str(cfg.codes)


def build_dalle(cfg: DalleConfig, vae: nn.Module, num_text_tokens: int) -> DALLE:
    """A new DALLE over `vae` with the model settings of `cfg`."""
    try:
        return DALLE(
            dim=cfg.dim, vae=vae, num_text_tokens=num_text_tokens, text_seq_len=cfg.text_seq_len,
            depth=cfg.depth, heads=cfg.heads, dim_head=cfg.dim_head, reversible=cfg.reversible,
            attn_dropout=cfg.attn_dropout, ff_dropout=cfg.ff_dropout, attn_types=cfg.attn_types,
            loss_img_weight=cfg.loss_img_weight, stable=cfg.stable, sandwich_norm=cfg.sandwich_norm,
            shift_tokens=cfg.shift_tokens, rotary_emb=cfg.rotary_emb, shared_attn_ids=cfg.shared_attn_ids,
            shared_ff_ids=cfg.shared_ff_ids, share_input_output_emb=cfg.share_input_output_emb,
            attn_kernel=cfg.attn_kernel,
        )
    except ValueError as e:  # settings the model cannot be built with (an unknown attention type, ...)
        raise settings_error("DALLE", e, cfg) from None


def settings_error(model: str, error: ValueError, settings: Any) -> TrainingError:
    """A model's ValueError about its arguments, as a TrainingError that names the setting when the
    message starts with one of `settings`' field names (the models' arguments mostly share them)."""
    text = str(error)
    first = text.split(" ", 1)[0]
    if first in {f.name for f in dataclasses.fields(settings)}:
        text = f"`{first}`{text[len(first):]}"
    return TrainingError(f"the {model} settings: {text}")


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

