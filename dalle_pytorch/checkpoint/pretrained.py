"""DALLE-pytorch's pretrained VAEs as its scripts choose them: the one rule behind every script's
`--taming`, `--vqgan_model_path`, `--vqgan_config_path` (and our `--openai_encoder_path`,
`--openai_decoder_path`).

    vae_from_flags(taming=True, vqgan_model_path="m.ckpt", vqgan_config_path="c.yaml")  -> VQGanVAE
    vae_from_flags(taming=True)                       -> VQGanVAE from ~/.cache/dalle (as DALLE-pytorch)
    vae_from_flags(openai=True)                       -> OpenAIDiscreteVAE from ~/.cache/dalle
    vae_from_flags()                                  -> None (nothing asked for)

Nothing is downloaded: a missing default file is an error naming it and where it came from.
"""
from __future__ import annotations

from typing import Optional

from torch import nn

from dalle_pytorch.errors import setting
from dalle_pytorch.formats.files import PathLike
from dalle_pytorch.models.openai_dvae import OpenAIDiscreteVAE
from dalle_pytorch.models.vqgan import VQGanVAE

__all__ = ["VAE_FLAGS", "vae_flags", "asks_for_vqgan", "vae_from_flags"]


#: DALLE-pytorch's pretrained-VAE settings, as `vae_from_flags` takes them (the flags of generate.py,
#: train_dalle.py and dalle-convert: cli/flags.add_vae_flags)
VAE_FLAGS = ("taming", "vqgan_model_path", "vqgan_config_path", "openai_encoder_path", "openai_decoder_path")


def vae_flags(settings) -> dict:
    """The `VAE_FLAGS` of an object holding them (parsed flags, a config), as keyword arguments of `vae_from_flags`."""
    return {name: getattr(settings, name) for name in VAE_FLAGS}


def asks_for_vqgan(flags: dict) -> bool:
    """Whether the `VAE_FLAGS` (as `vae_flags` gives them) ask for taming's VQGAN: `taming`, or either VQGAN path."""
    return bool(flags.get("taming")) or flags.get("vqgan_model_path") is not None \
        or flags.get("vqgan_config_path") is not None


def vae_from_flags(*, taming: bool = False, vqgan_model_path: Optional[PathLike] = None,
                   vqgan_config_path: Optional[PathLike] = None, openai: bool = False,
                   openai_encoder_path: Optional[PathLike] = None,
                   openai_decoder_path: Optional[PathLike] = None) -> Optional[nn.Module]:
    """The pretrained VAE the flags ask for, or None.

    The VQGAN paths imply --taming (DALLE-pytorch ignores them without it: here they are never
    silently ignored). Raises ValueError for contradicting flags, FileNotFoundError (naming each
    missing file) and the VAEs' own errors for files that cannot be read.
    """
    vqgan = asks_for_vqgan(dict(taming=taming, vqgan_model_path=vqgan_model_path, vqgan_config_path=vqgan_config_path))
    dvae = openai or openai_encoder_path is not None or openai_decoder_path is not None
    if vqgan and dvae:
        raise ValueError(f"{setting('taming')} / {setting('vqgan_model_path')} / {setting('vqgan_config_path')} and "
                         f"{setting('openai_encoder_path')} / {setting('openai_decoder_path')} ask for two different VAEs; "
                         "choose one")
    if vqgan:
        return VQGanVAE(vqgan_model_path, vqgan_config_path)
    if dvae:
        return OpenAIDiscreteVAE(openai_encoder_path, openai_decoder_path)
    return None
