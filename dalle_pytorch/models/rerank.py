"""Reranking generated images by how well they fit their caption, best first.

A reranker is anything with `score(captions, images, tokens) -> (n,)` (the `Reranker` protocol);
`Pipeline` sorts each caption's images by it. Two implementations:

- `CLIPReranker`: a CLIP trained by this package (`dalle_pytorch.CLIP`), fed the DALLE's own
  caption tokens; the score is its `forward` (cosine * exp(temperature)).
- `OpenCLIPReranker`: a pretrained OpenAI-CLIP / OpenCLIP model run by `open_clip` (the optional
  `[clip]` extra), built from an open_clip model config; `io.clip_weights.load_open_clip` reads the
  config (a model name or a JSON file) and the weights from local files, safely and strictly.
  The score is open_clip's cosine similarity of the normalised image and text features (no logit
  scale), after open_clip's own preprocessing, re-implemented here with PIL and torch
  (`ImagePreprocess`) so that no torchvision is needed beyond what open_clip imports itself.

Nothing is ever downloaded: open_clip builds the architecture with random weights and the file
fills every one of them; a model whose tokenizer or text tower open_clip would fetch from a hub is
refused.
"""
from __future__ import annotations

import copy
import difflib
from dataclasses import asdict, dataclass
from importlib import util as importlib_util
from typing import Any, Optional, Protocol, Sequence, runtime_checkable

import torch
from PIL import Image
from torch import Tensor, nn

from dalle_pytorch.errors import setting
from dalle_pytorch.formats.images import tensor_to_pil
from dalle_pytorch.models.clip import CLIP

__all__ = ["CLIPReranker", "ImagePreprocess", "OpenCLIPReranker", "Reranker", "as_reranker", "builtin_config",
           "check_no_hub", "import_open_clip", "open_clip_model"]

#: open_clip's default text length (open_clip.tokenizer.DEFAULT_CONTEXT_LENGTH)
DEFAULT_CONTEXT_LENGTH = 77
#: open_clip's default normalisation (open_clip.OPENAI_DATASET_MEAN / _STD) and preprocessing (transform.PreprocessCfg)
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


@runtime_checkable
class Reranker(Protocol):
    """What `Pipeline` ranks images with."""

    def score(self, captions: Sequence[str], images: Tensor, tokens: Tensor) -> Tensor:
        """captions: n strings (one per image); images (n, c, H, W) in [0, 1]; tokens (n, T) the DALLE's
        ids of the same captions -> (n,) float32 scores on the CPU, higher is better."""
        ...

    def describe(self) -> dict:
        """What generation.json records about the reranker (JSON-serialisable)."""
        ...


# ------------------------------------------------------------------------------------------------
# our own CLIP
# ------------------------------------------------------------------------------------------------


class CLIPReranker(nn.Module):
    """A `dalle_pytorch.CLIP` behind the `Reranker` protocol: it reads the DALLE's caption tokens, so it
    must share the DALLE's tokenizer (and a `text_seq_len` at least the DALLE's)."""

    def __init__(self, clip: CLIP) -> None:
        super().__init__()
        if not isinstance(clip, CLIP):
            raise TypeError(f"CLIPReranker needs a dalle_pytorch CLIP, got {type(clip).__name__}")
        self.clip = clip.eval()

    @torch.inference_mode()
    def score(self, captions: Sequence[str], images: Tensor, tokens: Tensor) -> Tensor:
        param = next(self.clip.parameters())
        pixels = images.to(device=param.device, dtype=param.dtype)  # float32 pixels into a bf16 CLIP
        return self.clip(tokens.to(param.device).long(), pixels).float().cpu()

    def describe(self) -> dict:
        return {"kind": "dalle_pytorch", "score": "cosine * exp(temperature)", "config": self.clip.config}


