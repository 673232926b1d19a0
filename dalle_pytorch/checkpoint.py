"""Checkpoints: save and load models as one safetensors file; read DALLE-pytorch files; training state.

Our format (`save` / `load_checkpoint`): ONE `.safetensors` file holding the model's state dict
(a DALLE's includes its VAE under `vae.*`) and string metadata:

    format          "dalle_pytorch"
    format_version  "1"
    kind            "dalle" | "vae" | "clip"
    package_version dalle_pytorch.__version__ of the writer
    config          JSON of DALLE.config, DiscreteVAE.config or CLIP.config
    vae_config      JSON of the VAE's config (not for CLIP)
    vae_class       "DiscreteVAE" (not for CLIP)
    tokenizer       JSON of tokenizer.describe() (absent when no tokenizer was given)
    metadata        JSON of the caller's dict (step, epoch, ...)

Nothing is pickled, so loading runs no code from the file.  Writes are atomic (temporary file in
the same folder, fsync, os.replace): a crash or error mid-write leaves the previous file intact.

`load_checkpoint` also reads the `.pt` files of DALLE-pytorch's `train_dalle.py` / `train_vae.py`
(with `torch.load(weights_only=True)`, never running code from the file) and remaps their
parameter names (see legacy.py).  Every load is strict: the weights must fit the model built from
the stored config exactly, or a CheckpointError names the offending keys and the likely cause.

Training state (`save_training_state` / `load_training_state`): optimizer, scheduler, scaler and
RNG states, step counters and data positions, in a torch file that holds only tensors, Python
primitives and containers, so that it loads with `weights_only=True`.
"""
from __future__ import annotations

import inspect
import io
import json
import os
import pickle
import pickletools
import re
import warnings
import zipfile
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Optional, Union

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from dalle_pytorch.clip import CLIP
from dalle_pytorch.dalle import DALLE
from dalle_pytorch.fileio import atomic_write as _atomic_write
from dalle_pytorch.fileio import atomic_write_bytes
from dalle_pytorch.legacy import (
    CheckpointError,
    check_rotary_table,
    dalle_config_from_hparams,
    layout_hparams,
    remap_state_dict,
)
from dalle_pytorch.tokenizer import tokenizer_from_description
from dalle_pytorch.vae import DiscreteVAE
from dalle_pytorch.version import __version__

__all__ = [
    "CheckpointError",
    "LoadedCheckpoint",
    "save",
    "load",
    "load_checkpoint",
    "save_training_state",
    "load_training_state",
    "atomic_write_bytes",
    "FORMAT",
    "FORMAT_VERSION",
    "OVERRIDABLE",
]

PathLike = Union[str, os.PathLike]

FORMAT = "dalle_pytorch"
FORMAT_VERSION = "1"
SOURCE_OURS = "dalle_pytorch"
SOURCE_LEGACY = "dalle-pytorch-legacy"

#: DALLE config keys `load_checkpoint(**overrides)` may change: none of them changes the parameters.
OVERRIDABLE = frozenset({"optimize_for_inference", "attn_kernel", "attn_dropout", "ff_dropout"})

_UNSUPPORTED_VAES = {
    "OpenAIDiscreteVAE": "OpenAI's pretrained dVAE",
    "VQGanVAE": "the taming-transformers VQGAN",
}
_VAE_ARGS = frozenset(p for p in inspect.signature(DiscreteVAE.__init__).parameters if p != "self")
_FEW = 5  # how many key names an error message lists




# ------------------------------------------------------------------------------------------------
# save
# ------------------------------------------------------------------------------------------------


def _unwrap(model: nn.Module) -> nn.Module:
    """The module itself under torch.compile / DistributedDataParallel / DataParallel wrappers."""
    for _ in range(4):
        if hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        elif isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        else:
            break
    return model


def _to_json(obj: Any, what: str) -> str:
    try:
        return json.dumps(obj)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{what} must be JSON-serialisable: {e}") from e


