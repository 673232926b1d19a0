"""Read checkpoints written by DALLE-pytorch (lucidrains/DALLE-pytorch) into this package's layout.

`load_legacy` reads a `train_dalle.py` / `train_vae.py` `.pt` file (torch.load with weights_only=True:
no code from the file runs) and builds the model; `remap_state_dict` is the key remapper.

One remapper for every layout DALLE-pytorch has written:
- pre-cache (<= 1.2): `transformer.layers.layers.{i}.{0,1}.fn.norm...`, `...fn.fn[.fn].to_qkv...`
- post-cache (>= 1.4): the same with extra `.fn` levels from the CachedAs/NonCached containers,
  with and without token shift;
- reversible: `transformer.layers.blocks.{i}.f.net...` / `.g.net...`;
- shared layers: one tensor saved under every layer that uses it (we keep one, after checking
  the copies are equal);
- share_input_output_emb: `text_emb.linear` / `image_emb.linear` duplicate `to_logits.1` (checked equal, then dropped);
- the rotary table `transformer.pos_emb` (derived from the config here: checked, then dropped);
- the axial image positions `image_pos_emb.weights_0` (axial_positional_embedding <= 0.2.1) or
  `image_pos_emb.weights.0` (0.3 and later): DALLE-pytorch does not pin that package.
conv_like changed its window in 1.5: older checkpoints get conv_variant='centred'.
Old releases lacked the shift_tokens / rotary_emb switches: `layout_hparams` reads them from the key layout.
"""
from __future__ import annotations

import re
from typing import Any, Optional

import torch
from torch import nn

from dalle_pytorch.checkpoint.build import (SOURCE_LEGACY, LoadedCheckpoint, apply_overrides, build_checked,
                                            build_dalle, build_vae, check_dalle_size, check_state, dalle_config_of,
                                            finish, swap_vae, vae_class_name)
from dalle_pytorch.errors import CheckpointError
from dalle_pytorch.formats.files import atomic_write
from dalle_pytorch.formats.pt_files import torch_load
from dalle_pytorch.models.dalle import DALLE
from dalle_pytorch.models.dalle_pytorch_keys import (check_rotary_table, dalle_pytorch_state_dict, legacy_key,
                                                     remap_state_dict)
from dalle_pytorch.models.quantize import quantization_of
from dalle_pytorch.models.vae import DiscreteVAE
from dalle_pytorch.version import __version__
from dalle_pytorch.models.openai_dvae import OpenAIDiscreteVAE
from dalle_pytorch.models.vqgan import VQGanVAE

# DALLE constructor arguments a DALLE-pytorch `hparams` dict may carry
_DALLE_KEYS = {
    "dim", "num_text_tokens", "text_seq_len", "depth", "heads", "dim_head", "reversible", "attn_dropout",
    "ff_dropout", "attn_types", "loss_img_weight", "stable", "sandwich_norm", "shift_tokens", "rotary_emb",
    "shared_attn_ids", "shared_ff_ids", "share_input_output_emb", "optimize_for_inference", "sparse_attn",
}
# DALLE-pytorch attention types that do not mean what ours do ('mlp' layers are refused by DALLEConfig)
_UNSUPPORTED_ATTN = {
    "sparse": "DALLE-pytorch's 'sparse' layers use DeepSpeed's block-sparse layout, which this package does not reproduce",
}


def parse_version(version) -> tuple[int, ...]:
    """'1.6.6' -> (1, 6, 6); None or a string without digits -> (0,)."""
    if version is None:
        return (0,)
    parts = re.findall(r"\d+", str(version))
    return tuple(int(p) for p in parts[:3]) or (0,)


def dalle_config_from_hparams(hparams: dict, version=None) -> dict:
    """DALLE keyword arguments (without vae) for a DALLE-pytorch `hparams` dict."""
    config = {k: v for k, v in hparams.items() if k in _DALLE_KEYS}
    attn_types = config.get("attn_types")
    if isinstance(attn_types, str):
        attn_types = (attn_types,)
    if attn_types is not None:
        for t in attn_types:
            if t in _UNSUPPORTED_ATTN:
                raise CheckpointError(f"cannot load this checkpoint: {_UNSUPPORTED_ATTN[t]}")
        config["attn_types"] = list(attn_types)
    if config.get("sparse_attn") not in (None, False):
        raise CheckpointError(f"cannot load this checkpoint: {_UNSUPPORTED_ATTN['sparse']} (sparse_attn=True)")
    config.pop("sparse_attn", None)
    config.pop("optimize_for_inference", None)
    if attn_types is not None and "conv_like" in attn_types:
        config["conv_variant"] = "centred" if parse_version(version) < (1, 5) else "up_left"
    return config


