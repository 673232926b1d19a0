"""Rebuild a model from a stored config and load its weights strictly.

What every checkpoint reader shares (ours and DALLE-pytorch's): `LoadedCheckpoint`, building a
DALLE / DiscreteVAE from stored parameters with errors that say what is wrong, the strict key,
shape and dtype check (`check_state`, which guesses the setting that differs), swapping in an
external VAE, and the final strict `load_state_dict` (`finish`).

A file is untrusted, so nothing is allocated from its config before the config is checked against
the tensors the file really holds: `build_checked` first builds the model on the `meta` device
(no memory), compares every name, shape and dtype with the file, and only then builds it for real;
`check_dalle_size` refuses a config whose derived tables (attention masks, token-shift and rotary
tables: never stored, so not bounded by the file's size) would be unreasonably large.
"""
from __future__ import annotations

import inspect
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch
from torch import nn

from dalle_pytorch.errors import CheckpointError
from dalle_pytorch.models.config import DALLEConfig
from dalle_pytorch.models.dalle import DALLE
from dalle_pytorch.models.dalle_pytorch_keys import native_state_dict
from dalle_pytorch.models.openai_dvae import OpenAIDiscreteVAE
from dalle_pytorch.models.vae import DiscreteVAE
from dalle_pytorch.models.vqgan import VQGanVAE
from dalle_pytorch.nn.quantized import QuantizedLinear
from dalle_pytorch.version import __version__

__all__ = ["LoadedCheckpoint", "OVERRIDABLE", "SOURCE_OURS", "SOURCE_LEGACY", "DERIVED_BYTES_LIMIT", "VAE_CLASSES",
           "apply_overrides", "build_checked", "build_dalle", "build_stored_vae", "build_vae", "check_dalle_size",
           "check_state", "dalle_config_of", "finish", "swap_vae", "vae_class_name"]

SOURCE_OURS = "dalle_pytorch"
SOURCE_LEGACY = "dalle-pytorch-legacy"

#: DALLE config keys `load_checkpoint(**overrides)` may change: none of them changes the parameters.
OVERRIDABLE = frozenset({"optimize_for_inference", "attn_kernel", "attn_dropout", "ff_dropout"})

#: The most memory the tables a DALLE derives from its config (attention pattern masks of N x N
#: positions, token-shift and rotary tables) may take when the DALLE is built from a file: they are
#: not stored, so the file's size does not bound them.  The largest DALLE-pytorch configurations
#: (text 256 + 64 x 64 image codes) need well under 1% of it.
DERIVED_BYTES_LIMIT = 2 * 2**30

_VAE_ARGS = frozenset(p for p in inspect.signature(DiscreteVAE.__init__).parameters if p != "self")
_FEW = 5  # how many key names an error message lists