def _describe_tokenizer(tokenizer: Any) -> dict:
    if isinstance(tokenizer, dict):
        description = tokenizer
    elif callable(getattr(tokenizer, "describe", None)):
        description = tokenizer.describe()
    else:
        raise TypeError(f"tokenizer must have a describe() method (or be its description dict), got {type(tokenizer).__name__}")
    if not isinstance(description, dict) or "type" not in description:
        raise ValueError(f"a tokenizer description must be a dict with a 'type' key, got {description!r}")
    return description


def _state_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """model.state_dict() as contiguous CPU tensors that share no storage (as safetensors requires)."""
    out: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for key, value in model.state_dict().items():
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"state dict entry '{key}' is a {type(value).__name__}, not a tensor")
        t = value.detach()
        if t.device.type != "cpu":
            t = t.cpu()
        t = t.contiguous()
        if t.numel():
            ptr = t.untyped_storage().data_ptr()
            if ptr in seen:
                t = t.clone()
                ptr = t.untyped_storage().data_ptr()
            seen.add(ptr)
        out[key] = t
    return out


def _check_finite(tensors: dict[str, torch.Tensor]) -> None:
    for key, t in tensors.items():
        if t.is_floating_point() or t.is_complex():
            finite = torch.isfinite(t)
            if not bool(finite.all()):
                bad = int((~finite).sum())
                raise ValueError(
                    f"refusing to save: tensor '{key}' has {bad} non-finite value(s) (NaN or inf) out of "
                    f"{t.numel()}; the run has probably diverged. Nothing was written, so an earlier "
                    "checkpoint at this path is intact."
                )


def save(model: nn.Module, path: PathLike, *, tokenizer: Any = None, metadata: Optional[dict] = None) -> None:
    """Save a DALLE or a DiscreteVAE (with its config, tokenizer and `metadata`) as one safetensors file.

    Args:
        model: a DALLE (its VAE is saved with it, under `vae.*`) or a DiscreteVAE.
        path: the file to write (conventionally `*.safetensors`); replaced atomically.
        tokenizer: the tokenizer the model was trained with (anything with `describe()`), stored so
            that `load_checkpoint` can rebuild it.
        metadata: extra JSON-serialisable information (step, epoch, loss, ...), returned as
            `LoadedCheckpoint.metadata`.
    Raises:
        TypeError: not a DALLE / DiscreteVAE, or a DALLE whose VAE is not a DiscreteVAE.
        ValueError: non-finite weights (NaN / inf), or metadata / tokenizer that is not JSON-serialisable.
    """
    model = _unwrap(model)
    if isinstance(model, DALLE):
        kind, vae, config = "dalle", model.vae, model.config
    elif isinstance(model, DiscreteVAE):
        kind, vae, config = "vae", model, model.config
    elif isinstance(model, CLIP):
        kind, vae, config = "clip", None, model.config
    else:
        raise TypeError(f"save() takes a DALLE, a DiscreteVAE or a CLIP, got {type(model).__name__}")
    if kind != "clip" and not isinstance(vae, DiscreteVAE):
        raise TypeError(f"only DALLE models over a DiscreteVAE can be saved, this one uses a {type(vae).__name__}")
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict):
        raise TypeError(f"metadata must be a dict, got {type(metadata).__name__}")
    header = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "kind": kind,
        "package_version": __version__,
        "config": _to_json(config, "the model config"),
        "metadata": _to_json(metadata, "metadata"),
    }
    if vae is not None:
        header["vae_config"] = _to_json(vae.config, "the VAE config")
        header["vae_class"] = "DiscreteVAE"
    if tokenizer is not None:
        header["tokenizer"] = _to_json(_describe_tokenizer(tokenizer), "the tokenizer description")
    tensors = _state_tensors(model)
    _check_finite(tensors)
    _atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=header))


# ------------------------------------------------------------------------------------------------
# load
# ------------------------------------------------------------------------------------------------


