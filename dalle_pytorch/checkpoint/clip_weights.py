"""The files of a pretrained OpenCLIP / OpenAI CLIP: its model config and its weights, read safely.

`load_open_clip(model, weights_path)` is what `generate.py --clip_model MODEL --clip_path FILE` and
`Pipeline.from_checkpoint(clip_model=..., clip_path=...)` use: an `rerank.OpenCLIPReranker` whose
every parameter comes from the file.

- The model: an open_clip model name (its bundled config), or a JSON file: a model config as in
  open_clip's model_configs/*.json, or a hub-style open_clip_config.json whose `preprocess_cfg`
  (mean, std, interpolation, resize mode) then sets the preprocessing.
- The weights: safetensors, or a torch pickle read with weights_only=True (never unpickling code;
  a TorchScript archive, OpenAI's original release format, is refused rather than run). open_clip's
  training checkpoints ({'state_dict': ...}) and DDP 'module.' names are accepted. Loading is strict:
  a file of another architecture is reported with what differs, and nothing is interpolated.
- Nothing is downloaded: a missing file is an error naming it and where such weights come from.
"""
from __future__ import annotations

import json
import os
import zipfile
from typing import Union

import torch
from torch import Tensor, nn

from dalle_pytorch.errors import CheckpointError, setting
from dalle_pytorch.formats.files import PathLike, read_bytes, regular_file
from dalle_pytorch.formats.pt_files import torch_load
from dalle_pytorch.models.rerank import OpenCLIPReranker, builtin_config, check_no_hub, import_open_clip

__all__ = ["WEIGHTS_HINT", "load_open_clip", "open_clip_config", "read_state_dict"]


#: where OpenCLIP weights come from, for the error about a missing file (nothing is downloaded)
WEIGHTS_HINT = ("OpenCLIP weights are files such as open_clip_pytorch_model.bin or open_clip_model.safetensors, "
                "downloaded by hand from the model's page on the Hugging Face hub (e.g. "
                f"laion/CLIP-ViT-B-32-laion2B-s34B-b79K for {setting('clip_model')} ViT-B-32, or "
                f"timm/vit_base_patch32_clip_224.openai for OpenAI's CLIP with {setting('clip_model')} ViT-B-32-quickgelu); "
                "this package never downloads them")
MAX_CONFIG_BYTES = 1 << 20  # a model config JSON is a few hundred bytes


def load_open_clip(model: str, weights_path: PathLike, device: Union[str, torch.device] = "cpu") -> OpenCLIPReranker:
    """`model`: an open_clip model name or config JSON (see `open_clip_config`); `weights_path`: its weights.

    Raises FileNotFoundError (naming the file and where such weights come from), CheckpointError
    (unreadable, unsafe, or weights of another architecture), ValueError (a bad model, or one that
    needs a download) or ImportError (open_clip is missing).
    """
    _weights_file(weights_path)  # a missing file is reported first, open_clip or not
    open_clip = import_open_clip()
    name, cfg, preprocess_cfg = open_clip_config(model)
    reranker = OpenCLIPReranker.build(open_clip, name, cfg, preprocess_cfg)
    net = reranker.model
    expected = {k: v.shape for k, v in net.state_dict().items()}
    state = _adapt(net, read_state_dict(weights_path), open_clip)
    _check_fit(os.fspath(weights_path), {k: v.shape for k, v in state.items()}, expected)
    net.load_state_dict(state, strict=True)  # every parameter from the file
    return reranker.to(device)


def open_clip_config(model: str) -> tuple[str, dict, dict]:
    """`--clip_model`: an open_clip model name (`open_clip.list_models()`), or a JSON file holding a model
    config (`{"embed_dim", "vision_cfg", "text_cfg", ...}`, as open_clip's model_configs/*.json) or a
    hub-style open_clip_config.json (`{"model_cfg": ..., "preprocess_cfg": ...}`).

    Returns (name, model config, preprocess overrides). Raises ValueError for an unknown name, a bad
    file, or a model whose tokenizer or text tower open_clip would download; ImportError without
    open_clip (only a name needs it here).
    """
    if model.startswith(("hf-hub:", "local-dir:")) or not (model.lower().endswith(".json") or os.path.sep in model
                                                           or os.path.isfile(model)):
        name = model
        cfg, preprocess = builtin_config(import_open_clip(), model), {}
    else:
        name = os.path.splitext(os.path.basename(model))[0]
        try:
            cfg = json.loads(read_bytes(model, f"{setting('clip_model')} config", MAX_CONFIG_BYTES).decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"{setting('clip_model')} {model!r} is not a JSON model config ({e})") from None
        except (OSError, ValueError) as e:
            raise ValueError(str(e)) from None
        preprocess = {}
        if isinstance(cfg, dict) and isinstance(cfg.get("model_cfg"), dict):  # a hub-style open_clip_config.json
            preprocess = cfg.get("preprocess_cfg") or {}
            cfg = cfg["model_cfg"]
        if not (isinstance(cfg, dict) and all(isinstance(cfg.get(k), dict) for k in ("vision_cfg", "text_cfg"))
                and "embed_dim" in cfg and isinstance(preprocess, dict)):
            raise ValueError(f"{setting('clip_model')} {model!r} is not an open_clip model config: it needs "
                             "'embed_dim', "
                             "'vision_cfg' and 'text_cfg' (as open_clip's model_configs/*.json), or 'model_cfg'")
    check_no_hub(cfg, name, model)
    return name, cfg, preprocess


def _weights_file(path: PathLike) -> str:
    """`path` as a str if it names a regular file; FileNotFoundError naming it and where OpenCLIP weights
    come from if it does not exist."""
    try:
        return os.fspath(regular_file(path, setting("clip_path")))
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{e}. {WEIGHTS_HINT}") from None


def _is_safetensors(path: str) -> bool:
    """A safetensors file starts with an 8-byte header length and the JSON header's '{'."""
    with open(path, "rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{"


def _is_torchscript(path: str) -> bool:
    """A TorchScript archive (OpenAI's original CLIP release) holds code/ and constants.pkl."""
    try:
        with zipfile.ZipFile(path) as z:
            return any(n.endswith("constants.pkl") or "/code/" in n for n in z.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


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


def _adapt(model: nn.Module, state: dict[str, Tensor], open_clip) -> dict[str, Tensor]:
    """The renamings open_clip.load_checkpoint applies that change no value: an old-format text tower for
    a custom-text model, and a 0-d vs 1-d logit scale / bias. (It also interpolates position embeddings
    of another size: that is another model here, reported by `_check_fit`.)"""
    if "positional_embedding" in state and not hasattr(model, "positional_embedding"):
        state = open_clip.model.convert_to_custom_text_state_dict(state)
    for key in ("logit_scale", "logit_bias"):
        param = getattr(model, key, None)
        if key in state and isinstance(param, Tensor) and state[key].numel() == param.numel():
            state[key] = state[key].reshape(param.shape)
    if "logit_bias" not in state and getattr(model, "logit_bias", None) is not None:
        state["logit_bias"] = torch.zeros_like(model.logit_bias)  # as open_clip (the cosine does not use it)
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
        raise CheckpointError(f"{path} does not fit this {setting('clip_model')}: {', '.join(p for p in parts if p)} "
                              f"parameters; is {setting('clip_model')} the architecture these weights were trained as?")
