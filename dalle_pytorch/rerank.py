"""Reranking generated images by how well they fit their caption, best first.

A reranker is anything with `score(captions, images, tokens) -> (n,)` (the `Reranker` protocol);
`Pipeline` sorts each caption's images by it. Two implementations:

- `CLIPReranker`: a CLIP trained by this package (`dalle_pytorch.CLIP`), fed the DALLE's own
  caption tokens; the score is its `forward` (cosine * exp(temperature)).
- `OpenCLIPReranker`: a pretrained OpenAI-CLIP / OpenCLIP model run by `open_clip` (the optional
  `[clip]` extra), built from an open_clip model name or a config JSON, with weights read from a
  local file by this package (safetensors, or a torch pickle with weights_only=True; strictly).
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
import json
import os
import zipfile
from dataclasses import asdict, dataclass
from importlib import util as importlib_util
from typing import Any, Optional, Protocol, Sequence, Union, runtime_checkable

import torch
from PIL import Image
from torch import Tensor, nn

from dalle_pytorch.clip import CLIP
from dalle_pytorch.errors import CheckpointError
from dalle_pytorch.images import tensor_to_pil
from dalle_pytorch.io.files import read_bytes, regular_file
from dalle_pytorch.io.pickles import torch_load

__all__ = ["CLIPReranker", "ImagePreprocess", "OpenCLIPReranker", "Reranker", "WEIGHTS_HINT", "as_reranker",
           "import_open_clip", "open_clip_config", "open_clip_model", "read_state_dict"]

PathLike = Union[str, "os.PathLike[str]"]

#: where OpenCLIP weights come from, for the error about a missing file (nothing is downloaded)
WEIGHTS_HINT = ("OpenCLIP weights are files such as open_clip_pytorch_model.bin or open_clip_model.safetensors, "
                "downloaded by hand from the model's page on the Hugging Face hub (e.g. "
                "laion/CLIP-ViT-B-32-laion2B-s34B-b79K for --clip_model ViT-B-32, or timm/vit_base_patch32_clip_224.openai "
                "for OpenAI's CLIP with --clip_model ViT-B-32-quickgelu); this package never downloads them")
#: open_clip's default text length (open_clip.tokenizer.DEFAULT_CONTEXT_LENGTH)
DEFAULT_CONTEXT_LENGTH = 77
#: open_clip's default normalisation (open_clip.OPENAI_DATASET_MEAN / _STD) and preprocessing (transform.PreprocessCfg)
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
MAX_CONFIG_BYTES = 1 << 20  # a model config JSON is a few hundred bytes


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
            f"a pretrained CLIP (--clip_model) needs open_clip, but {reason}: pip install 'dalle-pytorch[clip]' (or "
            "pip install open_clip_torch), with the torchvision release that matches your torch"
        ) from None
    return open_clip


def _hub_part(text_cfg: dict, name: str) -> Optional[str]:
    """Why open_clip would fetch something from a hub for this text config (None: it would not)."""
    if text_cfg.get("hf_tokenizer_name"):
        return f"its tokenizer ({text_cfg['hf_tokenizer_name']!r})"
    if text_cfg.get("hf_model_name"):
        return f"its text tower ({text_cfg['hf_model_name']!r})"
    if "siglip" in name.lower():  # open_clip.get_tokenizer picks a hub SigLipTokenizer by name
        return "its SigLIP tokenizer"
    return None


def open_clip_config(model: str) -> tuple[str, dict, dict]:
    """`--clip_model`: an open_clip model name (`open_clip.list_models()`), or a JSON file holding a model
    config (`{"embed_dim", "vision_cfg", "text_cfg", ...}`, as open_clip's model_configs/*.json) or a
    hub-style open_clip_config.json (`{"model_cfg": ..., "preprocess_cfg": ...}`).

    Returns (name, model config, preprocess overrides). Raises ValueError for an unknown name, a bad
    file, or a model whose tokenizer or text tower open_clip would download; ImportError without
    open_clip (only a name needs it here).
    """
    if model.startswith(("hf-hub:", "local-dir:")):
        raise ValueError(f"--clip_model {model!r}: open_clip's hub and folder schemas are not used (nothing is "
                         "downloaded); give a model name such as ViT-B-32, or the model's config JSON file")
    if model.lower().endswith(".json") or os.path.sep in model or os.path.isfile(model):
        name = os.path.splitext(os.path.basename(model))[0]
        try:
            cfg = json.loads(read_bytes(model, "--clip_model config", MAX_CONFIG_BYTES).decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"--clip_model {model!r} is not a JSON model config ({e})") from None
        except (OSError, ValueError) as e:
            raise ValueError(str(e)) from None
        preprocess = {}
        if isinstance(cfg, dict) and isinstance(cfg.get("model_cfg"), dict):  # a hub-style open_clip_config.json
            preprocess = cfg.get("preprocess_cfg") or {}
            cfg = cfg["model_cfg"]
        if not (isinstance(cfg, dict) and all(isinstance(cfg.get(k), dict) for k in ("vision_cfg", "text_cfg"))
                and "embed_dim" in cfg and isinstance(preprocess, dict)):
            raise ValueError(f"--clip_model {model!r} is not an open_clip model config: it needs 'embed_dim', "
                             "'vision_cfg' and 'text_cfg' (as open_clip's model_configs/*.json), or 'model_cfg'")
    else:
        open_clip = import_open_clip()
        cfg = open_clip.get_model_config(model)
        if cfg is None:
            close = difflib.get_close_matches(model, open_clip.list_models(), n=5, cutoff=0.6)
            raise ValueError(f"--clip_model {model!r} is not an open_clip model name"
                             + (f" (similar: {', '.join(close)})" if close else "")
                             + "; see open_clip.list_models(), or give a model config JSON file")
        name, preprocess = model, {}
    hub = _hub_part(cfg["text_cfg"], name)
    if hub is not None:
        raise ValueError(f"--clip_model {model!r}: open_clip would download {hub} from a hub, and nothing is "
                         "downloaded here; only models with open_clip's bundled CLIP tokenizer are supported")
    return name, cfg, preprocess


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


def _weights_file(path: PathLike) -> str:
    """`path` as a str if it names a regular file; FileNotFoundError naming it and where OpenCLIP weights
    come from if it does not exist."""
    try:
        return os.fspath(regular_file(path, "--clip_path"))
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{e}. {WEIGHTS_HINT}") from None


def _is_torchscript(path: str) -> bool:
    """A TorchScript archive (OpenAI's original CLIP release) holds code/ and constants.pkl."""
    try:
        with zipfile.ZipFile(path) as z:
            return any(n.endswith("constants.pkl") or "/code/" in n for n in z.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def _is_safetensors(path: str) -> bool:
    with open(path, "rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{"


def read_state_dict(path: PathLike) -> dict[str, Tensor]:
    """The tensors of an OpenCLIP weights file: safetensors, or a torch pickle read with weights_only=True
    (a training checkpoint's 'state_dict' is taken, a DDP 'module.' prefix dropped). Both formats hold
    their tensors' bytes, so what is allocated is bounded by the file's size.

    Raises FileNotFoundError (with `WEIGHTS_HINT`) for a missing file, CheckpointError for anything
    unreadable, unsafe or not a state dict.
    """
    p = _weights_file(path)
    if _is_safetensors(p):
        from safetensors.torch import load_file

        try:
            state = load_file(p)
        except Exception as e:  # SafetensorError and friends
            raise CheckpointError(f"{p}: cannot read this safetensors file ({e}); it is truncated or corrupted") from e
    else:
        if _is_torchscript(p):
            raise CheckpointError(f"{p} is a TorchScript archive (OpenAI's original CLIP release format), whose code "
                                  "this package does not run; use the same weights as a plain state dict ("
                                  "open_clip_pytorch_model.bin or open_clip_model.safetensors)")
        state = torch_load(p, map_location="cpu")
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):  # an open_clip training checkpoint
        state = state["state_dict"]
    if not (isinstance(state, dict) and state and all(isinstance(k, str) and isinstance(v, Tensor)
                                                      for k, v in state.items())):
        raise CheckpointError(f"{p} holds no state dict (a mapping of parameter names to tensors)")
    if all(k.startswith("module.") for k in state):  # saved from DistributedDataParallel
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def _check_fit(path: str, found: dict[str, torch.Size], expected: dict[str, torch.Size]) -> None:
    """CheckpointError unless the file's names and shapes are exactly the model's."""
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    wrong = [f"{k}: file {tuple(found[k])} vs model {tuple(expected[k])}" for k in expected
             if k in found and tuple(found[k]) != tuple(expected[k])]
    if missing or unexpected or wrong:
        parts = [f"{len(missing)} missing (e.g. {', '.join(missing[:3])})" if missing else "",
                 f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})" if unexpected else "",
                 f"{len(wrong)} of another shape (e.g. {'; '.join(wrong[:2])})" if wrong else ""]
        raise CheckpointError(f"{path} does not fit this --clip_model: {', '.join(p for p in parts if p)} "
                              "parameters; is --clip_model the architecture these weights were trained as?")


def _adapt(model: nn.Module, state: dict[str, Tensor], open_clip) -> dict[str, Tensor]:
    """The renamings open_clip.load_checkpoint applies that change no value: an old-format text tower for
    a custom-text model, and a 0-d vs 1-d logit scale / bias. (It also interpolates position embeddings
    of another size: that is a different model here, reported by `_check_fit`.)"""
    if "positional_embedding" in state and not hasattr(model, "positional_embedding"):
        state = open_clip.model.convert_to_custom_text_state_dict(state)
    for key in ("logit_scale", "logit_bias"):
        param = getattr(model, key, None)
        if key in state and isinstance(param, Tensor) and state[key].numel() == param.numel():
            state[key] = state[key].reshape(param.shape)
    if "logit_bias" not in state and getattr(model, "logit_bias", None) is not None:
        state["logit_bias"] = torch.zeros_like(model.logit_bias)  # as open_clip (unused by the cosine)
    return state


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

    Build it with `from_files(model, weights_path)`; the captions are tokenized with open_clip's
    bundled CLIP tokenizer (the DALLE's tokens are not used).
    """

    def __init__(self, model: nn.Module, tokenizer: Any, preprocess: ImagePreprocess, name: str) -> None:
        super().__init__()
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.preprocess = preprocess
        self.name = name

    @classmethod
    def from_files(cls, model: str, weights_path: PathLike, device: Union[str, torch.device] = "cpu"
                   ) -> "OpenCLIPReranker":
        """`model`: an open_clip model name or config JSON (see `open_clip_config`); `weights_path`: its weights.

        Raises FileNotFoundError (naming the file and where such weights come from), CheckpointError
        (unreadable, unsafe, or weights of another architecture), ValueError (a bad or hub-only
        model) or ImportError (open_clip is missing).
        """
        _weights_file(weights_path)  # a missing file is reported first, open_clip or not
        open_clip = import_open_clip()
        name, cfg, preprocess_cfg = open_clip_config(model)
        net = open_clip_model(open_clip, cfg)
        text_cfg = cfg["text_cfg"]
        try:  # what open_clip.get_tokenizer gives a model without a hub tokenizer
            tokenizer = open_clip.SimpleTokenizer(context_length=text_cfg.get("context_length", DEFAULT_CONTEXT_LENGTH),
                                                  **text_cfg.get("tokenizer_kwargs", {}))
        except TypeError as e:
            raise ValueError(f"--clip_model {model!r}: bad tokenizer_kwargs ({e})") from None
        vocab = getattr(net, "vocab_size", None)
        if vocab is not None and vocab < tokenizer.vocab_size:  # open_clip's CLIP tokenizer needs its whole vocabulary
            raise ValueError(f"--clip_model {model!r}: a text vocabulary of {vocab} tokens is smaller than "
                             f"open_clip's CLIP tokenizer's {tokenizer.vocab_size}")
        preprocess = ImagePreprocess.from_config(getattr(net.visual, "image_size", cfg["vision_cfg"].get("image_size")),
                                                 preprocess_cfg)
        # the weights, last: every parameter from the file, names and shapes exactly the model's
        expected = {k: v.shape for k, v in net.state_dict().items()}
        state = _adapt(net, read_state_dict(weights_path), open_clip)
        _check_fit(os.fspath(weights_path), {k: v.shape for k, v in state.items()}, expected)
        net.load_state_dict(state, strict=True)
        return cls(net.to(device), tokenizer, preprocess, name)

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


