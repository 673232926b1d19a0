"""DALLE-pytorch's state-dict key layout, both ways: its names onto ours (`remap_state_dict`, used by
`DALLE.load_state_dict` and by the checkpoint loader) and ours onto its (`dalle_pytorch_state_dict`, which
DALLE-pytorch 1.6.6's `DALLE.load_state_dict` takes, for files it must read).

Its layout (1.4 and later): `transformer.layers.layers.{i}.{0 attention | 1 feed-forward}.` (reversible:
`transformer.layers.blocks.{i}.{f | g}.net.`), then `scale` (LayerScale), `fn.norm.*` / `fn.norm_out.*`
(PreNorm, sandwich), and the layer under its wrappers: `fn.` LayerScale -> PreNorm, `fn.` PreNorm -> the
branch, `fn.` CachedAs / NonCached around attention, and `fn.fn.` CachedAs + PreShiftToken with token
shift; a shared layer appears at every depth that uses it; `transformer.pos_emb` is the rotary table (a
buffer); `text_emb.linear.*` / `image_emb.linear.*` repeat `to_logits.1.*` with share_input_output_emb.
"""
from __future__ import annotations

import re
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Iterator, Optional

import torch
from torch import nn

from dalle_pytorch.errors import CheckpointError
from dalle_pytorch.nn.rotary import rotary_table

__all__ = ["legacy_key", "remap_state_dict", "check_rotary_table", "is_dalle_pytorch_layout", "accept_their_keys",
           "dalle_pytorch_state_dict", "their_layout", "native_state_dict", "emit_their_layout"]

#: True inside `native_state_dict()`: DALLE.state_dict() then holds our module names
_NATIVE: ContextVar[bool] = ContextVar("dalle_pytorch_native_state_dict", default=False)

_AXIAL_WEIGHT = re.compile(r"^image_pos_emb\.weights_(\d+)$")
_BLOCK = re.compile(r"^transformer\.layers\.(?:layers\.(\d+)\.([01])|blocks\.(\d+)\.([fg])\.net)\.(.+)$")
_INNER = {
    "to_qkv.weight": ("attns", "to_qkv.weight"),
    "to_out.0.weight": ("attns", "to_out.weight"),
    "to_out.0.bias": ("attns", "to_out.bias"),
    "net.0.weight": ("ffs", "proj_in.weight"),
    "net.0.bias": ("ffs", "proj_in.bias"),
    "net.3.weight": ("ffs", "proj_out.weight"),
    "net.3.bias": ("ffs", "proj_out.bias"),
}
_OURS = {(group, name): inner for inner, (group, name) in _INNER.items()}


def legacy_key(key: str, transformer) -> Optional[str]:
    """This package's name for a DALLE-pytorch DALLE state-dict key (None: the rotary table, derived here).

    The `text_emb.linear.*` / `image_emb.linear.*` copies of share_input_output_emb name their twin
    `to_logits.1.*`; keys it does not understand come back unchanged (the strict key check reports them).
    """
    m = _BLOCK.match(key)
    if m:
        depth = int(m.group(1) if m.group(1) is not None else m.group(3))
        branch = ("attn", "ff")[int(m.group(2))] if m.group(2) is not None else {"f": "attn", "g": "ff"}[m.group(4)]
        rest = m.group(5)
        if rest == "scale":
            return f"transformer.layers.{depth}.{branch}.scale"
        rest = re.sub(r"^fn\.", "", rest)  # the PreNorm level
        if rest.startswith(("norm.", "norm_out.")):
            return f"transformer.layers.{depth}.{branch}.{rest}"
        inner = re.sub(r"^(?:fn\.)+", "", rest)  # CachedAs / PreShiftToken / NonCached levels
        if inner not in _INNER or depth >= transformer.depth:
            return key
        group, name = _INNER[inner]
        index = (transformer.attn_index if group == "attns" else transformer.ff_index)[depth]
        return f"transformer.{group}.{index}.{name}"
    if key == "transformer.pos_emb":
        return None
    if key.startswith(("text_emb.linear.", "image_emb.linear.")):
        return "to_logits.1." + key.split(".linear.", 1)[1]
    m = _AXIAL_WEIGHT.match(key)
    if m:  # axial_positional_embedding <= 0.2.1 names them weights_0, 0.3 and later weights.0
        return f"image_pos_emb.weights.{m.group(1)}"
    return key


