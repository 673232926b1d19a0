"""`DALLEConfig`: every option of a DALLE (its VAE aside), validated once.

`DALLE(**kwargs)` (DALLE-pytorch's constructor) builds one and hands it down: the transformer and
its layers read their settings from it, and checkpoints store it as is (`to_dict`). A stored
config is read back with `DALLEConfig.from_dict`, so a file whose config holds nonsense gets the
same error as the constructor.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from itertools import cycle, islice
from typing import Any, Optional

from dalle_pytorch.nn.attention import KERNELS
from dalle_pytorch.nn.patterns import ATTN_TYPES, CONV_VARIANTS

__all__ = ["DALLEConfig"]

_NOT_SUPPORTED = {
    "mlp": "gMLP layers ('mlp', DALLE-pytorch 1.2.x) are not supported: DALLE-pytorch 1.2.2 passes "
           "rotary_pos_emb and mask to g-mlp-pytorch's gMLPBlock, which takes neither, so such models could not "
           "run there, and 1.4+ dropped them",
}


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def _ids(name: str, value: Any) -> Optional[tuple]:
    if value is None:
        return None
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        raise ValueError(f"{name} must be a sequence of ids (one per layer, cycled), got {value!r}")
    ids = tuple(value)
    if not ids:
        raise ValueError(f"{name} must not be empty")
    return ids


@dataclass(frozen=True)
class DALLEConfig:
    """The architecture (and dropout / kernel choices) of a DALLE; DALLE-pytorch 1.6's arguments first."""

    dim: int  # model width
    depth: int  # transformer layers
    num_text_tokens: int = 10000  # text vocabulary (id 0 = padding)
    text_seq_len: int = 256  # caption length T
    heads: int = 8
    dim_head: int = 64
    reversible: bool = False  # RevNet layers (activations recomputed in the backward pass)
    attn_dropout: float = 0.0
    ff_dropout: float = 0.0
    attn_types: tuple = ("full",)  # cycled over the layers: full, axial_row, axial_col, conv_like, sparse
    loss_img_weight: float = 7  # loss = (CE_text + w * CE_img) / (w + 1)
    stable: bool = False  # stable softmax and embedding gradient scaling
    sandwich_norm: bool = False  # a LayerNorm after each branch too
    shift_tokens: bool = True  # token shift (text: previous token; image: token above / to the left)
    rotary_emb: bool = True  # rotary positions (else learned text and axial image positions)
    shared_attn_ids: Optional[tuple] = None  # attention module id per layer (equal ids share weights), cycled
    shared_ff_ids: Optional[tuple] = None  # feed-forward module id per layer, cycled
    share_input_output_emb: bool = False  # token embeddings are rows of the output projection
    optimize_for_inference: bool = False  # every pattern as dense masked attention (kernel 'masked')
    attn_kernel: str = "auto"  # how sparse patterns train: 'auto' | 'pattern' | 'masked' (attention.py)
    ff_mult: int = 4  # feed-forward hidden width = dim * ff_mult
    conv_kernel_size: int = 5  # conv_like window (odd)
    conv_dilation: int = 1  # conv_like dilation
    conv_variant: str = "up_left"  # 'up_left' (DALLE-pytorch >= 1.5) or 'centred' (<= 1.4)
    sparse_block_size: int = 16  # sparse: block granularity
    sparse_num_local_blocks: int = 4  # sparse: causal local window in blocks
    sparse_num_random_blocks: Optional[int] = None  # sparse: random blocks per query block (None: N / block / 4)
    sparse_seed: int = 0  # sparse: seed of the random blocks (layer i uses sparse_seed + i)

    def __post_init__(self) -> None:
        def fix(name: str, value: Any) -> None:  # normalise a field of the frozen dataclass
            object.__setattr__(self, name, value)

        for name in ("dim", "depth", "num_text_tokens", "text_seq_len", "heads", "dim_head", "ff_mult",
                     "conv_kernel_size", "conv_dilation", "sparse_block_size", "sparse_num_local_blocks"):
            _positive_int(name, getattr(self, name))
        for name in ("attn_dropout", "ff_dropout"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
                raise ValueError(f"{name} must be a probability in [0, 1), got {value!r}")
        if isinstance(self.loss_img_weight, bool) or not isinstance(self.loss_img_weight, (int, float)) \
                or not 0 <= self.loss_img_weight < float("inf"):
            raise ValueError(f"loss_img_weight must be a finite number >= 0, got {self.loss_img_weight!r}")
        attn_types = self.attn_types
        if attn_types is None:
            attn_types = ("full",)
        elif isinstance(attn_types, str):
            attn_types = (attn_types,)
        attn_types = tuple(attn_types)
        if not attn_types:
            raise ValueError("attn_types must name at least one attention type, got an empty sequence")
        for t in attn_types:
            if t in _NOT_SUPPORTED:
                raise ValueError(_NOT_SUPPORTED[t])
            if t not in ATTN_TYPES:
                raise ValueError(f'attention type "{t}" is not valid; choose from {ATTN_TYPES}')
        fix("attn_types", attn_types)
        fix("shared_attn_ids", _ids("shared_attn_ids", self.shared_attn_ids))
        fix("shared_ff_ids", _ids("shared_ff_ids", self.shared_ff_ids))
        if self.attn_kernel not in KERNELS:
            raise ValueError(f"attention kernel must be one of {KERNELS}, got {self.attn_kernel!r}")
        if self.conv_variant not in CONV_VARIANTS:
            raise ValueError(f"conv_variant must be one of {CONV_VARIANTS}, got {self.conv_variant!r}")
        if self.conv_kernel_size % 2 != 1:
            raise ValueError(f"conv_kernel_size must be odd, got {self.conv_kernel_size}")
        if self.sparse_num_random_blocks is not None and (
                isinstance(self.sparse_num_random_blocks, bool) or not isinstance(self.sparse_num_random_blocks, int)
                or self.sparse_num_random_blocks < 0):
            raise ValueError(f"sparse_num_random_blocks must be an integer >= 0 or None, "
                             f"got {self.sparse_num_random_blocks!r}")

    # -- derived ----------------------------------------------------------------------------------

    def layer_attn_types(self) -> tuple:
        """The attention type of each of the `depth` layers (attn_types cycled)."""
        return tuple(islice(cycle(self.attn_types), self.depth))

    # -- (de)serialisation ------------------------------------------------------------------------

    def to_dict(self) -> dict:
        """JSON-serialisable keyword arguments: `DALLE(vae=vae, **config.to_dict())` rebuilds the model."""
        out = dataclasses.asdict(self)
        for name in ("attn_types", "shared_attn_ids", "shared_ff_ids"):
            if out[name] is not None:
                out[name] = list(out[name])
        return out

    @classmethod
    def from_dict(cls, data: dict) -> "DALLEConfig":
        """The config of a `to_dict` result (e.g. read from a checkpoint); unknown keys raise TypeError."""
        if not isinstance(data, dict):
            raise TypeError(f"a DALLE config must be a dict, got {type(data).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise TypeError(f"unknown DALLE config keys {unknown}")
        return cls(**data)

    def replace(self, **changes: Any) -> "DALLEConfig":
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)