@dataclass
class LoadedCheckpoint:
    """What `load_checkpoint` read.

    Attributes:
        model: the DALLE or DiscreteVAE, in eval mode, on the requested device.
        tokenizer: the stored tokenizer, rebuilt (None when the file has none).
        metadata: ours: the dict given to `save(metadata=...)`; DALLE-pytorch files: version, epoch,
            vae_class_name.
        source: "dalle_pytorch" (our safetensors format) or "dalle-pytorch-legacy" (a DALLE-pytorch `.pt`).
        kind: "dalle" or "vae".
        config: the config the model was built from (DALLE kwargs without vae, or DiscreteVAE kwargs).
        path: the file read.
        package_version: the dalle_pytorch version that wrote the file (None for DALLE-pytorch files).
        tokenizer_description: the stored tokenizer description (kept even if it could not be rebuilt).
    """

    model: nn.Module
    tokenizer: Any
    metadata: dict
    source: str
    kind: str
    config: dict = field(default_factory=dict)
    path: str = ""
    package_version: Optional[str] = None
    tokenizer_description: Optional[dict] = None


def _few(names: list[str]) -> str:
    shown = ", ".join(names[:_FEW])
    return shown + (f", ... ({len(names) - _FEW} more)" if len(names) > _FEW else "")


def _likely_causes(missing: list[str], unexpected: list[str], mismatched: list[str]) -> list[str]:
    """Guess, from the names of the keys that do not fit, which setting differs."""
    absent_or_extra = missing + unexpected
    every = absent_or_extra + mismatched
    causes = []
    if any(k.startswith("vae.") for k in every):
        causes.append("a different VAE (its config, or the VAE passed as vae_path, is not the one this model "
                      "was trained with)")
    if any(k.startswith(("text_pos_emb.", "image_pos_emb.")) for k in absent_or_extra):
        causes.append("a different rotary_emb setting (learned text/image positions exist only with rotary_emb=False)")
    if any(k.startswith(("text_emb.", "image_emb.")) for k in absent_or_extra):
        causes.append("a different share_input_output_emb setting (with it, the embeddings are rows of to_logits.1)")
    if any(re.match(r"transformer\.(attns|ffs|layers)\.\d+\.", k) for k in absent_or_extra):
        causes.append("a different depth, or different shared_attn_ids / shared_ff_ids")
    if any(".norm_out." in k for k in absent_or_extra):
        causes.append("a different sandwich_norm setting")
    if any(k.endswith("random_blocks") for k in absent_or_extra):
        causes.append("different attn_types ('sparse' layers store their random blocks)")
    if any(re.match(r"transformer\.layers\.(layers|blocks)\.", k) for k in unexpected):
        causes.append("a DALLE-pytorch layer this package does not read (e.g. 'sparse' or 'mlp' layers), or a "
                      "shift_tokens / version that does not match the key layout")
    if any(k.startswith(("transformer.", "to_logits.0.")) for k in mismatched):
        causes.append("a different dim / heads / dim_head / ff_mult")
    if any(k.startswith(("to_logits.1.", "text_emb.", "image_emb.", "text_pos_emb.", "image_pos_emb."))
           for k in mismatched):
        causes.append("a different num_text_tokens / text_seq_len, or a VAE with another num_tokens / image size")
    if not causes:
        causes.append("the weights were written by a model with another configuration")
    return causes


