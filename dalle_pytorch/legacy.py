"""Read checkpoints written by DALLE-pytorch (lucidrains/DALLE-pytorch) into this package's layout.

One remapper for every layout DALLE-pytorch has written:
- pre-cache (<= 1.2): `transformer.layers.layers.{i}.{0,1}.fn.norm...`, `...fn.fn[.fn].to_qkv...`
- post-cache (>= 1.4): the same with extra `.fn` levels from the CachedAs/NonCached containers,
  with and without token shift;
- reversible: `transformer.layers.blocks.{i}.f.net...` / `.g.net...`;
- shared layers: one tensor saved under every layer that uses it (we keep one, after checking
  the copies are equal);
- share_input_output_emb: `text_emb.linear` / `image_emb.linear` duplicate `to_logits.1` (checked equal, then dropped);
- the rotary table `transformer.pos_emb` (derived from the config here: checked, then dropped).
conv_like changed its window in 1.5: older checkpoints get conv_variant='centred'.
Old releases lacked the shift_tokens / rotary_emb switches: `layout_hparams` reads them from the key layout.
"""
from __future__ import annotations

import re

import torch

# DALLE constructor arguments a DALLE-pytorch `hparams` dict may carry
_DALLE_KEYS = {
    "dim", "num_text_tokens", "text_seq_len", "depth", "heads", "dim_head", "reversible", "attn_dropout",
    "ff_dropout", "attn_types", "loss_img_weight", "stable", "sandwich_norm", "shift_tokens", "rotary_emb",
    "shared_attn_ids", "shared_ff_ids", "share_input_output_emb", "optimize_for_inference", "sparse_attn",
}
_UNSUPPORTED_ATTN = {
    "sparse": "DALLE-pytorch's 'sparse' layers use DeepSpeed's block-sparse layout, which this package does not reproduce",
    "mlp": "gMLP layers ('mlp') are not supported",
}


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded as asked, with the reason."""


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


def remap_state_dict(weights: dict, transformer) -> dict:
    """Map a DALLE-pytorch DALLE state dict onto this package's names.

    transformer: our Transformer built from the same config (it says which depth uses which
    shared attention / feed-forward module).  Raises CheckpointError on conflicting copies of a
    shared layer, and when `text_emb.linear.*` / `image_emb.linear.*` (share_input_output_emb)
    are not exact copies of `to_logits.1.*`.  Keys it does not understand are passed through
    unchanged so that a strict key check reports them.
    """
    out: dict[str, torch.Tensor] = {}

    def put(key, value, origin):
        if key in out:
            if out[key].shape != value.shape or not torch.equal(out[key], value):
                raise CheckpointError(f"'{origin}' differs from another copy of the shared parameter '{key}'; "
                                      "do shared_attn_ids / shared_ff_ids match the checkpoint?")
            return
        out[key] = value

    for key, value in weights.items():
        m = _BLOCK.match(key)
        if m:
            depth = int(m.group(1) if m.group(1) is not None else m.group(3))
            branch = ("attn", "ff")[int(m.group(2))] if m.group(2) is not None else {"f": "attn", "g": "ff"}[m.group(4)]
            rest = m.group(5)
            if rest == "scale":
                put(f"transformer.layers.{depth}.{branch}.scale", value, key)
                continue
            rest = re.sub(r"^fn\.", "", rest)  # the PreNorm level
            if rest.startswith(("norm.", "norm_out.")):
                put(f"transformer.layers.{depth}.{branch}.{rest}", value, key)
                continue
            inner = re.sub(r"^(?:fn\.)+", "", rest)  # CachedAs / PreShiftToken / NonCached levels
            if inner not in _INNER or depth >= transformer.depth:
                put(key, value, key)  # left for the strict check to report
                continue
            group, name = _INNER[inner]
            index = (transformer.attn_index if group == "attns" else transformer.ff_index)[depth]
            put(f"transformer.{group}.{index}.{name}", value, key)
        elif key == "transformer.pos_emb":
            continue  # checked by check_rotary_table
        elif key.startswith(("text_emb.linear.", "image_emb.linear.")):
            # share_input_output_emb: a second copy of to_logits.1; dropped once it is seen to be one
            twin = "to_logits.1." + key.split(".linear.", 1)[1]
            if twin not in weights or weights[twin].shape != value.shape or not torch.equal(weights[twin], value):
                raise CheckpointError(f"'{key}' should be a copy of '{twin}' (share_input_output_emb) but "
                                      f"{'the checkpoint has no ' + repr(twin) if twin not in weights else 'they differ'}; "
                                      "the checkpoint is corrupted or was not written by DALLE-pytorch")
            continue
        else:
            put(key, value, key)
    return out


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
