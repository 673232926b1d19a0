"""DALLE-pytorch 1.6.6's `VQGanVAE`: taming-transformers' pretrained VQGAN (the modules of `taming.py`)
read from taming's own files (.yaml config, Lightning .ckpt) without taming or Lightning, as an
image tokenizer: `get_codebook_indices` (images in [0, 1] -> codes) and `decode` (codes -> images).
Codes are identical to taming's and pixels equal to float rounding (tests/models/test_vqgan.py).
"""
from __future__ import annotations

import math
import os
from typing import Any, Mapping, Optional

import torch
from torch import Tensor, nn

from dalle_pytorch.formats.files import PathLike
from dalle_pytorch.formats.pretrained_files import CACHE_DIR, default_files
from dalle_pytorch.formats.pt_files import check_state_dict_shapes, read_lightning_state_dict
from dalle_pytorch.formats.taming_yaml import read_yaml_subset
from dalle_pytorch.models.taming import MAX_PARAMETERS, VQGanConfig, VQModel
from dalle_pytorch.models.vae import CodeGrid

__all__ = ["VQGanVAE"]

# the default files (in CACHE_DIR) and DALLE-pytorch 1.6.6's addresses for them, quoted in the
# missing-file error (the f16 1024-code ImageNet VQGAN); model first, then config
DALLE_PYTORCH_URLS = {"vqgan.1024.model.ckpt": "https://heibox.uni-heidelberg.de/f/140747ba53464f49b476/?dl=1",
                      "vqgan.1024.config.yml": "https://heibox.uni-heidelberg.de/f/6ecf2af6c658432c8298/?dl=1"}