def _check_state(path: str, model: nn.Module, shapes: dict[str, tuple], what: str = "the model") -> None:
    """Strict check: every key of model.state_dict() present with the same shape, nothing extra."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = [k for k in expected if k not in shapes]
    unexpected = [k for k in shapes if k not in expected]
    mismatched = [k for k in expected if k in shapes and tuple(shapes[k]) != expected[k]]
    if not (missing or unexpected or mismatched):
        return
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing: {_few(missing)}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected: {_few(unexpected)}")
    if mismatched:
        shown = [f"{k} {tuple(shapes[k])} in the file vs {expected[k]} expected" for k in mismatched[:_FEW]]
        more = f", ... ({len(mismatched) - _FEW} more)" if len(mismatched) > _FEW else ""
        parts.append(f"{len(mismatched)} with other shapes: " + ", ".join(shown) + more)
    causes = _likely_causes(missing, unexpected, mismatched)
    raise CheckpointError(
        f"{path}: the weights do not fit {what} built from the checkpoint's config ({'; '.join(parts)}). "
        f"Likely cause: {'; or '.join(causes)}. Nothing was loaded (loading is always strict)."
    )


def _apply_overrides(config: dict, overrides: dict, kind: str) -> dict:
    if not overrides:
        return dict(config)
    if kind != "dalle":
        raise ValueError(f"overrides ({sorted(overrides)}) apply to DALLE checkpoints; this is a VAE checkpoint")
    bad = sorted(set(overrides) - OVERRIDABLE)
    if bad:
        raise ValueError(f"cannot override {bad} when loading: only {sorted(OVERRIDABLE)} can change without "
                         "changing the parameters; build the model yourself to change anything else")
    return {**config, **overrides}


def _build_vae(params: Any, path: str) -> DiscreteVAE:
    if not isinstance(params, dict):
        raise CheckpointError(f"{path}: the VAE parameters must be a dict, got {type(params).__name__}")
    unknown = sorted(set(params) - _VAE_ARGS)
    if unknown:
        raise CheckpointError(f"{path}: VAE parameters {unknown} are not DiscreteVAE arguments")
    try:
        return DiscreteVAE(**params)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: cannot build a DiscreteVAE from the stored parameters: {e}") from e


def _build_dalle(config: dict, vae: DiscreteVAE, path: str) -> DALLE:
    try:
        return DALLE(vae=vae, **config)
    except TypeError as e:
        raise CheckpointError(f"{path}: the stored DALLE config is not understood by dalle_pytorch {__version__} "
                              f"({e}); was it written by a newer version?") from e
    except ValueError as e:
        raise CheckpointError(f"{path}: cannot build a DALLE from the stored config: {e}") from e


def _external_vae(vae_path: PathLike) -> DiscreteVAE:
    loaded = load_checkpoint(vae_path)
    vae = loaded.model.vae if loaded.kind == "dalle" else loaded.model
    return vae


def _swap_vae(state: dict, vae: DiscreteVAE, path: str, vae_path: PathLike) -> dict:
    """Put `vae`'s weights under `vae.*`; a VAE the file carries itself must be the same one."""
    own = {k[len("vae."):]: v for k, v in state.items() if k.startswith("vae.")}
    theirs = vae.state_dict()
    if own:
        same = own.keys() == theirs.keys() and all(
            own[k].shape == theirs[k].shape and torch.equal(own[k].to(theirs[k].dtype), theirs[k].cpu())
            for k in own
        )
        if not same:
            raise CheckpointError(f"{path} carries its own VAE, which differs from the one in {os.fspath(vae_path)}; "
                                  "leave out vae_path to use the checkpoint's own VAE, or pick the VAE this model "
                                  "was trained with")
    out = {k: v for k, v in state.items() if not k.startswith("vae.")}
    out.update({f"vae.{k}": v for k, v in theirs.items()})
    return out


def _finish(model: nn.Module, state: dict, path: str, map_location: Any) -> nn.Module:
    """Strict-load `state` (already checked), keep a single stored floating dtype, move, eval()."""
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:  # pragma: no cover - _check_state ran first
        raise CheckpointError(f"{path}: {e}") from e
    dtypes = {v.dtype for v in state.values() if v.is_floating_point()}
    if len(dtypes) == 1:
        (dtype,) = dtypes
        if dtype != torch.float32:
            model.to(dtype)
    if map_location is not None:
        model.to(torch.device(map_location))
    return model.eval()


