"""`dalle_pytorch.dalle_pytorch`: DALLE-pytorch's model module (DALLE, CLIP, DiscreteVAE and its helpers)."""
from __future__ import annotations

from functools import wraps

import torch

from dalle_pytorch.generation.sampling import gumbel_sample as _our_gumbel_sample
from dalle_pytorch.generation.sampling import top_k_filter
from dalle_pytorch.models.clip import CLIP
from dalle_pytorch.models.dalle import DALLE
from dalle_pytorch.models.vae import DiscreteVAE

__all__ = ["DALLE", "CLIP", "DiscreteVAE", "exists", "default", "always", "is_empty", "masked_mean",
           "prob_mask_like", "set_requires_grad", "eval_decorator", "top_k", "gumbel_sample"]


def exists(val) -> bool:
    return val is not None


def default(val, d):
    return val if val is not None else d


class always:
    """A callable that returns `val` whatever it is called with."""

    def __init__(self, val):
        self.val = val

    def __call__(self, *args, **kwargs):
        return self.val


def is_empty(t: torch.Tensor) -> bool:
    return t.nelement() == 0


def masked_mean(t: torch.Tensor, mask: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """The mean of `t` over `dim` where `mask` (b, n) is True."""
    t = t.masked_fill(~mask[:, :, None], 0.0)
    return t.sum(dim=dim) / mask.sum(dim=dim)[..., None]


def prob_mask_like(shape, prob: float, device) -> torch.Tensor:
    """A boolean mask of `shape`, each entry True with probability `prob`."""
    return torch.zeros(shape, device=device).float().uniform_(0, 1) < prob


def set_requires_grad(model: torch.nn.Module, value: bool) -> None:
    for param in model.parameters():
        param.requires_grad = value


def eval_decorator(fn):
    """Run a model method in eval mode, restoring the training mode after."""
    @wraps(fn)
    def inner(model, *args, **kwargs):
        was_training = model.training
        model.eval()
        try:
            return fn(model, *args, **kwargs)
        finally:
            model.train(was_training)
    return inner


def top_k(logits: torch.Tensor, thres: float = 0.5) -> torch.Tensor:
    """Keep the top max(1, int((1 - thres) * V)) logits of each row, -inf elsewhere (DALLE-pytorch's
    `top_k`; ties at the threshold are all kept)."""
    return top_k_filter(logits, thres)


def gumbel_sample(t: torch.Tensor, temperature: float = 1.0, dim: int = -1) -> torch.Tensor:
    """An index drawn from softmax(t / temperature) along `dim` (the Gumbel-max trick)."""
    if dim not in (-1, t.dim() - 1):
        t = t.movedim(dim, -1)
    return _our_gumbel_sample(t, temperature=temperature)