def optimizer_param_names(weights: dict, model: nn.Module) -> list[str]:
    """Our names of the parameters DALLE-pytorch's train_dalle.py optimizer holds, in its order.

    Its `Adam(get_trainable_params(dalle))` takes `dalle.parameters()` minus the frozen VAE: the
    state dict's order without buffers, each shared tensor once, at its first name; `opt_state`'s
    parameter indices count in that order.
    """
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    names: list[str] = []
    for key in weights:
        target = legacy_key(key, model.transformer)
        if target in trainable and target not in names:
            names.append(target)
    return names


def training_state(obj: dict, weights: dict, model: nn.Module, path: str) -> Optional[dict]:
    """What a train_dalle.py file holds beyond the model (`LoadedCheckpoint.training`), or None.

    epoch (where its loop restarts), opt_state (Adam, by parameter index), param_names (ours, for
    those indices: `optimizer_param_names`), scheduler_state (ReduceLROnPlateau with --lr_decay, or
    None). Checked for types here; matched against a model and optimizer by the trainer.
    """
    opt_state, scheduler_state, epoch = obj.get("opt_state"), obj.get("scheduler_state"), obj.get("epoch")
    if opt_state is None and scheduler_state is None and not epoch:
        return None
    if epoch is None:
        epoch = 0
    if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
        raise CheckpointError(f"{path}: 'epoch' must be an integer >= 0, got {epoch!r}")
    for key, value in (("opt_state", opt_state), ("scheduler_state", scheduler_state)):
        if value is not None and not isinstance(value, dict):
            raise CheckpointError(f"{path}: {key!r} must be a state dict, got {type(value).__name__}")
    return {"epoch": epoch, "opt_state": opt_state, "scheduler_state": scheduler_state,
            "param_names": optimizer_param_names(weights, model)}


# feed-forward keys: transformer.layers.layers.{i}.1.<fn levels>net.0.weight or ...blocks.{i}.g.net.<fn levels>net.0.weight
_FF_KEY = re.compile(r"^transformer\.layers\.(?:layers\.\d+\.1|blocks\.\d+\.g\.net)\.((?:fn\.)+)net\.0\.weight$")


def shift_tokens_from_layout(weights: dict) -> bool | None:
    """Whether the checkpoint's layers were wrapped in token shift, read from the key layout.

    The feed-forward branch is LayerScale -> PreNorm [-> (CachedAs ->) PreShiftToken] -> FeedForward,
    so its `net.0.weight` sits under 2 `fn` levels without token shift in every layout, and under 3
    (<= 1.2, pre-cache) or 4 (>= 1.4, CachedAs) with it.  None when the layout says nothing.
    """
    counts = set()
    for key in weights:
        m = _FF_KEY.match(key)
        if m:
            counts.add(m.group(1).count("fn."))
    if counts == {2}:
        return False
    if counts and counts <= {3, 4}:
        return True
    return None


def layout_hparams(hparams: dict, weights: dict) -> dict:
    """`hparams` with `shift_tokens` / `rotary_emb` checked against (or, when absent, read from) the weights.

    Old DALLE-pytorch releases did not have these switches, so their `hparams` lack them while our
    defaults are True; the key layout says what the checkpoint really used.  Raises CheckpointError
    when the hparams contradict the weights.
    """
    out = dict(hparams)
    shift = shift_tokens_from_layout(weights)
    if shift is not None:
        if "shift_tokens" not in out:
            out["shift_tokens"] = shift
        elif bool(out["shift_tokens"]) != shift:
            raise CheckpointError(f"hparams say shift_tokens={out['shift_tokens']} but the layer layout of the weights "
                                  f"was written with shift_tokens={shift}")
    has_table = "transformer.pos_emb" in weights
    has_learned = "text_pos_emb.weight" in weights
    if "rotary_emb" not in out:
        if has_table or has_learned:
            out["rotary_emb"] = has_table
    elif bool(out["rotary_emb"]) != has_table and (has_table or has_learned):
        raise CheckpointError(f"hparams say rotary_emb={out['rotary_emb']} but the weights "
                              f"{'have' if has_table else 'lack'} the rotary table transformer.pos_emb")
    return out


# -- reading a DALLE-pytorch file ---------------------------------------------------------------

# DALLE-pytorch's pretrained VAEs: a train_dalle.py file stores their weights but not their config
# (vae_params is None), so the VAE comes from its own files: how a user gives them
_PRETRAINED_VAES = {
    "VQGanVAE": ("the taming-transformers VQGAN", "vae=VQGanVAE(model.ckpt, config.yaml) in Python, --taming "
                 "--vqgan_model_path model.ckpt --vqgan_config_path config.yaml for the scripts"),
    "OpenAIDiscreteVAE": ("OpenAI's dVAE", "vae=OpenAIDiscreteVAE(encoder.pkl, decoder.pkl) in Python, or the two "
                          "files in ~/.cache/dalle/ for the scripts"),
}


