"""`dalle_pytorch.transformer`: DALLE-pytorch 1.6.6's `Transformer` (its constructor and forward) over ours.

    Transformer(dim=512, depth=4, seq_len=text_seq_len + image_fmap_size ** 2, image_fmap_size=16, ...)(x)

`seq_len` counts the positions the transformer sees as DALLE-pytorch's DALLE builds it: T text positions
(with <bos>) and F * F - 1 image positions, i.e. text_seq_len + F * F; forward takes (b, n <= seq_len, dim)
embeddings and returns (b, n, dim). It is this package's `models.transformer.Transformer` (the same layers,
kernels and cached `step`), so `load_state_dict` takes DALLE-pytorch's key layout as well as ours.
"""
from __future__ import annotations

from dalle_pytorch.models.config import DALLEConfig
from dalle_pytorch.models.dalle_pytorch_keys import accept_their_keys
from dalle_pytorch.models.transformer import Transformer as _Ours

__all__ = ["Transformer"]


class Transformer(_Ours):
    """DALLE-pytorch's Transformer arguments (keyword-only, as there); `sparse_attn` (DeepSpeed) and
    `causal=False` are refused; `ff_mult` must be an integer."""

    def __init__(self, *, dim, depth, seq_len, reversible=False, causal=True, heads=8, dim_head=64, ff_mult=4,
                 attn_dropout=0., ff_dropout=0., attn_types=None, image_fmap_size=None, sparse_attn=False,
                 stable=False, sandwich_norm=False, shift_tokens=False, rotary_emb=True, shared_attn_ids=None,
                 shared_ff_ids=None, optimize_for_inference=False):
        if not causal:
            raise ValueError("causal=False: this package's transformer is causal (DALLE-pytorch's DALLE always is)")
        if sparse_attn:
            raise ValueError("sparse_attn: DeepSpeed's block-sparse attention is not reproduced here; use "
                             "attn_types=('sparse',) for this package's block-sparse pattern")
        if image_fmap_size is None:
            raise ValueError("image_fmap_size is needed: the code grid's side (DALLE-pytorch's DALLE passes it)")
        if ff_mult != int(ff_mult):
            raise ValueError(f"ff_mult must be a whole number here, got {ff_mult}")
        image_len = image_fmap_size ** 2
        if seq_len < image_len:
            raise ValueError(f"seq_len {seq_len} is shorter than the {image_fmap_size} x {image_fmap_size} code grid")
        config = DALLEConfig(dim=dim, depth=depth, text_seq_len=seq_len - image_len, heads=heads, dim_head=dim_head,
                             reversible=reversible, attn_dropout=attn_dropout, ff_dropout=ff_dropout,
                             attn_types=attn_types, stable=stable, sandwich_norm=sandwich_norm,
                             shift_tokens=shift_tokens, rotary_emb=rotary_emb, shared_attn_ids=shared_attn_ids,
                             shared_ff_ids=shared_ff_ids, optimize_for_inference=optimize_for_inference,
                             ff_mult=int(ff_mult))
        super().__init__(config, text_len=seq_len + 1 - image_len, fmap_size=image_fmap_size)

    def forward(self, x, **kwargs):
        """(b, n, dim) -> (b, n, dim); DALLE-pytorch's cache keywords are not taken (cached steps: `step`)."""
        if kwargs:
            raise TypeError(f"Transformer.forward takes no {', '.join(sorted(kwargs))} here: cached decoding runs "
                            "through DALLE.generate_images (or Transformer.step with an InferenceCache)")
        return super().forward(x)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        accept_their_keys(state_dict, prefix, self, inner="transformer.")  # its keys are named as under a DALLE
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