def as_reranker(clip: Any) -> Optional[Reranker]:
    """None, a `dalle_pytorch.CLIP` (wrapped in `CLIPReranker`) or a `Reranker` -> a Reranker (or None)."""
    if clip is None or isinstance(clip, CLIPReranker):
        return clip
    if isinstance(clip, CLIP):
        return CLIPReranker(clip)
    if isinstance(clip, Reranker):
        return clip
    raise TypeError(f"clip must be a dalle_pytorch CLIP or have score(captions, images, tokens) and describe(), got "
                    f"{type(clip).__name__}")


# ------------------------------------------------------------------------------------------------
# open_clip: the import, the model config, the weights
# ------------------------------------------------------------------------------------------------


def import_open_clip():
    """The `open_clip` module, or ImportError in one line naming the `[clip]` extra."""
    try:
        import open_clip
    except Exception as e:  # ImportError; or a torchvision whose compiled part does not fit the installed torch
        lines = str(e).strip().splitlines() or [type(e).__name__]
        reason = "it is not installed" if isinstance(e, ImportError) else f"importing it failed ({lines[0]})"
        raise ImportError(
            f"a pretrained CLIP ({setting('clip_model')}) needs open_clip, but {reason}: pip install open_clip_torch "
            "(this "
            "package's clip extra), with the torchvision release built for your torch"
        ) from None
    return open_clip


def check_no_hub(cfg: dict, name: str, shown: str) -> None:
    """ValueError unless open_clip builds and tokenizes the model `cfg` (named `name`; `shown` as the user
    gave it) from what it bundles: a tokenizer or text tower from a hub, or a SigLIP tokenizer (which
    open_clip picks by name), would be downloaded."""
    text_cfg = cfg["text_cfg"]
    hub = (f"its tokenizer ({text_cfg['hf_tokenizer_name']!r})" if text_cfg.get("hf_tokenizer_name")
           else f"its text tower ({text_cfg['hf_model_name']!r})" if text_cfg.get("hf_model_name")
           else "its SigLIP tokenizer" if "siglip" in name.lower() else None)
    if hub is not None:
        raise ValueError(f"{setting('clip_model')} {shown!r}: open_clip would download {hub} from a hub, and nothing "
                         "is "
                         "downloaded here; only models with open_clip's bundled CLIP tokenizer are supported")


def builtin_config(open_clip, name: str) -> dict:
    """The model config open_clip ships for `name` (`open_clip.list_models()`); ValueError naming close ones."""
    if name.startswith(("hf-hub:", "local-dir:")):
        raise ValueError(f"{setting('clip_model')} {name!r}: open_clip's hub and folder schemas are not used "
                         "(nothing is "
                         "downloaded); give a model name such as ViT-B-32, or the model's config JSON file")
    cfg = open_clip.get_model_config(name)
    if cfg is None:
        close = difflib.get_close_matches(name, open_clip.list_models(), n=5, cutoff=0.6)
        raise ValueError(f"{setting('clip_model')} {name!r} is not an open_clip model name"
                         + (f" (similar: {', '.join(close)})" if close else "")
                         + "; see open_clip.list_models(), or give a model config JSON file")
    return cfg


def open_clip_model(open_clip, cfg: dict) -> nn.Module:
    """The model open_clip.create_model builds for `cfg` with no pretrained weights (random init), fp32, CPU."""
    cfg = copy.deepcopy(cfg)
    vision_cfg = cfg["vision_cfg"]
    if "timm_model_name" in vision_cfg:
        if importlib_util.find_spec("timm") is None:
            raise ImportError(f"this open_clip model's image tower is timm's {vision_cfg['timm_model_name']!r}: "
                              "pip install timm")
        vision_cfg["timm_model_pretrained"] = False  # never fetch timm's weights: the file has them all
    # create_model's choice of class: a custom text tower (or CoCa, with a multimodal decoder)
    custom_text = cfg.pop("custom_text", False)
    cls = (open_clip.CoCa if "multimodal_cfg" in cfg else open_clip.CustomTextCLIP) if custom_text else open_clip.CLIP
    try:
        return cls(**cfg, cast_dtype=None)
    except (TypeError, ValueError, KeyError, AssertionError) as e:
        raise ValueError(f"open_clip cannot build a model from this config ({type(e).__name__}: {e})") from None