def _json_field(meta: dict, key: str, path: str, required: bool = True) -> Any:
    if key not in meta:
        if required:
            raise CheckpointError(f"{path}: the checkpoint metadata has no '{key}' entry; the file is damaged")
        return None
    try:
        return json.loads(meta[key])
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: the checkpoint metadata '{key}' is not valid JSON ({e})") from e


def _is_safetensors(path: str) -> bool:
    """A safetensors file starts with an 8-byte header length and the JSON header's '{'."""
    with open(path, "rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{"


def _load_ours(path: str, map_location: Any, vae_path: Optional[PathLike], overrides: dict) -> LoadedCheckpoint:
    try:
        with safe_open(path, framework="pt") as f:
            meta = f.metadata() or {}
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception as e:  # SafetensorError and friends
        raise CheckpointError(f"{path}: cannot read this safetensors file ({e}); it is truncated or corrupted") from e
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path} is a safetensors file but not a dalle_pytorch checkpoint (its metadata has no "
                              f"'format': '{FORMAT}'); for bare weights, build the model yourself and use "
                              "safetensors.torch.load_file + load_state_dict")
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(f"{path}: unknown checkpoint format_version {version!r} (written by dalle_pytorch "
                              f"{meta.get('package_version', '?')}); this is dalle_pytorch {__version__}, which reads "
                              f"format_version {FORMAT_VERSION!r}: upgrade dalle_pytorch")
    kind = meta.get("kind")
    if kind not in ("dalle", "vae", "clip"):
        raise CheckpointError(f"{path}: unknown checkpoint kind {kind!r} (expected 'dalle', 'vae' or 'clip')")
    vae_class = meta.get("vae_class")
    if kind != "clip" and vae_class != "DiscreteVAE":
        raise CheckpointError(f"{path}: VAE class {vae_class!r} is not supported; only DiscreteVAE models can be loaded")
    config = _json_field(meta, "config", path)
    vae_config = _json_field(meta, "vae_config", path) if kind != "clip" else {}
    user_meta = _json_field(meta, "metadata", path, required=False) or {}
    description = _json_field(meta, "tokenizer", path, required=False)
    if not isinstance(config, dict) or not isinstance(vae_config, dict):
        raise CheckpointError(f"{path}: the checkpoint metadata 'config' / 'vae_config' must be JSON objects")
    config = _apply_overrides(config, overrides, kind)

    if kind == "clip":
        if vae_path is not None:
            raise ValueError("vae_path is for DALLE checkpoints; this is a CLIP checkpoint")
        try:
            model = CLIP(**config)
        except (TypeError, ValueError) as e:
            raise CheckpointError(f"{path}: cannot build a CLIP from the stored config ({e})") from e
        _check_state(path, model, shapes, "the CLIP")
        state = load_file(path, device="cpu")
    elif kind == "vae":
        if vae_path is not None:
            raise ValueError("vae_path is for DALLE checkpoints; this is a VAE checkpoint")
        model: nn.Module = _build_vae(config, path)
        _check_state(path, model, shapes, "the DiscreteVAE")
        state = load_file(path, device="cpu")
    else:
        vae = _external_vae(vae_path) if vae_path is not None else _build_vae(vae_config, path)
        model = _build_dalle(config, vae, path)
        if vae_path is not None:
            expected_vae = {k: tuple(v.shape) for k, v in model.state_dict().items() if k.startswith("vae.")}
            shapes = {**{k: s for k, s in shapes.items() if not k.startswith("vae.")}, **expected_vae}
        _check_state(path, model, shapes, "the DALLE")
        state = load_file(path, device="cpu")
        if vae_path is not None:
            state = _swap_vae(state, vae, path, vae_path)
        config = model.config
    model = _finish(model, state, path, map_location)
    tokenizer = None
    if description is not None:
        try:
            tokenizer = tokenizer_from_description(description)
        except Exception as e:  # e.g. a SimpleTokenizer whose BPE file is not on this machine
            warnings.warn(f"{path}: could not rebuild the stored tokenizer ({e}); LoadedCheckpoint.tokenizer is None "
                          "and tokenizer_description holds what was stored", stacklevel=3)
    return LoadedCheckpoint(model=model, tokenizer=tokenizer, metadata=user_meta, source=SOURCE_OURS, kind=kind,
                            config=dict(config), path=path, package_version=meta.get("package_version"),
                            tokenizer_description=description)


