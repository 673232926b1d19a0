"""`dalle_pytorch.attention`: DALLE-pytorch 1.6.6's attention layers (constructors and forward) over ours.

* `Attention(dim, seq_len, causal, heads, dim_head, dropout, stable, static_mask)`: causal attention over any
  sequence, with DALLE-pytorch's optional key mask (b, n), static mask (n, n) and rotary table.
* `SparseAxialCausalAttention(..., image_size, axis)` and `SparseConvCausalAttention(..., image_size,
  kernel_size, dilation)`: this package's axial_row / axial_col (axis 0 / 1) and conv_like patterns (the
  up_left window of DALLE-pytorch >= 1.5), through their kernels.
* `SparseAttention`: DeepSpeed's block-sparse layer is not reproduced; constructing one says so.

They compute what DALLE-pytorch's compute (tests/compat/test_dalle_pytorch_modules.py, against outputs its
own layers gave) and `load_state_dict` takes their keys (`to_out.0.*`); their own `state_dict()` names the
output projection `to_out.*`. A `rotary_pos_emb` is DALLE-pytorch's table of angles (1, n, r)
(`Transformer.pos_emb` there); the cache keywords of its Attention are refused (cached decoding:
`DALLE.generate_images`).
"""
from __future__ import annotations

import torch
from torch import nn

from dalle_pytorch.nn.attention import Attention as _PatternAttention
from dalle_pytorch.nn.attention import attend
from dalle_pytorch.nn.patterns import PatternSpec, pattern_mask

__all__ = ["Attention", "SparseConvCausalAttention", "SparseAxialCausalAttention", "SparseAttention"]


def _rotary(pos_emb, n: int):
    """(cos, sin) each (n, r) of DALLE-pytorch's angle table (..., N, r), or None."""
    if pos_emb is None:
        return None
    angles = pos_emb.reshape(-1, pos_emb.shape[-2], pos_emb.shape[-1])[0, :n]
    return angles.cos(), angles.sin()


def _their_to_out(state_dict, prefix: str) -> None:
    """DALLE-pytorch's `to_out.0.*` (a Sequential of the Linear and a Dropout) as our `to_out.*`."""
    for name in ("weight", "bias"):
        theirs = f"{prefix}to_out.0.{name}"
        if theirs in state_dict:
            state_dict[f"{prefix}to_out.{name}"] = state_dict.pop(theirs)


class _Layer(_PatternAttention):
    """One of this package's attention layers whose `load_state_dict` takes DALLE-pytorch's key names too."""

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        _their_to_out(state_dict, prefix)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class Attention(_Layer):
    """DALLE-pytorch's `Attention`: softmax(q k^T / sqrt(d)) v over the whole sequence, causal unless
    causal=False, masked by `static_mask` (n, n; True = may attend) and a key mask (b, n) when given.
    Our full-attention layer's projections, with those masks."""

    def __init__(self, dim, seq_len, causal=True, heads=8, dim_head=64, dropout=0., stable=False, static_mask=None):
        super().__init__(dim, heads=heads, dim_head=dim_head, dropout=dropout, stable=stable,
                         spec=PatternSpec("full", seq_len, 1))
        self.seq_len, self.causal = seq_len, causal
        self.register_buffer("static_mask", static_mask, persistent=False)

    def forward(self, x, mask=None, rotary_pos_emb=None, cache=None, cache_key=None):
        if cache is not None or cache_key is not None:
            raise TypeError("Attention takes no cache here: cached decoding runs through DALLE.generate_images")
        b, n, _ = x.shape
        q, k, v = self._qkv(x, _rotary(rotary_pos_emb, n))  # DALLE-pytorch rotates q, k and v
        allowed = torch.ones(1, 1, n, n, dtype=torch.bool, device=x.device)
        if self.causal:
            allowed = allowed.tril()
        if self.static_mask is not None:
            allowed = allowed & self.static_mask[:n, :n].bool()
        if mask is not None:
            allowed = allowed & mask.bool()[:, None, None, :]
        return self._out(attend(q, k, v, allowed, self.scale, self.stable))


class _Sparse(_Layer):
    """One of this package's patterns with DALLE-pytorch's constructor and forward."""

    def __init__(self, attn_type, dim, seq_len, image_size, heads, dim_head, dropout, stable, **pattern):
        text_len = seq_len + 1 - image_size ** 2
        if text_len < 1:
            raise ValueError(f"seq_len {seq_len} is shorter than the {image_size} x {image_size} code grid")
        spec = PatternSpec(attn_type, text_len, image_size, **pattern)
        super().__init__(dim, heads=heads, dim_head=dim_head, dropout=dropout, stable=stable, spec=spec,
                         pattern=pattern_mask(spec))
        self.seq_len, self.image_size = seq_len, image_size

    def forward(self, x, mask=None, rotary_pos_emb=None):
        if mask is not None and not bool(mask.all()):
            raise ValueError("a text padding mask is not taken here (DALLE-pytorch's DALLE never passes one)")
        return super().forward(x, rotary=_rotary(rotary_pos_emb, x.shape[1]))


class SparseAxialCausalAttention(_Sparse):
    """Text attends causally to text; each image code to the text and, causally, to its row (axis 0) or its
    column (axis 1): this package's axial_row / axial_col."""

    def __init__(self, dim, seq_len, image_size=32, axis=0, heads=8, dim_head=64, dropout=0., stable=False, **kwargs):
        if axis not in (0, 1):
            raise ValueError(f"axis must be 0 (a row) or 1 (a column), got {axis!r}")
        super().__init__("axial_row" if axis == 0 else "axial_col", dim, seq_len, image_size, heads, dim_head,
                         dropout, stable)
        self.axis = axis


class SparseConvCausalAttention(_Sparse):
    """Each image code attends to the text and to the earlier codes of its kernel_size x kernel_size window
    (dilated): this package's conv_like, DALLE-pytorch >= 1.5's up_left window."""

    def __init__(self, dim, seq_len, image_size=32, kernel_size=5, dilation=1, heads=8, dim_head=64, dropout=0.,
                 stable=False, **kwargs):
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd, got {kernel_size}")
        super().__init__("conv_like", dim, seq_len, image_size, heads, dim_head, dropout, stable,
                         kernel_size=kernel_size, dilation=dilation)
        self.kernel_size, self.dilation = kernel_size, dilation


class SparseAttention(nn.Module):
    """DeepSpeed's block-sparse attention (DALLE-pytorch's `sparse_attn=True`): not reproduced here."""

    def __init__(self, *args, **kwargs):
        raise ValueError("SparseAttention is DeepSpeed's block-sparse attention, which this package does not reproduce; "
                         "DALLE(attn_types=('sparse',)) is this package's block-sparse pattern (another layout)")