def is_dalle_pytorch_layout(keys) -> bool:
    """Whether state-dict keys (relative to the DALLE) are DALLE-pytorch's layout rather than ours."""
    return any(_BLOCK.match(k) or k == "transformer.pos_emb" or k.startswith(("text_emb.linear.", "image_emb.linear."))
               or _AXIAL_WEIGHT.match(k) for k in keys)


def remap_state_dict(weights: dict, transformer) -> dict:
    """Map a DALLE-pytorch DALLE state dict onto this package's names (`legacy_key`).

    transformer: our Transformer built from the same config (it says which depth uses which
    shared attention / feed-forward module).  Raises CheckpointError on conflicting copies of a
    shared layer, and when `text_emb.linear.*` / `image_emb.linear.*` (share_input_output_emb)
    are not exact copies of `to_logits.1.*`.  Keys it does not understand are passed through
    unchanged so that a strict key check reports them.
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in weights.items():
        target = legacy_key(key, transformer)
        if target is None:
            continue  # the rotary table: checked by check_rotary_table
        if key.startswith(("text_emb.linear.", "image_emb.linear.")):
            # share_input_output_emb: a second copy of to_logits.1; dropped once it is seen to be one
            twin = target
            if twin not in weights or weights[twin].shape != value.shape or not torch.equal(weights[twin], value):
                raise CheckpointError(f"'{key}' should be a copy of '{twin}' (share_input_output_emb) but "
                                      f"{'the checkpoint has no ' + repr(twin) if twin not in weights else 'they differ'}; "
                                      "the checkpoint is corrupted or was not written by DALLE-pytorch")
            continue
        if target in out:
            if out[target].shape != value.shape or not torch.equal(out[target], value):
                raise CheckpointError(f"'{key}' differs from another copy of the shared parameter '{target}'; "
                                      "do shared_attn_ids / shared_ff_ids match the checkpoint?")
            continue
        out[target] = value
    return out


def accept_their_keys(state_dict: dict, prefix: str, transformer, inner: str = "") -> None:
    """`load_state_dict`'s hook: the DALLE-pytorch keys under `prefix` of `state_dict` renamed to ours, in place
    (shared copies and the rotary table checked); our own keys are left as they are. inner: what the names
    below `prefix` lack of a DALLE's ("transformer." for a bare Transformer)."""
    keys = [k for k in state_dict if k.startswith(prefix)]
    local = {inner + k[len(prefix):]: state_dict[k] for k in keys}
    if not is_dalle_pytorch_layout(local):
        return
    check_rotary_table(local, transformer)
    for k in keys:
        del state_dict[k]
    for k, v in remap_state_dict(local, transformer).items():
        state_dict[prefix + k[len(inner):]] = v


def check_rotary_table(weights: dict, transformer) -> None:
    """The stored rotary table must equal the one we derive from the config."""
    table = weights.get("transformer.pos_emb")
    if table is None or not transformer.rotary_emb:
        if table is not None:
            raise CheckpointError("checkpoint has a rotary table (transformer.pos_emb) but rotary_emb=False")
        return
    ours = torch.atan2(transformer.rot_sin, transformer.rot_cos)
    theirs = table.reshape(table.shape[-2], table.shape[-1]).float()
    if theirs.shape != ours.shape or not torch.allclose(torch.atan2(theirs.sin(), theirs.cos()), ours, atol=1e-4):
        raise CheckpointError("the checkpoint's rotary table (transformer.pos_emb) differs from the one this config "
                              f"gives ({tuple(theirs.shape)} vs {tuple(ours.shape)}); dim_head, text_seq_len or the "
                              "VAE's image size do not match")


@contextmanager
def native_state_dict() -> Iterator[None]:
    """Within the block (this thread or task), `DALLE.state_dict()` holds our module names, as our own
    checkpoints, FSDP2's distributed state dicts and the optimizer-by-name code need; outside it, DALLE-pytorch's."""
    token = _NATIVE.set(True)
    try:
        yield
    finally:
        _NATIVE.reset(token)