class VQGanVAE(CodeGrid, nn.Module):
    """DALLE-pytorch 1.6.6's VQGanVAE: a taming VQGAN (VQModel or GumbelVQ) read from its .yaml and .ckpt.

    Args:
        vqgan_model_path: taming / Lightning checkpoint (`state_dict` entry; `loss.*` keys dropped).
        vqgan_config_path: its taming config (.yaml; see dalle_pytorch.formats.taming_yaml).
            Without paths, both are looked for where DALLE-pytorch downloaded them,
            ~/.cache/dalle/vqgan.1024.model.ckpt and vqgan.1024.config.yml; nothing is downloaded.

    Attributes as DALLE-pytorch: image_size = 256 (fixed), num_tokens = n_embed, channels = 3,
    num_layers = log2(ddconfig.resolution / ddconfig.attn_resolutions[0]), is_gumbel, model.
    `from_config(config, state_dict)` builds one from `vae.config` and `vae.state_dict()`.
    """

    def __init__(self, vqgan_model_path: Optional[PathLike] = None, vqgan_config_path: Optional[PathLike] = None):
        super().__init__()
        model_path, config_path = _resolve_paths(vqgan_model_path, vqgan_config_path)
        doc = read_yaml_subset(config_path)
        if not isinstance(doc, dict) or "model" not in doc:
            raise ValueError(f"config {os.fspath(config_path)!r}: not a taming config (no top-level 'model' entry)")
        self._build(VQGanConfig.from_taming(doc["model"], f"config {os.fspath(config_path)!r}"), materialize=False)
        expected = {name: t.shape for name, t in self.model.state_dict().items()}
        state = read_lightning_state_dict(model_path, expected, drop_prefixes=("loss.",), what="VQGAN checkpoint")
        self.model.load_state_dict(state, assign=True)

    @classmethod
    def from_config(cls, config: Mapping[str, Any], state_dict: Optional[Mapping[str, Tensor]] = None) -> "VQGanVAE":
        """Build from `vae.config` (a taming `model:` section) and optionally `vae.state_dict()` (keys `model.*`).

        Without `state_dict` the weights are randomly initialised as taming initialises them.
        Names and shapes of `state_dict` are checked against the config before anything is copied.
        """
        vae = cls.__new__(cls)
        nn.Module.__init__(vae)
        cfg = VQGanConfig.from_taming(config, "VQGAN config")
        if state_dict is None:
            vae._build(cfg, materialize=True)
            return vae
        vae._build(cfg, materialize=False)
        expected = {name: t.shape for name, t in vae.state_dict().items()}
        check_state_dict_shapes(state_dict, expected, "VQGAN state_dict")
        vae.load_state_dict({k: v.detach().to("cpu", torch.float32) for k, v in state_dict.items()}, assign=True)
        return vae

    def _build(self, cfg: VQGanConfig, materialize: bool) -> None:
        dd = cfg.ddconfig
        if not dd.attn_resolutions:
            raise ValueError("ddconfig.attn_resolutions is empty: DALLE-pytorch derives num_layers from its first entry")
        with torch.device("meta"):  # count parameters before allocating any
            model = VQModel(cfg)
        count = sum(p.numel() for p in model.parameters())
        if count > MAX_PARAMETERS:
            raise ValueError(f"this VQGAN config has {count} parameters, more than the {MAX_PARAMETERS} allowed")
        self.model = VQModel(cfg) if materialize else model
        self.vqgan_config = cfg
        # DALLE-pytorch: f = resolution / attn_resolutions[0]; num_layers = int(log(f) / log(2))
        self.num_layers = int(math.log(dd.resolution / dd.attn_resolutions[0]) / math.log(2))
        self.channels = 3
        self.image_size = 256
        self.num_tokens = cfg.n_embed
        self.is_gumbel = cfg.gumbel

    @property
    def config(self) -> dict:
        """JSON-serialisable taming `model:` section; `VQGanVAE.from_config(vae.config, vae.state_dict())` rebuilds it."""
        return self.vqgan_config.to_taming()

    @torch.no_grad()
    def get_codebook_indices(self, img: Tensor) -> Tensor:
        """Images in [0, 1] (b, in_channels, h, w) -> codes (b, (h / 2**(L-1)) * (w / 2**(L-1))) long.

        A GumbelVQ samples its codes (gumbel noise from the global RNG), as in taming and DALLE-pytorch.
        """
        dd = self.vqgan_config.ddconfig
        if img.ndim != 4 or img.shape[1] != dd.in_channels or not img.is_floating_point():
            raise ValueError(f"images must be float (b, {dd.in_channels}, h, w) in [0, 1], got "
                             f"{img.dtype} {tuple(img.shape)}")
        return self.model.encode_indices(2 * img - 1)

    @torch.no_grad()
    def decode(self, img_seq: Tensor) -> Tensor:
        """Codes (b, n) with n a square -> images (b, out_ch, side, side) in [0, 1], side = sqrt(n) * 2**(L-1).

        Runs without autograd: only the current layer's activations are alive at any time.
        """
        side = self.square_code_side(img_seq)
        img = self.model.decode_indices(img_seq.long(), side)
        return (img.clamp(-1.0, 1.0) + 1) * 0.5

    @torch.no_grad()
    def decode_grid(self, codes: Tensor) -> Tensor:
        """A grid of codes (b, h, w) -> images (b, out_ch, h * 2**(L-1), w * 2**(L-1)) in [0, 1]: a canvas
        decodes as one image (convolutions, and the decoder's attention spans the whole grid)."""
        h, w = self.check_grid(codes)
        img = self.model.decode_indices(codes.long().flatten(1), h, w)
        return (img.clamp(-1.0, 1.0) + 1) * 0.5

    def forward(self, img: Tensor) -> Tensor:
        raise NotImplementedError("VQGanVAE is frozen: use get_codebook_indices(images) and decode(codes)")


def _resolve_paths(model_path: Optional[PathLike], config_path: Optional[PathLike]) -> tuple[PathLike, PathLike]:
    if model_path is None and config_path is None:
        model, config = default_files(DALLE_PYTORCH_URLS, "VQGanVAE", "vqgan_model_path and vqgan_config_path")
        return model, config
    if model_path is None or config_path is None:
        raise ValueError("VQGanVAE needs both vqgan_model_path and vqgan_config_path (or neither, for the "
                         f"default files in {CACHE_DIR})")
    return model_path, config_path
