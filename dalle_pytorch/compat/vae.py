"""`dalle_pytorch.vae`: DALLE-pytorch's pretrained-VAE module (VQGanVAE, OpenAIDiscreteVAE, the pixel maps).

Nothing is downloaded: where DALLE-pytorch fetched the pretrained files into ~/.cache/dalle, these
classes read them from there or from the paths given, and a missing file is a one-line error naming it.
"""
from __future__ import annotations

import torch

from dalle_pytorch.models.openai_dvae import OpenAIDiscreteVAE
from dalle_pytorch.models.vqgan import VQGanVAE

__all__ = ["VQGanVAE", "OpenAIDiscreteVAE", "map_pixels", "unmap_pixels"]

_LOGIT_LAPLACE_EPS = 0.1


def map_pixels(x: torch.Tensor, eps: float = _LOGIT_LAPLACE_EPS) -> torch.Tensor:
    """Pixels in [0, 1] to the range OpenAI's dVAE encoder takes, [eps, 1 - eps]."""
    return (1 - 2 * eps) * x + eps


def unmap_pixels(x: torch.Tensor, eps: float = _LOGIT_LAPLACE_EPS) -> torch.Tensor:
    """The inverse of `map_pixels`, clamped to [0, 1]."""
    return torch.clamp((x - eps) / (1 - 2 * eps), 0, 1)