def emit_their_layout(module: nn.Module, state_dict: dict, prefix: str, local_metadata) -> None:
    """DALLE's state-dict post-hook: its keys (under `prefix`) renamed in place to DALLE-pytorch 1.6.6's layout,
    so `torch.save(dalle.state_dict())` (what DALLE-pytorch's train_dalle.py writes) loads in DALLE-pytorch too;
    `load_state_dict` takes both layouts.  Not inside `native_state_dict()`, and not for a model DALLE-pytorch
    cannot express (a quantized one): those keep our names."""
    if _NATIVE.get():
        return
    keys = [k for k in state_dict if k.startswith(prefix)]
    theirs = their_layout({k[len(prefix):]: state_dict[k] for k in keys}, module)
    if theirs is None:
        return
    for k in keys:
        del state_dict[k]
    for k, v in theirs.items():
        state_dict[prefix + k] = v


def dalle_pytorch_state_dict(model: nn.Module, old_axial_names: bool = False) -> dict:
    """A DALLE's weights in DALLE-pytorch 1.6.6's layout, as its `DALLE.state_dict()` would hold them (every key
    it has, shared layers at each depth, the rotary table, the tied embeddings' copies), VAE included.

    old_axial_names: the image position embeddings as axial_positional_embedding <= 0.2.1 names them
    (`weights_0`), for a DALLE-pytorch installed beside that release; else `weights.0` (0.3 and later)."""
    with native_state_dict():
        ours = model.state_dict()
    theirs = their_layout(ours, model, old_axial_names)
    if theirs is None:
        raise ValueError("this DALLE has layers DALLE-pytorch does not have (a quantized model?): no layout of its")
    return theirs


def their_layout(ours: dict, model: nn.Module, old_axial_names: bool = False) -> Optional[dict]:
    """`ours` (a DALLE's state dict in our names) in DALLE-pytorch 1.6.6's names (see `dalle_pytorch_state_dict`),
    or None when a transformer tensor has no name there (a quantized layer's)."""
    if old_axial_names:
        ours = {re.sub(r"^image_pos_emb\.weights\.(\d+)$", r"image_pos_emb.weights_\1", k): v for k, v in ours.items()}
    t, c = model.transformer, model.config
    out: dict[str, torch.Tensor] = {}
    placed: set[str] = set()  # our transformer keys given a name of theirs
    for key, value in ours.items():
        if not key.startswith(("transformer.", "to_logits.")):
            out[key] = value
    if c.rotary_emb:
        text_len = model.text_seq_len + 1
        out["transformer.pos_emb"] = rotary_table(c.dim_head, text_len, model.fmap_size)[None]
    shift = 2 if c.shift_tokens else 0
    for depth in range(t.depth):
        for b, (branch, group, index) in enumerate((("attn", "attns", t.attn_index[depth]),
                                                    ("ff", "ffs", t.ff_index[depth]))):
            prefix = (f"transformer.layers.blocks.{depth}.{'fg'[b]}.net." if c.reversible
                      else f"transformer.layers.layers.{depth}.{b}.")
            mine = f"transformer.layers.{depth}.{branch}."
            for key, value in ours.items():
                if key.startswith(mine):
                    rest = key[len(mine):]
                    out[prefix + (rest if rest == "scale" else "fn." + rest)] = value
                    placed.add(key)
            levels = "fn." * ((3 if branch == "attn" else 2) + shift)
            layer = f"transformer.{group}.{index}."
            for key, value in ours.items():
                if key.startswith(layer):
                    inner = _OURS.get((group, key[len(layer):]))
                    if inner is None:
                        return None
                    out[prefix + levels + inner] = value
                    placed.add(key)
    if any(k.startswith("transformer.") and k not in placed for k in ours):
        return None
    for key, value in ours.items():
        if key.startswith("to_logits."):
            out[key] = value
    if c.share_input_output_emb:  # SharedEmbedding holds the output Linear as a submodule there
        for name in ("weight", "bias"):
            out[f"text_emb.linear.{name}"] = ours[f"to_logits.1.{name}"]
            out[f"image_emb.linear.{name}"] = ours[f"to_logits.1.{name}"]
    return out