def _default_pretrained_vae(vae_class: str, path: str) -> nn.Module:
    """The pretrained VAE from the files DALLE-pytorch downloaded (~/.cache/dalle/), or a CheckpointError
    naming the class, the files and how to give them."""
    what, how = _PRETRAINED_VAES[vae_class]
    try:
        return VQGanVAE() if vae_class == "VQGanVAE" else OpenAIDiscreteVAE()
    except FileNotFoundError as e:
        missing = "; ".join(line.strip() for line in str(e).splitlines()[1:-1])
        raise CheckpointError(f"{path} is a DALLE over a {vae_class} ({what}), whose config the file does not hold: "
                              f"give it with {how}. Its default files are missing: {missing}") from None
    except (ValueError, OSError) as e:
        raise CheckpointError(f"{path} is a DALLE over a {vae_class} ({what}); its default files in ~/.cache/dalle "
                              f"could not be read: {' '.join(str(e).split())}") from None


def _shapes(state: dict) -> dict[str, tuple]:
    return {k: tuple(v.shape) for k, v in state.items()}


def _dtypes(state: dict) -> dict[str, torch.dtype]:
    return {k: v.dtype for k, v in state.items()}


def _legacy_weights(obj: dict, path: str) -> dict:
    weights = obj.get("weights")
    if isinstance(weights, str):
        raise CheckpointError(f"{path} is the auxiliary file of a DeepSpeed checkpoint: its weights live in the "
                              f"DeepSpeed folder ({weights!r}); consolidate them into a state dict first")
    if not isinstance(weights, dict) or not all(isinstance(v, torch.Tensor) for v in weights.values()):
        raise CheckpointError(f"{path}: 'weights' must be a state dict of tensors")
    return weights


def load_legacy(path: str, map_location: Any, vae: Optional[nn.Module], vae_source: str,
                overrides: dict) -> LoadedCheckpoint:
    """Load a DALLE-pytorch `train_dalle.py` / `train_vae.py` file.

    vae: an external VAE replacing (or, for files without vae_params, providing) the model's;
    vae_source names where it came from in error messages.
    """
    obj = torch_load(path)
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
        if vae is not None:
            raise ValueError("vae / vae_path is for DALLE checkpoints; this is a VAE checkpoint")
        apply_overrides({}, overrides, "vae")
        weights = _legacy_weights(obj, path)
        shapes, dtypes = _shapes(weights), _dtypes(weights)
        model: nn.Module = build_checked(lambda: build_vae(hparams, path),
                                         lambda probe: check_state(path, probe, shapes, "the DiscreteVAE", dtypes))
        model = finish(model, dict(weights), path, map_location)
        meta["vae_class_name"] = meta["vae_class_name"] or "DiscreteVAE"
        return LoadedCheckpoint(model=model, tokenizer=None, metadata=meta, source=SOURCE_LEGACY, kind="vae",
                                config=dict(model.config), path=path)

    vae_class = obj.get("vae_class_name")
    if vae_class not in (None, "DiscreteVAE", *_PRETRAINED_VAES):
        raise CheckpointError(f"{path}: VAE class {vae_class!r} is not supported (known: DiscreteVAE, "
                              f"{', '.join(_PRETRAINED_VAES)})")
    if vae_class in _PRETRAINED_VAES and vae is None:
        vae, vae_source = _default_pretrained_vae(vae_class, path), "the files in ~/.cache/dalle"
    if vae_class in _PRETRAINED_VAES and type(vae).__name__ != vae_class:
        raise CheckpointError(f"{path} is a DALLE over a {vae_class}, not over the {type(vae).__name__} given "
                              f"({vae_source})")
    weights = _legacy_weights(obj, path)
    version = obj.get("version")
    config = dalle_config_from_hparams(layout_hparams(hparams, weights), version)
    config = dalle_config_of(apply_overrides(config, overrides, "dalle"), path)
    if "text_emb.linear.weight" in weights and not config.share_input_output_emb:
        raise CheckpointError(f"{path}: the weights were written with share_input_output_emb=True "
                              "(text_emb.linear.*) but hparams do not say so")
    external = vae is not None
    vae_params = obj.get("vae_params")
    if not external and vae_params is None:
        raise CheckpointError(f"{path} has no VAE parameters (vae_params is None); pass vae_path= the DiscreteVAE "
                              "checkpoint this model was trained with")

    def build() -> nn.Module:
        return build_dalle(config, vae if external else build_vae(vae_params, path), path)

    def remapped(transformer) -> dict:
        state = remap_state_dict(weights, transformer)
        if external:
            return swap_vae(state, vae, path, vae_source)
        if not any(k.startswith("vae.") for k in state):
            raise CheckpointError(f"{path} has no VAE weights (no vae.* keys); pass vae_path= the DiscreteVAE "
                                  "checkpoint this model was trained with")
        return state

    with torch.device("meta"):
        check_dalle_size(path, config, vae if external else build_vae(vae_params, path))
    dtypes = {k: d for k, d in _dtypes(weights).items() if not (external and k.startswith("vae."))}
    model = build_checked(build, lambda probe: check_state(path, probe, _shapes(remapped(probe.transformer)),
                                                           "the DALLE", dtypes))
    check_rotary_table(weights, model.transformer)
    training = training_state(obj, weights, model, path)
    model = finish(model, remapped(model.transformer), path, map_location)
    return LoadedCheckpoint(model=model, tokenizer=None, metadata=meta, source=SOURCE_LEGACY, kind="dalle",
                            config=model.config.to_dict(), path=path, training=training)



