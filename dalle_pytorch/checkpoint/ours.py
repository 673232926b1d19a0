"""Our checkpoint format: a model, its config, its VAE and its tokenizer in ONE safetensors file.

Our format (`save` / `load_checkpoint`): ONE `.safetensors` file holding the model's state dict
(a DALLE's includes its VAE under `vae.*`) and string metadata:

    format          "dalle_pytorch"
    format_version  "1"
    kind            "dalle" | "vae" | "clip"
    package_version dalle_pytorch.__version__ of the writer
    config          JSON of DALLE.config.to_dict(), the VAE's config or CLIP.config
    vae_config      JSON of the VAE's config (not for CLIP)
    vae_class       "DiscreteVAE", "VQGanVAE" or "OpenAIDiscreteVAE" (not for CLIP): the pretrained
                    VAEs are stored whole, so a converted DALLE-pytorch model is one self-contained file
    tokenizer       JSON of tokenizer.describe() (absent when no tokenizer was given)
    metadata        JSON of the caller's dict (step, epoch, ...)

Nothing is pickled, so loading runs no code from the file.  Writes are atomic (temporary file in
the same folder, fsync, os.replace): a crash or error mid-write leaves the previous file intact.

`load_checkpoint` also reads the `.pt` files of DALLE-pytorch's `train_dalle.py` / `train_vae.py`
(with `torch.load(weights_only=True)`, never running code from the file) and remaps their
parameter names (`dalle_pytorch.checkpoint.legacy`): every script loads models through it.  Every
load is strict: the weights must fit the model built from the stored config exactly, or a
CheckpointError names the offending keys and the likely cause.
"""
from __future__ import annotations

import json
import os
import warnings
from typing import Any, Optional

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from dalle_pytorch.checkpoint.build import (SOURCE_OURS, VAE_CLASSES, LoadedCheckpoint, apply_overrides, build_checked,
                                            build_dalle, build_stored_vae, check_dalle_size, check_state,
                                            dalle_config_of, finish, swap_vae, vae_class_name)
from dalle_pytorch.checkpoint.legacy import load_legacy
from dalle_pytorch.errors import CheckpointError
from dalle_pytorch.formats.files import PathLike, atomic_write, regular_file
from dalle_pytorch.formats.integrity import INTEGRITY_KEY, check_header, check_tensors, integrity_record
from dalle_pytorch.models.clip import CLIP
from dalle_pytorch.models.dalle import DALLE
from dalle_pytorch.models.dalle_pytorch_keys import native_state_dict
from dalle_pytorch.models.quantize import INT4_GROUPS, QUANTIZE_MODES, quantization_of, quantize
from dalle_pytorch.text.factory import tokenizer_from_description
from dalle_pytorch.version import __version__

__all__ = ["CheckpointError", "LoadedCheckpoint", "save", "load", "load_checkpoint", "FORMAT", "FORMAT_VERSION"]


FORMAT = "dalle_pytorch"
FORMAT_VERSION = "1"


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
    with native_state_dict():  # a DALLE's own module names (its state_dict() speaks DALLE-pytorch's)
        state = model.state_dict()
    for key, value in state.items():
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
    """Save a DALLE, a VAE or a CLIP (with its config, tokenizer and `metadata`) as one safetensors file.

    Args:
        model: a DALLE (its VAE is saved with it, under `vae.*`), a VAE (DiscreteVAE, VQGanVAE,
            OpenAIDiscreteVAE) or a CLIP.
        path: the file to write (conventionally `*.safetensors`); replaced atomically.
        tokenizer: the tokenizer the model was trained with (anything with `describe()`), stored so
            that `load_checkpoint` can rebuild it.
        metadata: extra JSON-serialisable information (step, epoch, loss, ...), returned as
            `LoadedCheckpoint.metadata`.
    Raises:
        TypeError: not a DALLE / VAE / CLIP, or a DALLE over a VAE class a checkpoint cannot hold.
        ValueError: non-finite weights (NaN / inf), or metadata / tokenizer that is not JSON-serialisable.
    """
    model = _unwrap(model)
    if isinstance(model, DALLE):
        kind, vae, config = "dalle", model.vae, model.config.to_dict()
    elif isinstance(model, tuple(VAE_CLASSES.values())):
        kind, vae, config = "vae", model, model.config
    elif isinstance(model, CLIP):
        kind, vae, config = "clip", None, model.config
    else:
        raise TypeError(f"save() takes a DALLE, a DiscreteVAE or a CLIP (or a VQGanVAE / OpenAIDiscreteVAE), "
                        f"got {type(model).__name__}")
    vae_class = vae_class_name(vae) if vae is not None else None
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
        header["vae_class"] = vae_class
    quantization = quantization_of(model) if kind == "dalle" else None
    if quantization is not None:  # how the integer weights were made
        header["quantization"] = _to_json(quantization, "the quantization")
    if tokenizer is not None:
        header["tokenizer"] = _to_json(_describe_tokenizer(tokenizer), "the tokenizer description")
    tensors = _state_tensors(model)
    _check_finite(tensors)
    header[INTEGRITY_KEY] = integrity_record(header, tensors)
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=header))