# ------------------------------------------------------------------------------------------------
# preprocessing
# ------------------------------------------------------------------------------------------------

_INTERPOLATIONS = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR, "random": Image.BICUBIC}


@dataclass(frozen=True)
class ImagePreprocess:
    """open_clip's inference preprocessing (`open_clip.image_transform(size, is_train=False, ...)`), on
    the 8-bit PIL image `tensor_to_pil` makes of each generated image: resize (the shortest side to
    `size` for 'shortest', both sides for 'squash' / 'longest' on square images) with PIL's `interpolation`,
    centre crop to size x size, convert to RGB, scale to [0, 1], normalise with `mean` / `std`."""

    size: int
    mean: tuple[float, float, float] = OPENAI_MEAN
    std: tuple[float, float, float] = OPENAI_STD
    interpolation: str = "bicubic"  # 'random' means bicubic at inference, as in open_clip
    resize_mode: str = "shortest"

    def __post_init__(self) -> None:
        if self.interpolation not in _INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {', '.join(_INTERPOLATIONS)}, got {self.interpolation!r}")
        if self.resize_mode not in ("shortest", "longest", "squash"):
            raise ValueError(f"resize_mode must be shortest, longest or squash, got {self.resize_mode!r}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError(f"mean and std need 3 values (std > 0), got {self.mean} and {self.std}")

    @classmethod
    def from_config(cls, size: Any, overrides: Optional[dict] = None) -> "ImagePreprocess":
        """From a model's image size (int or (H, W)) and an open_clip preprocess_cfg (mean, std,
        interpolation, resize_mode; a single mean or std applies to every channel; None keeps the default)."""
        h, w = (size, size) if isinstance(size, int) else tuple(size)
        if h != w:
            raise ValueError(f"a CLIP with non-square input ({h}x{w}) is not supported")
        cfg = {k: v for k, v in (overrides or {}).items() if k in ("mean", "std", "interpolation", "resize_mode")
               and v is not None}
        for key in ("mean", "std"):
            if key in cfg:
                value = cfg[key] if isinstance(cfg[key], (list, tuple)) else [cfg[key]] * 3
                try:
                    cfg[key] = tuple(float(x) for x in value)
                except (TypeError, ValueError):
                    raise ValueError(f"preprocess {key} must be numbers, got {cfg[key]!r}") from None
        if overrides and overrides.get("mode", "RGB") != "RGB":
            raise ValueError(f"only RGB preprocessing is supported, got mode {overrides['mode']!r}")
        return cls(size=int(h), **cfg)

    def pil(self, im: Image.Image) -> Tensor:
        """One PIL image -> (3, size, size) float32, exactly as open_clip's preprocess."""
        s, (w, h) = self.size, im.size
        if self.resize_mode == "shortest":  # torchvision Resize(s): the shortest side to s, the other scaled down
            short, long = min(w, h), max(w, h)
            new = (s, int(s * long / short)) if w <= h else (int(s * long / short), s)
        elif w == h:  # squash, and longest on a square image: s x s
            new = (s, s)
        else:
            raise ValueError("resize_mode 'longest' is implemented for square images only")
        if new != (w, h):
            im = im.resize(new, _INTERPOLATIONS[self.interpolation])
        w, h = im.size
        if (w, h) != (s, s):  # torchvision CenterCrop: offsets rounded half to even
            left, top = int(round((w - s) / 2.0)), int(round((h - s) / 2.0))
            im = im.crop((left, top, left + s, top + s))
        im = im.convert("RGB")
        x = torch.frombuffer(bytearray(im.tobytes()), dtype=torch.uint8).view(s, s, 3).permute(2, 0, 1)
        x = x.float().div(255)
        mean = torch.tensor(self.mean, dtype=torch.float32).view(3, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32).view(3, 1, 1)
        return x.sub(mean).div(std)

    def __call__(self, images: Tensor) -> Tensor:
        """(n, c, H, W) in [0, 1] (c = 1, 3 or 4) -> (n, 3, size, size) float32 on the CPU."""
        if images.dim() != 4:
            raise ValueError(f"expected images (n, c, H, W), got shape {tuple(images.shape)}")
        if images.shape[0] == 0:
            return torch.zeros(0, 3, self.size, self.size)
        return torch.stack([self.pil(tensor_to_pil(im)) for im in images])


# ------------------------------------------------------------------------------------------------
# the open_clip reranker
# ------------------------------------------------------------------------------------------------


class OpenCLIPReranker(nn.Module):
    """A pretrained open_clip model as a `Reranker`: score = cosine similarity of the normalised image and
    text features (what `model.encode_image(x, normalize=True) @ model.encode_text(t, normalize=True).T`
    gives for each image with its own caption), in float32.

    Load one with `dalle_pytorch.checkpoint.clip_weights.load_open_clip(model, weights_path)`; the captions are
    tokenized with open_clip's bundled CLIP tokenizer (the DALLE's tokens are not used).
    """

    def __init__(self, model: nn.Module, tokenizer: Any, preprocess: ImagePreprocess, name: str) -> None:
        super().__init__()
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.preprocess = preprocess
        self.name = name

    @classmethod
    def build(cls, open_clip, name: str, cfg: dict, preprocess_cfg: Optional[dict] = None) -> "OpenCLIPReranker":
        """The reranker of the open_clip model config `cfg` with randomly initialised weights (fp32, CPU): its
        model, its tokenizer (the bundled CLIP tokenizer open_clip.get_tokenizer gives such a model) and its
        preprocessing (`preprocess_cfg` overrides open_clip's defaults). `io.clip_weights.load_open_clip`
        fills the weights from a file. ValueError for a config that cannot be run without a download."""
        check_no_hub(cfg, name, name)
        net = open_clip_model(open_clip, cfg)
        text_cfg = cfg["text_cfg"]
        try:
            tokenizer = open_clip.SimpleTokenizer(context_length=text_cfg.get("context_length", DEFAULT_CONTEXT_LENGTH),
                                                  **text_cfg.get("tokenizer_kwargs", {}))
        except TypeError as e:
            raise ValueError(f"{setting('clip_model')} {name!r}: bad tokenizer_kwargs ({e})") from None
        vocab = getattr(net, "vocab_size", None)
        if vocab is not None and vocab < tokenizer.vocab_size:  # open_clip's CLIP tokenizer needs its whole vocabulary
            raise ValueError(f"{setting('clip_model')} {name!r}: a text vocabulary of {vocab} tokens is smaller than "
                             f"open_clip's CLIP tokenizer's {tokenizer.vocab_size}")
        size = getattr(net.visual, "image_size", cfg["vision_cfg"].get("image_size"))
        return cls(net, tokenizer, ImagePreprocess.from_config(size, preprocess_cfg), name)

    @torch.inference_mode()
    def score(self, captions: Sequence[str], images: Tensor, tokens: Optional[Tensor] = None) -> Tensor:
        """captions: n strings; images (n, c, H, W) in [0, 1] -> (n,) cosine similarities (float32, CPU)."""
        captions = list(captions)
        if images.dim() != 4 or images.shape[0] != len(captions):
            raise ValueError(f"score needs one caption per image: {len(captions)} captions, images of shape "
                             f"{tuple(images.shape)}")
        if not captions:
            return torch.zeros(0)
        device = next(self.model.parameters()).device
        pixels = self.preprocess(images).to(device)
        text = self.tokenizer(captions).to(device)
        image_features = self.model.encode_image(pixels, normalize=True)
        text_features = self.model.encode_text(text, normalize=True)
        return (image_features * text_features).sum(dim=-1).float().cpu()

    def describe(self) -> dict:
        return {"kind": "open_clip", "model": self.name, "open_clip_version": import_open_clip().__version__,
                "score": "cosine similarity", "preprocess": asdict(self.preprocess)}


