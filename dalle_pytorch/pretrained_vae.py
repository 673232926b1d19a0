"""The pretrained VAEs DALLE-pytorch's scripts select by flags: `--taming` (taming-transformers'
VQGAN, from `--vqgan_model_path` / `--vqgan_config_path`) and, with neither `--vae_path` nor
`--taming`, OpenAI's dVAE.

One rule for train_dalle.py and generate.py: `pretrained_vae_for_flags`. This version reads neither
VAE (that support is being added separately), so the rule answers with the reason and what to do
instead; the scripts already accept the flags and call it exactly where DALLE-pytorch would build
the pretrained VAE.
"""
from __future__ import annotations

from typing import Optional

from torch import nn

__all__ = ["PRETRAINED_VAE_MISSING", "pretrained_vae_for_flags", "unused_vqgan_flags"]

PRETRAINED_VAE_MISSING = "needs the pretrained VAE support, which this version of dalle_pytorch does not have yet"


def pretrained_vae_for_flags(taming: bool, vqgan_model_path: Optional[str] = None,
                             vqgan_config_path: Optional[str] = None) -> nn.Module:
    """The VAE DALLE-pytorch builds when no DiscreteVAE is given: VQGanVAE with `taming`, else OpenAI's dVAE.

    Raises ValueError (one line: what and what to do) until the pretrained VAEs are supported.
    """
    if taming:
        files = ", ".join(f for f in (vqgan_model_path, vqgan_config_path) if f) or "the default ImageNet VQGAN"
        raise ValueError(f"--taming (taming-transformers' VQGAN: {files}) {PRETRAINED_VAE_MISSING}; train a "
                         "DiscreteVAE with train_vae.py and pass it as --vae_path")
    raise ValueError(f"without --vae_path DALLE-pytorch uses OpenAI's pretrained dVAE, which {PRETRAINED_VAE_MISSING}; "
                     "train a DiscreteVAE with train_vae.py and pass it as --vae_path (or continue a DALLE with "
                     "--dalle_path)")


def unused_vqgan_flags(taming: bool, vqgan_model_path: Optional[str], vqgan_config_path: Optional[str],
                       why: str) -> Optional[str]:
    """A note when VQGAN flags are given but not used (`why`: what is used instead), as DALLE-pytorch ignores them."""
    given = [flag for flag, value in (("--taming", taming), ("--vqgan_model_path", vqgan_model_path),
                                      ("--vqgan_config_path", vqgan_config_path)) if value]
    if not given:
        return None
    return f"note: {', '.join(given)} ignored: {why}"