# ------------------------------------------------------------------------------------------------
# writing DALLE-pytorch files
# ------------------------------------------------------------------------------------------------

#: DALLE-pytorch 1.6.6's DALLE constructor arguments, as its train_dalle.py stores them in `hparams`
_HPARAMS = ("num_text_tokens", "text_seq_len", "dim", "depth", "heads", "dim_head", "reversible", "loss_img_weight",
            "attn_types", "ff_dropout", "attn_dropout", "stable", "sandwich_norm", "shift_tokens", "rotary_emb",
            "shared_attn_ids", "shared_ff_ids", "share_input_output_emb")
#: settings of ours that DALLE-pytorch 1.6.6 has fixed: (field, its value there)
_FIXED_THERE = (("ff_mult", 4), ("conv_kernel_size", 5), ("conv_dilation", 1))


def _plain(value: Any) -> Any:
    return [_plain(v) for v in value] if isinstance(value, (tuple, list)) else value


def dalle_pytorch_file(model: nn.Module, old_axial_names: bool = False) -> dict:
    """What DALLE-pytorch 1.6.6's scripts write for `model` (a DALLE: train_dalle.py's dict; a DiscreteVAE:
    train_vae.py's), which its `DALLE(vae=..., **hparams).load_state_dict(weights)` reads. ValueError for a
    model it cannot express (our own attention settings, a quantized or 'sparse' model)."""
    if isinstance(model, DiscreteVAE):
        return {"hparams": _plain(dict(model.config)), "weights": model.state_dict()}
    if not isinstance(model, DALLE):
        raise ValueError(f"a DALLE-pytorch file holds a DALLE or a DiscreteVAE, not a {type(model).__name__}")
    c = model.config
    if quantization_of(model) is not None:
        raise ValueError("a quantized DALLE cannot be written for DALLE-pytorch (its layers are float)")
    if "sparse" in c.attn_types:
        raise ValueError(f"this model has 'sparse' layers, which DALLE-pytorch would read as its own: "
                         f"{_UNSUPPORTED_ATTN['sparse']}")
    for name, there in _FIXED_THERE:
        if getattr(c, name) != there:
            raise ValueError(f"DALLE-pytorch 1.6.6 has no setting for {name}={getattr(c, name)} (its layers use {there})")
    if "conv_like" in c.attn_types and c.conv_variant != "up_left":
        raise ValueError("this model's conv_like layers are DALLE-pytorch <= 1.4's centred window; 1.6.6 reads "
                         "its own (up_left) window into the same weights")
    vae_class = vae_class_name(model.vae)
    return {
        "hparams": {name: _plain(getattr(c, name)) for name in _HPARAMS},
        "vae_params": _plain(dict(model.vae.config)) if vae_class == "DiscreteVAE" else None,
        "weights": dalle_pytorch_state_dict(model, old_axial_names),
        "vae_class_name": vae_class,
        "version": "1.6.6",  # the layout (DALLE-pytorch reads no version); who wrote it:
        "written_by": f"dalle_pytorch {__version__} (dalle-convert --to dalle_pytorch)",
    }


def save_dalle_pytorch(model: nn.Module, path, old_axial_names: bool = False) -> None:
    """Write `dalle_pytorch_file(model, old_axial_names)` to `path` with torch.save, atomically."""
    obj = dalle_pytorch_file(model, old_axial_names)
    atomic_write(path, lambda tmp: torch.save(obj, tmp))