@dataclass
class LoadedCheckpoint:
    """What `load_checkpoint` read.

    Attributes:
        model: the DALLE, the VAE (DiscreteVAE, VQGanVAE or OpenAIDiscreteVAE) or the CLIP, in eval mode,
            on the requested device.
        tokenizer: the stored tokenizer, rebuilt (None when the file has none).
        metadata: ours: the dict given to `save(metadata=...)`; DALLE-pytorch files: version, epoch,
            vae_class_name.
        source: "dalle_pytorch" (our safetensors format) or "dalle-pytorch-legacy" (a DALLE-pytorch `.pt`).
        kind: "dalle", "vae" or "clip".
        config: the config the model was built from (DALLE kwargs without vae, or the VAE's / CLIP's).
        path: the file read.
        package_version: the dalle_pytorch version that wrote the file (None for DALLE-pytorch files).
        tokenizer_description: the stored tokenizer description (kept even if it could not be rebuilt).
        verified: whether the file's SHA-256 digests were checked (our files written since they carry them).
        training: DALLE-pytorch train_dalle.py files: what they hold to resume beyond the model
            (epoch, opt_state, scheduler_state, param_names: see `checkpoint.legacy.training_state`); else None.
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
    verified: bool = False
    training: Optional[dict] = None


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


def check_state(path: str, model: nn.Module, shapes: dict[str, tuple], what: str = "the model",
                dtypes: Optional[dict[str, torch.dtype]] = None) -> None:
    """Strict check: every key of model.state_dict() present with the same shape, nothing extra; with
    `dtypes`, floating tensors must be stored floating and the others with their exact dtype."""
    with native_state_dict():
        state = model.state_dict()
    expected = {k: tuple(v.shape) for k, v in state.items()}
    missing = [k for k in expected if k not in shapes]
    unexpected = [k for k in shapes if k not in expected]
    mismatched = [k for k in expected if k in shapes and tuple(shapes[k]) != expected[k]]
    if dtypes is not None and not (missing or unexpected or mismatched):
        wrong = [k for k, v in state.items() if k in dtypes and (
            dtypes[k].is_floating_point != v.dtype.is_floating_point
            or (not v.dtype.is_floating_point and dtypes[k] != v.dtype))]
        if wrong:
            shown = ", ".join(f"{k} ({dtypes[k]} in the file, {state[k].dtype} expected)" for k in wrong[:_FEW])
            raise CheckpointError(f"{path}: {len(wrong)} tensors have the wrong dtype: {shown}; the file is "
                                  "damaged or was not written for this model. Nothing was loaded.")
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


def apply_overrides(config: dict, overrides: dict, kind: str) -> dict:
    if not overrides:
        return dict(config)
    if kind != "dalle":
        raise ValueError(f"overrides ({sorted(overrides)}) apply to DALLE checkpoints; this is a VAE checkpoint")
    bad = sorted(set(overrides) - OVERRIDABLE)
    if bad:
        raise ValueError(f"cannot override {bad} when loading: only {sorted(OVERRIDABLE)} can change without "
                         "changing the parameters; build the model yourself to change anything else")
    return {**config, **overrides}


#: The VAE classes a checkpoint can hold, by the name stored with it (`vae_class`).
VAE_CLASSES = {"DiscreteVAE": DiscreteVAE, "VQGanVAE": VQGanVAE, "OpenAIDiscreteVAE": OpenAIDiscreteVAE}


def vae_class_name(vae: nn.Module) -> str:
    """The stored name of `vae`'s class; TypeError for a VAE a checkpoint cannot hold."""
    for name, cls in VAE_CLASSES.items():
        if type(vae) is cls:
            return name
    raise TypeError(f"a checkpoint can hold a {', '.join(VAE_CLASSES)}, not a {type(vae).__name__}")


def build_stored_vae(vae_class: Any, config: Any, path: str) -> nn.Module:
    """A VAE of the stored class `vae_class` built from its stored config (weights initialised, to be loaded)."""
    if vae_class == "DiscreteVAE":
        return build_vae(config, path)
    if vae_class not in VAE_CLASSES:
        raise CheckpointError(f"{path}: VAE class {vae_class!r} is not supported (known: {', '.join(VAE_CLASSES)})")
    if not isinstance(config, dict):
        raise CheckpointError(f"{path}: the {vae_class} config must be a dict, got {type(config).__name__}")
    try:
        return VAE_CLASSES[vae_class].from_config(config)
    except (TypeError, ValueError, KeyError) as e:
        raise CheckpointError(f"{path}: cannot build a {vae_class} from the stored config: {e}") from e


def build_vae(params: Any, path: str) -> DiscreteVAE:
    if not isinstance(params, dict):
        raise CheckpointError(f"{path}: the VAE parameters must be a dict, got {type(params).__name__}")
    unknown = sorted(set(params) - _VAE_ARGS)
    if unknown:
        raise CheckpointError(f"{path}: VAE parameters {unknown} are not DiscreteVAE arguments")
    try:
        return DiscreteVAE(**params)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: cannot build a DiscreteVAE from the stored parameters: {e}") from e