# -- DALLE-pytorch files --------------------------------------------------------------------------

_SAFE_GLOBAL_PREFIXES = ("torch.", "collections.OrderedDict", "_codecs.encode", "builtins.")


def _pickle_globals(path: str) -> list[str]:
    """Names a pickle imports (GLOBAL / STACK_GLOBAL), found by parsing its opcodes without running them."""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as z:
                names = [n for n in z.namelist() if n.endswith("data.pkl")]
                if not names:
                    return []
                data = z.read(names[0])
        else:
            with open(path, "rb") as f:
                data = f.read(64 << 20)
        found, strings = [], []
        for op, arg, _ in pickletools.genops(io.BytesIO(data)):
            if op.name in ("GLOBAL", "INST") and isinstance(arg, str):
                found.append(arg.replace(" ", "."))
            elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                found.append(f"{strings[-2]}.{strings[-1]}")
            if isinstance(arg, str):
                strings.append(arg)
        return found
    except Exception:  # not a pickle, or damaged: nothing to report
        return []


def _reason(e: BaseException) -> str:
    """The informative line of a (long, boilerplate-laden) torch.load error."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    for ln in lines:
        if ln.startswith(("Unsupported", "Unpickler error", "Could not find", "Trying to")):
            return ln
    return lines[0] if lines else type(e).__name__


def _torch_load(path: str, map_location: Any = "cpu") -> Any:
    """torch.load(weights_only=True) with its failures turned into CheckpointErrors."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        unsafe = [g for g in _pickle_globals(path) if not g.startswith(_SAFE_GLOBAL_PREFIXES)]
        if unsafe:
            raise CheckpointError(
                f"{path}: refusing to unpickle arbitrary code: the file asks to import {_few(sorted(set(unsafe)))}, "
                "which plain tensors and containers never need. Nothing from it was executed. Only load it with "
                "torch.load(weights_only=False) if you trust its author, then re-save the weights as plain tensors."
            ) from None
        raise CheckpointError(
            f"{path}: not a readable checkpoint: torch.load(weights_only=True) could not read it (corrupted, not a "
            "torch/safetensors file, or a pickle that needs code to load, which this loader refuses to unpickle): "
            f"{_reason(e)}"
        ) from None
    except (FileNotFoundError, IsADirectoryError, PermissionError, MemoryError):
        raise
    except Exception as e:  # RuntimeError (bad zip), EOFError, SafetensorError (torch.load delegates *.safetensors), ...
        raise CheckpointError(f"{path}: cannot read this torch file; it is truncated or corrupted ({_reason(e)})") from e


def _legacy_weights(obj: dict, path: str) -> dict:
    weights = obj.get("weights")
    if isinstance(weights, str):
        raise CheckpointError(f"{path} is the auxiliary file of a DeepSpeed checkpoint: its weights live in the "
                              f"DeepSpeed folder ({weights!r}); consolidate them into a state dict first")
    if not isinstance(weights, dict) or not all(isinstance(v, torch.Tensor) for v in weights.values()):
        raise CheckpointError(f"{path}: 'weights' must be a state dict of tensors")
    return weights