# ------------------------------------------------------------------------------------------------
# load
# ------------------------------------------------------------------------------------------------


def _json_field(meta: dict, key: str, path: str, required: bool = True) -> Any:
    if key not in meta:
        if required:
            raise CheckpointError(f"{path}: the checkpoint metadata has no '{key}' entry; the file is damaged")
        return None
    try:
        return json.loads(meta[key])
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: the checkpoint metadata '{key}' is not valid JSON ({e})") from e


def _quantization(meta: dict, path: str) -> Optional[dict]:
    """The header's record of a quantized DALLE ({"mode": "int8"} or {"mode": "int4", "group": g}), checked."""
    q = _json_field(meta, "quantization", path, required=False)
    if q is None:
        return None
    ok = (isinstance(q, dict) and q.get("mode") in QUANTIZE_MODES and set(q) <= {"mode", "group"}
          and (q["mode"] == "int8" and "group" not in q or q["mode"] == "int4" and q.get("group") in INT4_GROUPS))
    if not ok:
        raise CheckpointError(f"{path}: the checkpoint's 'quantization' entry {q!r} is not one this version makes "
                              f"(modes {', '.join(QUANTIZE_MODES)}, int4 groups {', '.join(map(str, INT4_GROUPS))})")
    return q


def _checked_path(path: PathLike, what: str) -> str:
    """`path` as a str, refused unless it names a regular file (a FIFO would block, /dev/zero never ends)."""
    if os.path.isdir(path):
        raise IsADirectoryError(f"{what} {os.fspath(path)!r} is a directory (DeepSpeed checkpoint folders are not "
                                "read; consolidate them into a state dict first)")
    return os.fspath(regular_file(path, what))


def _is_safetensors(path: str) -> bool:
    """A safetensors file starts with an 8-byte header length and the JSON header's '{'."""
    with open(path, "rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{"


_SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
                      "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
                      "BOOL": torch.bool}


def _load_ours(path: str, map_location: Any, vae: Optional[nn.Module], vae_source: str,
               overrides: dict) -> LoadedCheckpoint:
    try:  # the header only: names, shapes, dtypes and metadata (safetensors checks the sizes add up)
        with safe_open(path, framework="pt") as f:
            meta = f.metadata() or {}
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
            dtypes = {k: _SAFETENSORS_DTYPES.get(f.get_slice(k).get_dtype(), torch.uint8) for k in f.keys()}
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
    verified = check_header(path, meta)
    if not verified:
        warnings.warn(f"{path} was written before checkpoints carried SHA-256 digests, so edits to its header cannot "
                      "be detected; re-save it (python -m dalle_pytorch.cli.convert) to add them", stacklevel=3)
    kind = meta.get("kind")
    if kind not in ("dalle", "vae", "clip"):
        raise CheckpointError(f"{path}: unknown checkpoint kind {kind!r} (expected 'dalle', 'vae' or 'clip')")
    vae_class = meta.get("vae_class")
    if kind != "clip" and vae_class not in VAE_CLASSES:
        raise CheckpointError(f"{path}: VAE class {vae_class!r} is not supported (known: {', '.join(VAE_CLASSES)})")
    config = _json_field(meta, "config", path)
    vae_config = _json_field(meta, "vae_config", path) if kind != "clip" else {}
    user_meta = _json_field(meta, "metadata", path, required=False) or {}
    description = _json_field(meta, "tokenizer", path, required=False)
    if not isinstance(config, dict) or not isinstance(vae_config, dict):
        raise CheckpointError(f"{path}: the checkpoint metadata 'config' / 'vae_config' must be JSON objects")
    config = apply_overrides(config, overrides, kind)

    def check(what: str):
        return lambda probe: check_state(path, probe, shapes, what, dtypes)

    if kind == "clip":
        if vae is not None:
            raise ValueError("vae / vae_path is for DALLE checkpoints; this is a CLIP checkpoint")

        def build_clip() -> nn.Module:
            try:
                return CLIP(**config)
            except (TypeError, ValueError) as e:
                raise CheckpointError(f"{path}: cannot build a CLIP from the stored config ({e})") from e

        model = build_checked(build_clip, check("the CLIP"))
    elif kind == "vae":
        if vae is not None:
            raise ValueError("vae / vae_path is for DALLE checkpoints; this is a VAE checkpoint")
        model = build_checked(lambda: build_stored_vae(vae_class, config, path), check(f"the {vae_class}"))
    else:
        external = vae is not None
        dalle_config = dalle_config_of(config, path)
        if external:
            ours_without_vae = {k: s for k, s in shapes.items() if not k.startswith("vae.")}
            theirs = {f"vae.{k}": tuple(v.shape) for k, v in vae.state_dict().items()}
            shapes = {**ours_without_vae, **theirs}
            dtypes = {k: d for k, d in dtypes.items() if not k.startswith("vae.")}
        def own_vae() -> nn.Module:
            return build_stored_vae(vae_class, vae_config, path)

        quantization = _quantization(meta, path)

        def build() -> nn.Module:
            model = build_dalle(dalle_config, vae if external else own_vae(), path)
            if quantization is None:
                return model
            try:  # the quantized layers' shapes, filled from the file
                return quantize(model, quantization["mode"], quantization.get("group"), compute=False)
            except ValueError as e:
                raise CheckpointError(f"{path}: cannot build the stored quantization {quantization}: {e}") from e

        with torch.device("meta"):
            check_dalle_size(path, dalle_config, vae if external else own_vae())
        model = build_checked(build, check("the DALLE"))
        config = model.config.to_dict()
    state = load_file(path, device="cpu")
    check_tensors(path, meta, state)
    if kind == "dalle" and vae is not None:
        state = swap_vae(state, vae, path, vae_source)
    model = finish(model, state, path, map_location)
    tokenizer = None
    if description is not None:
        try:
            tokenizer = tokenizer_from_description(description)
        except Exception as e:  # e.g. a description that names a file instead of carrying its content
            warnings.warn(f"{path}: could not rebuild the stored tokenizer ({e}); LoadedCheckpoint.tokenizer is None "
                          "and tokenizer_description holds what was stored", stacklevel=3)
    return LoadedCheckpoint(model=model, tokenizer=tokenizer, metadata=user_meta, source=SOURCE_OURS, kind=kind,
                            config=dict(config), path=path, package_version=meta.get("package_version"),
                            tokenizer_description=description, verified=verified)


