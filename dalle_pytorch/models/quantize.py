"""`quantize(model, "int8" | "int4")`: a DALLE whose transformer multiplies by int8 or int4 weights.

Every Linear of the transformer (attention's qkv and output projections, the feed-forwards) and the
output projection to the logits become `QuantizedLinear`s (dalle_pytorch.nn.quantized); the
embeddings, the norms and the VAE stay as they are (so does the output projection of a model that
shares it with the embeddings: `share_input_output_emb`).  The quantized model samples through the
same cached step as any other (the kernels' layouts are packed once per generation, beside the KV
cache), is saved and loaded by `dalle_pytorch.save` / `load_checkpoint` with its integer weights and
scales (the file's header says how they were made), and is for inference only.
"""
from __future__ import annotations

from typing import Optional

from torch import nn

from dalle_pytorch.models.dalle import DALLE
from dalle_pytorch.nn.quantized import INT4_GROUPS, QUANTIZE_MODES, QuantizedLinear

__all__ = ["quantize", "quantization_of", "QUANTIZE_MODES", "INT4_GROUPS", "DEFAULT_INT4_GROUP"]

#: int4's default group: docs/benchmarks.md measures 32 / 64 / 128 (speed and logit error)
DEFAULT_INT4_GROUP = 64


def _targets(model: DALLE) -> list[tuple[nn.Module, str, nn.Linear]]:
    found = [(parent, name, child) for parent in model.transformer.modules()
             for name, child in parent.named_children() if isinstance(child, nn.Linear)]
    if not model.config.share_input_output_emb:
        found.append((model.to_logits, "1", model.to_logits[1]))
    return found


def quantize(model: DALLE, mode: str, group: Optional[int] = None, *, compute: bool = True) -> DALLE:
    """Replace the transformer's Linears (and the logits projection) by quantized ones, in place; returns `model`.

    mode: "int8" (per-channel weights, per-token dynamic activations) or "int4" (grouped weights,
    bfloat16 activations); group: int4's group of input channels (32, 64 or 128; default
    DEFAULT_INT4_GROUP, or the largest smaller group that divides every layer's input: 32 for dim 96). compute=False makes the quantized layers without computing them from the
    weights (their buffers are then loaded from a file: `load_checkpoint` does this).
    Quantizing a model twice is refused (its weights are already rounded: quantize the float model).
    """
    if not isinstance(model, DALLE):
        raise TypeError(f"quantize() takes a DALLE, got {type(model).__name__}")
    if mode not in QUANTIZE_MODES:
        raise ValueError(f"quantize mode must be one of {', '.join(QUANTIZE_MODES)}, got {mode!r}")
    if group is not None and mode != "int4":
        raise ValueError("group is int4's setting; int8 has one scale per output channel")
    already = quantization_of(model)
    if already is not None:
        raise ValueError(f"this model is already quantized ({already['mode']}); quantize the float model")
    targets = _targets(model)
    widths = sorted({linear.in_features for _, _, linear in targets})
    if mode == "int4":
        if group is None:  # the default where it divides every layer's input, else the largest group that does
            fits = [g for g in INT4_GROUPS if g <= DEFAULT_INT4_GROUP and all(w % g == 0 for w in widths)]
            if not fits:
                raise ValueError(f"int4 needs layer inputs divisible by a group of {', '.join(map(str, INT4_GROUPS))}; "
                                 f"this model's are {', '.join(map(str, widths))}")
            group = max(fits)
        elif group not in INT4_GROUPS:
            raise ValueError(f"int4 group must be one of {', '.join(map(str, INT4_GROUPS))}, got {group!r}")
        elif any(w % group for w in widths):
            raise ValueError(f"int4 group {group} does not divide this model's layer inputs ({', '.join(map(str, widths))}); "
                             f"pick a group that divides them, or leave it to the default")
    else:
        group = DEFAULT_INT4_GROUP  # unused by int8
    for parent, name, linear in targets:
        if compute:
            layer = QuantizedLinear.from_linear(linear, mode, group)
        else:
            w = linear.weight
            layer = QuantizedLinear(linear.in_features, linear.out_features, linear.bias is not None, mode, group,
                                    dtype=w.dtype, device=w.device)
        setattr(parent, name, layer)
    return model.eval()


def quantization_of(model: nn.Module) -> Optional[dict]:
    """{"mode": ..., "group": ...} of a model quantized by `quantize` (group only for int4), or None."""
    layers = [m for m in model.modules() if isinstance(m, QuantizedLinear)]
    if not layers:
        return None
    first = layers[0]
    return {"mode": first.mode, "group": first.group} if first.mode == "int4" else {"mode": first.mode}