def _load_legacy(path: str, map_location: Any, vae_path: Optional[PathLike], overrides: dict) -> LoadedCheckpoint:
    obj = _torch_load(path)
    if not isinstance(obj, dict) or "weights" not in obj or ("hparams" not in obj and "vae_params" not in obj):
        found = sorted(obj)[:10] if isinstance(obj, dict) else type(obj).__name__
        raise CheckpointError(f"{path}: not a DALLE-pytorch checkpoint (expected a dict with 'hparams' and 'weights' "
                              f"as written by train_dalle.py / train_vae.py; found {found})")
    hparams = obj.get("hparams")
    if not isinstance(hparams, dict):
        raise CheckpointError(f"{path}: 'hparams' must be a dict of constructor arguments")
    is_dalle = "vae_params" in obj or "vae_class_name" in obj or "num_text_tokens" in hparams
    meta = {"version": obj.get("version"), "epoch": obj.get("epoch"), "vae_class_name": obj.get("vae_class_name")}

    if not is_dalle:  # train_vae.py: {'hparams': vae_params, 'weights': vae.state_dict()}
        if vae_path is not None:
            raise ValueError("vae_path is for DALLE checkpoints; this is a VAE checkpoint")
        _apply_overrides({}, overrides, "vae")
        weights = _legacy_weights(obj, path)
        model: nn.Module = _build_vae(hparams, path)
        _check_state(path, model, {k: tuple(v.shape) for k, v in weights.items()}, "the DiscreteVAE")
        model = _finish(model, dict(weights), path, map_location)
        meta["vae_class_name"] = meta["vae_class_name"] or "DiscreteVAE"
        return LoadedCheckpoint(model=model, tokenizer=None, metadata=meta, source=SOURCE_LEGACY, kind="vae",
                                config=model.config, path=path)

    vae_class = obj.get("vae_class_name")
    if vae_class in _UNSUPPORTED_VAES:
        raise CheckpointError(
            f"{path} is a DALLE over {vae_class} ({_UNSUPPORTED_VAES[vae_class]}): these VAEs are not supported by "
            "this package (their weights are downloaded from the internet, which this package never does). Train "
            "or convert to a DiscreteVAE-based model instead."
        )
    if vae_class not in (None, "DiscreteVAE"):
        raise CheckpointError(f"{path}: VAE class {vae_class!r} is not supported; only DiscreteVAE models can be loaded")
    weights = _legacy_weights(obj, path)
    version = obj.get("version")
    config = dalle_config_from_hparams(layout_hparams(hparams, weights), version)
    config = _apply_overrides(config, overrides, "dalle")
    vae_params = obj.get("vae_params")
    if vae_path is not None:
        vae = _external_vae(vae_path)
    elif vae_params is None:
        raise CheckpointError(f"{path} has no VAE parameters (vae_params is None); pass vae_path= the DiscreteVAE "
                              "checkpoint this model was trained with")
    else:
        vae = _build_vae(vae_params, path)
    model = _build_dalle(config, vae, path)
    if "text_emb.linear.weight" in weights and not config.get("share_input_output_emb"):
        raise CheckpointError(f"{path}: the weights were written with share_input_output_emb=True "
                              "(text_emb.linear.*) but hparams do not say so")
    check_rotary_table(weights, model.transformer)
    state = remap_state_dict(weights, model.transformer)
    if vae_path is not None:
        state = _swap_vae(state, vae, path, vae_path)
    elif not any(k.startswith("vae.") for k in state):
        raise CheckpointError(f"{path} has no VAE weights (no vae.* keys); pass vae_path= the DiscreteVAE checkpoint "
                              "this model was trained with")
    _check_state(path, model, {k: tuple(v.shape) for k, v in state.items()}, "the DALLE")
    model = _finish(model, state, path, map_location)
    return LoadedCheckpoint(model=model, tokenizer=None, metadata=meta, source=SOURCE_LEGACY, kind="dalle",
                            config=model.config, path=path)