def load_checkpoint(path: PathLike, map_location: Any = None, *, vae: Optional[nn.Module] = None,
                    vae_path: Optional[PathLike] = None, **overrides: Any) -> LoadedCheckpoint:
    """Load a checkpoint: ours (`save`, safetensors) or DALLE-pytorch's (`train_dalle.py` / `train_vae.py` `.pt`).

    Args:
        path: the checkpoint file.
        map_location: device for the model (default CPU); str or torch.device.
        vae: the VAE of a DALLE-pytorch model over a pretrained VAE (`VQGanVAE(model, config)`,
            `OpenAIDiscreteVAE(encoder, decoder)`): such files store no VAE config. Without it, the
            files DALLE-pytorch downloaded to ~/.cache/dalle are used when present. It may also
            replace a DALLE's own VAE; if the file carries VAE weights they must be the same.
        vae_path: a VAE checkpoint (ours, DALLE or VAE, or a DALLE-pytorch train_vae file) whose VAE
            is used as `vae` (needed when a DALLE-pytorch file has no vae_params).
        overrides: DALLE config values to change before building: only optimize_for_inference,
            attn_dropout, ff_dropout (they change no parameters).
    Returns:
        LoadedCheckpoint(model (eval mode), tokenizer, metadata, source, kind, ...).
    Raises:
        CheckpointError (a ValueError): unreadable, truncated or foreign files, pickles that need
            code to load, unsupported VAEs or layers, weights that do not fit the config, a
            pretrained VAE that cannot be found.
        ValueError: an override that would change the parameters; both vae and vae_path.
        FileNotFoundError, IsADirectoryError, NotRegularFileError: no such file, a folder, a FIFO.
    """
    path = _checked_path(path, "checkpoint")
    vae_source = None
    if vae is not None and vae_path is not None:
        raise ValueError("give vae or vae_path, not both")
    if vae is not None:
        vae_class_name(vae)  # a VAE a checkpoint can hold
        vae_source = f"the given {type(vae).__name__}"
    elif vae_path is not None:  # read first: its errors name the VAE file, not the DALLE one
        vae_source = os.fspath(_checked_path(vae_path, "vae_path"))
        loaded_vae = load_checkpoint(vae_source)
        if loaded_vae.kind not in ("dalle", "vae"):
            raise CheckpointError(f"{vae_source}: vae_path must hold a VAE (or a DALLE with its VAE), not a "
                                  f"{loaded_vae.kind} checkpoint")
        vae = loaded_vae.model.vae if loaded_vae.kind == "dalle" else loaded_vae.model
    try:
        if _is_safetensors(path):
            return _load_ours(path, map_location, vae, vae_source, overrides)
        return load_legacy(path, map_location, vae, vae_source, overrides)
    except CheckpointError as e:
        if path in str(e):
            raise
        raise CheckpointError(f"{path}: {e}") from e


def load(path: PathLike, map_location: Any = None, *, vae: Optional[nn.Module] = None,
         vae_path: Optional[PathLike] = None, **overrides: Any) -> nn.Module:
    """The model of `load_checkpoint(path, map_location, vae=vae, vae_path=vae_path, **overrides)`."""
    return load_checkpoint(path, map_location, vae=vae, vae_path=vae_path, **overrides).model