def dalle_config_of(config: dict, path: str) -> DALLEConfig:
    """The validated DALLEConfig of a stored config dict (`DALLEConfig.to_dict()` or DALLE-pytorch hparams)."""
    try:
        return DALLEConfig.from_dict(config)
    except TypeError as e:
        raise CheckpointError(f"{path}: the stored DALLE config is not understood by dalle_pytorch {__version__} "
                              f"({e}); was it written by a newer version?") from e
    except ValueError as e:
        raise CheckpointError(f"{path}: cannot build a DALLE from the stored config: {e}") from e


def check_dalle_size(path: str, config: DALLEConfig, vae: nn.Module) -> None:
    """Refuse (before anything is allocated) a config whose derived tables would need more than
    DERIVED_BYTES_LIMIT: N = text_seq_len + 1 + F*F positions, an N x N mask per distinct pattern."""
    fmap = vae.image_size // 2**vae.num_layers
    n = config.text_seq_len + 1 + fmap * fmap
    types = config.layer_attn_types()
    masks = len({t for t in types if t != "sparse"}) + sum(t == "sparse" for t in types)  # sparse: one per layer
    need = masks * n * n * 2 + n * 4 * (3 * config.dim + 4 * config.dim_head)  # masks + kernel masks, tables
    if need > DERIVED_BYTES_LIMIT:
        raise CheckpointError(
            f"{path}: the stored config describes {n:,} positions (text_seq_len {config.text_seq_len}, a "
            f"{fmap}x{fmap} image grid from a VAE of image_size {vae.image_size}), whose attention tables alone "
            f"would need {need / 2**30:,.1f} GiB; refusing to build it: the file is damaged or not a real checkpoint")


def build_dalle(config: DALLEConfig, vae: nn.Module, path: str) -> DALLE:
    """A DALLE over `vae`; a config the constructor refuses becomes a CheckpointError naming the file."""
    try:
        return DALLE(vae=vae, config=config)
    except ValueError as e:
        raise CheckpointError(f"{path}: cannot build a DALLE from the stored config: {e}") from e


def build_checked(build: Callable[[], nn.Module], check: Callable[[nn.Module], None]) -> nn.Module:
    """`build()` on the meta device, `check(probe)` (e.g. `check_state` against the file's tensors), then
    `build()` for real: nothing a file's config asks for is allocated before it is known to fit the file."""
    with torch.device("meta"):
        probe = build()
    check(probe)
    return build()


def swap_vae(state: dict, vae: nn.Module, path: str, vae_source: str) -> dict:
    """Put `vae`'s weights under `vae.*`; a VAE the file carries itself must be the same one.

    vae_source: where `vae` came from, for the error message (a file name, or "the given vae").
    """
    own = {k[len("vae."):]: v for k, v in state.items() if k.startswith("vae.")}
    theirs = vae.state_dict()
    if own:
        same = own.keys() == theirs.keys() and all(
            own[k].shape == theirs[k].shape and torch.equal(own[k].to(theirs[k].dtype), theirs[k].cpu())
            for k in own
        )
        if not same:
            raise CheckpointError(f"{path} carries its own VAE, which differs from {vae_source}; "
                                  "leave out vae / vae_path to use the checkpoint's own VAE, or pick the VAE this model "
                                  "was trained with")
    out = {k: v for k, v in state.items() if not k.startswith("vae.")}
    out.update({f"vae.{k}": v for k, v in theirs.items()})
    return out


def finish(model: nn.Module, state: dict, path: str, map_location: Any) -> nn.Module:
    """Strict-load `state` (already checked), keep a single stored floating dtype, move, eval()."""
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:  # pragma: no cover - check_state ran first
        raise CheckpointError(f"{path}: {e}") from e
    # a quantized layer's scales keep their own dtype: the model's is that of everything else
    tables = {f"{name}.{t}" for name, m in model.named_modules() if isinstance(m, QuantizedLinear) for t in ("scale", "zero")}
    dtypes = {v.dtype for k, v in state.items() if v.is_floating_point() and k not in tables}
    if len(dtypes) == 1:
        (dtype,) = dtypes
        if dtype != torch.float32:
            model.to(dtype)
    if map_location is not None:
        model.to(torch.device(map_location))
    return model.eval()