def load_checkpoint(path: PathLike, map_location: Any = None, *, vae_path: Optional[PathLike] = None,
                    **overrides: Any) -> LoadedCheckpoint:
    """Load a checkpoint: ours (`save`, safetensors) or DALLE-pytorch's (`train_dalle.py` / `train_vae.py` `.pt`).

    Args:
        path: the checkpoint file.
        map_location: device for the model (default CPU); str or torch.device.
        vae_path: a separate VAE checkpoint (ours, DALLE or VAE, or a DALLE-pytorch train_vae file)
            whose DiscreteVAE replaces the file's own (needed when a DALLE-pytorch file has no
            vae_params); if the file carries its own VAE weights they must be identical.
        overrides: DALLE config values to change before building: only optimize_for_inference,
            attn_dropout, ff_dropout (they change no parameters).
    Returns:
        LoadedCheckpoint(model (eval mode), tokenizer, metadata, source, kind, ...).
    Raises:
        CheckpointError (a ValueError): unreadable, truncated or foreign files, pickles that need
            code to load, unsupported VAEs or layers, weights that do not fit the config.
        ValueError: an override that would change the parameters.
        FileNotFoundError: no such file.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint {path!r} does not exist")
    if os.path.isdir(path):
        raise IsADirectoryError(f"checkpoint {path!r} is a directory (DeepSpeed checkpoint folders are not read; "
                                "consolidate them into a state dict first)")
    try:
        if _is_safetensors(path):
            return _load_ours(path, map_location, vae_path, overrides)
        return _load_legacy(path, map_location, vae_path, overrides)
    except CheckpointError as e:
        if path in str(e):
            raise
        raise CheckpointError(f"{path}: {e}") from e


def load(path: PathLike, map_location: Any = None, *, vae_path: Optional[PathLike] = None, **overrides: Any) -> nn.Module:
    """The model of `load_checkpoint(path, map_location, vae_path=vae_path, **overrides)`."""
    return load_checkpoint(path, map_location, vae_path=vae_path, **overrides).model


# ------------------------------------------------------------------------------------------------
# training state
# ------------------------------------------------------------------------------------------------

_PLAIN = (type(None), bool, int, float, complex, str, bytes)


def _check_plain(obj: Any, where: str) -> None:
    """Only what torch.load(weights_only=True) reads back: tensors, primitives, dict/list/tuple of them."""
    if isinstance(obj, torch.Tensor) or type(obj) in _PLAIN or isinstance(obj, (torch.Size, torch.dtype, torch.device)):
        return
    if type(obj) in (dict, OrderedDict):
        for k, v in obj.items():
            if type(k) not in _PLAIN:
                raise TypeError(f"training state key {where}[{k!r}] is a {type(k).__name__}; keys must be str/int/...")
            _check_plain(v, f"{where}[{k!r}]")
        return
    if type(obj) in (list, tuple):
        for i, v in enumerate(obj):
            _check_plain(v, f"{where}[{i}]")
        return
    raise TypeError(f"training state entry {where} is a {type(obj).__name__}; only tensors, numbers, strings, bytes, "
                    "None and dict/list/tuple of them can be stored (convert numpy arrays with torch.from_numpy, "
                    "RNG states to tensors, objects to their state_dict())")


def save_training_state(path: PathLike, state: dict) -> None:
    """Atomically save resumable training state with torch.save.

    state: a dict of tensors, Python primitives and dict/list/tuple containers: optimizer /
    scheduler / grad-scaler state_dicts, step, RNG states (as tensors), data position, ...
    Anything else (numpy arrays, arbitrary objects) raises TypeError before anything is written,
    so the file always loads with `load_training_state` (weights_only=True).
    """
    if not isinstance(state, dict):
        raise TypeError(f"training state must be a dict, got {type(state).__name__}")
    _check_plain(state, "state")
    _atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_training_state(path: PathLike, map_location: Any = None) -> dict:
    """Read a file written by `save_training_state` (torch.load with weights_only=True: no code runs)."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"training state {path!r} does not exist")
    state = _torch_load(path, map_location=map_location)
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: a training state file holds a dict, found a {type(state).__name__}")
    return state
