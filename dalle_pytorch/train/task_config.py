"""The settings of what a run trains, `TrainConfig.task`: `VaeConfig` (read by `tasks.vae_task`) and
`DalleConfig` (`tasks.dalle_task`). Checked when built, like the other groups (config.py); the files
and folders they name are checked when the run starts (`check_inputs`), before the run folder."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Optional, Sequence

from dalle_pytorch.errors import TrainingError

__all__ = ["VaeConfig", "DalleConfig", "ATTN_KERNELS", "at_least", "one_of", "check_folder", "check_exists"]

ATTN_KERNELS = ("auto", "pattern", "masked")


def at_least(config: Any, minimum: int, *names: str) -> None:
    """Raise a TrainingError naming the first of `names` whose value (when not None) is below `minimum`."""
    for name in names:
        value = getattr(config, name)
        if value is not None and not value >= minimum:
            raise TrainingError(f"`{name}` must be >= {minimum}, got {value}")


def one_of(config: Any, name: str, choices: Sequence[str]) -> None:
    value = getattr(config, name)
    if value not in choices:
        raise TrainingError(f"`{name}` must be one of {', '.join(choices)}, got {value!r}")


def check_folder(config: Any, name: str) -> None:
    """The folder a setting names must exist (checked when the run starts)."""
    path = getattr(config, name)
    if not os.path.exists(path):
        raise TrainingError(f"`{name}` {path!r} does not exist")
    if not os.path.isdir(path):
        raise TrainingError(f"`{name}` {path!r} is not a directory")


def check_exists(config: Any, name: str) -> None:
    """The file a setting names, when given, must exist (checked when the run starts)."""
    path = getattr(config, name)
    if path and not os.path.exists(path):
        raise TrainingError(f"`{name}` {path!r} does not exist")


def image_data(config: Any) -> None:
    """The image-data settings train_dalle.py and dalle-encode share: `wds` (normalised to a tuple of the image and
    caption keys, or None) and `resize_ratio` in (0, 1]."""
    if config.wds is not None:
        config.wds = tuple(config.wds)
        if len(config.wds) != 2 or not all(isinstance(k, str) and k for k in config.wds):
            raise TrainingError(f"`wds` must be the (image key, caption key) of the shards, got {config.wds!r}")
    if not 0 < config.resize_ratio <= 1:
        raise TrainingError(f"`resize_ratio` must be in (0, 1], got {config.resize_ratio}")


def fraction(config: Any, *names: str) -> None:
    for name in names:
        value = getattr(config, name)
        if not 0 <= value <= 1:
            raise TrainingError(f"`{name}` must be in [0, 1], got {value}")


@dataclass
class VaeConfig:
    """A DiscreteVAE trained on a folder of images (train_vae.py)."""

    image_folder: str = ""  # folder of images, searched recursively (caption files are ignored)
    image_size: int = 128  # image side in pixels, a power of 2
    transparent: bool = False  # RGBA images (4 channels)
    num_tokens: int = 8192  # codebook size
    num_layers: int = 3  # down-sampling layers: codes grid = image_size / 2**num_layers
    num_resnet_blocks: int = 2  # resnet blocks
    smooth_l1_loss: bool = False  # smooth L1 instead of MSE reconstruction loss
    emb_dim: int = 512  # codebook vector size (DiscreteVAE's codebook_dim)
    hidden_dim: int = 256  # hidden channels
    kl_loss_weight: float = 0.0  # KL divergence loss weight
    straight_through: bool = False  # straight-through (hard) gumbel-softmax
    reinmax: bool = False  # ReinMax gradient estimator (hard samples)
    starting_temp: float = 1.0  # initial gumbel temperature
    temp_min: float = 0.5  # lowest temperature
    anneal_rate: float = 1e-6  # DALLE-pytorch's compounding annealing rate (schedules.AnnealedTemperature)
    num_images_save: int = 4  # images in each reconstruction grid; 0: no grids

    def __post_init__(self) -> None:
        if not self.image_folder:
            raise TrainingError("`image_folder` is empty: give the folder of training images")
        at_least(self, 1, "image_size", "num_tokens", "num_layers", "emb_dim", "hidden_dim")
        at_least(self, 0, "num_resnet_blocks", "num_images_save")

    def check_inputs(self) -> None:
        """The image folder exists (when the run starts, before its run folder is looked at)."""
        check_folder(self, "image_folder")


@dataclass
class DalleConfig:
    """A DALLE trained on captioned images (train_dalle.py), over a trained or a pretrained VAE."""

    image_text_folder: str = ""  # folder of images with same-named .txt captions; with wds: tar shards
    codes: Optional[str] = None  # train on pre-encoded codes (dalle-encode): its folder, or shards with codes_manifest
    codes_manifest: Optional[str] = None  # the manifest.json of codes streamed from shards (a pattern, URLs)
    wds: Optional[tuple[str, str]] = None  # read WebDataset shards: (image key, caption key), e.g. ("jpg", "txt")
    truncate_captions: bool = False  # cut captions longer than text_seq_len tokens (otherwise they are skipped)
    resize_ratio: float = 0.75  # smallest image area fraction kept by the random crop
    transparent: bool = False  # RGBA images (needs a 4-channel VAE)
    bpe_path: Optional[str] = None  # tokenizer file: tokenizers JSON, youtokentome model or CLIP BPE merges
    hug: bool = False  # bpe_path is a HuggingFace tokenizers JSON file
    chinese: bool = False  # Chinese captions: bpe_path is bert-base-chinese's vocab.txt
    vae_path: Optional[str] = None  # a trained DiscreteVAE (ours or a DALLE-pytorch vae.pt) for a new DALLE
    dalle_path: Optional[str] = None  # a DALLE to start from (DALLE-pytorch's dalle.pt, or one of ours)
    taming: bool = False  # without vae_path: taming-transformers' VQGAN (else OpenAI's dVAE)
    vqgan_model_path: Optional[str] = None  # the VQGAN weights (a taming / Lightning .ckpt); implies taming
    vqgan_config_path: Optional[str] = None  # the VQGAN config (a taming .yaml); implies taming
    openai_encoder_path: Optional[str] = None  # OpenAI's dVAE encoder.pkl (default ~/.cache/dalle)
    openai_decoder_path: Optional[str] = None  # OpenAI's dVAE decoder.pkl (default ~/.cache/dalle)
    dim: int = 512  # model dimension
    text_seq_len: int = 256  # caption length in tokens
    depth: int = 2  # transformer layers
    heads: int = 8  # attention heads
    dim_head: int = 64  # attention head dimension
    reversible: bool = False  # reversible layers (less activation memory)
    loss_img_weight: int = 7  # image loss weight
    attn_types: tuple[str, ...] = ("full",)  # cycled over the layers: full, axial_row, axial_col, conv_like, sparse
    shift_tokens: bool = False  # token shift
    rotary_emb: bool = False  # rotary position embeddings (else learned text and axial image positions)
    shared_attn_ids: Optional[tuple] = None  # attention id per layer (layers with one id share weights)
    shared_ff_ids: Optional[tuple] = None  # feed-forward id per layer (layers with one id share weights)
    share_input_output_emb: bool = False  # tie the token embeddings to the output layer
    stable: bool = False  # numerically stable attention softmax / embedding gradient scaling
    sandwich_norm: bool = False  # extra LayerNorm after each branch
    attn_kernel: str = "auto"  # sparse patterns: auto (the faster measured kernel), pattern or masked
    ff_dropout: float = 0.0  # feed-forward dropout
    attn_dropout: float = 0.0  # attention dropout
    null_cond_prob: float = 0.0  # probability of dropping a caption (for classifier-free guidance)
    sample_caption: Optional[str] = None  # caption of the sample grids (None: the dataset's first caption)
    num_sample_images: int = 4  # images in each sample grid; 0: no samples
    sample_filter_thres: float = 0.9  # top-k filter of the samples over the whole vocabulary (DALLE-pytorch's)

    def __post_init__(self) -> None:
        if self.codes and self.image_text_folder:
            raise TrainingError("`codes` trains on pre-encoded codes and `image_text_folder` on images: give only one")
        if not self.image_text_folder and not self.codes:
            raise TrainingError("`image_text_folder` is empty: give the folder of captioned images (or the shards), "
                                "or `codes`")
        if self.codes_manifest and not self.codes:
            raise TrainingError("`codes_manifest` is the manifest of `codes` shards: give `codes` too")
        if self.codes and self.wds is not None:
            raise TrainingError("`wds` reads images from shards; code shards are read by `codes` alone")
        image_data(self)
        if self.vae_path and self.dalle_path:
            raise TrainingError("`vae_path` builds a new DALLE and `dalle_path` starts from one: give only one")
        if self.vae_path and self.pretrained_vae_given:
            raise TrainingError("`vae_path` and `taming` / `vqgan_*` / `openai_*` ask for two different VAEs; "
                                "choose one")
        self.attn_types = tuple(self.attn_types)
        if not self.attn_types:
            raise TrainingError("`attn_types` is empty: give at least one attention type (e.g. full)")
        one_of(self, "attn_kernel", ATTN_KERNELS)
        at_least(self, 1, "dim", "text_seq_len", "depth", "heads", "dim_head")
        at_least(self, 0, "num_sample_images")
        fraction(self, "ff_dropout", "attn_dropout", "null_cond_prob")

    @property
    def pretrained_vae_given(self) -> bool:
        """Whether a pretrained VAE is asked for (taming, or a VQGAN / OpenAI dVAE file)."""
        return bool(self.taming) or any(getattr(self, name) is not None for name in (
            "vqgan_model_path", "vqgan_config_path", "openai_encoder_path", "openai_decoder_path"))

    def check_inputs(self) -> None:
        """The model files and the data folder exist (when the run starts, before its run folder is looked at)."""
        check_exists(self, "dalle_path")
        check_exists(self, "vae_path")
        check_exists(self, "codes_manifest")
        if self.codes and not self.codes_manifest:
            check_folder(self, "codes")
        elif not self.wds and not self.codes:
            check_folder(self, "image_text_folder")

    @property
    def codes_streamed(self) -> bool:
        """Codes read as a stream of shards (a pattern or URLs with `codes_manifest`), not from a local folder."""
        return bool(self.codes) and self.codes_manifest is not None
