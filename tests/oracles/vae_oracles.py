"""The reference implementations the pretrained-VAE tests compare with, and files in their formats.

taming-transformers-rom1504 0.0.6 and dall-e 0.1 are test-only oracles (installed by .ci/run with
--no-deps). taming's `models/vqgan.py` imports pytorch_lightning and `taming.main` (torchvision,
omegaconf) at the top, for training only; `taming_models()` imports the real module with two
stand-ins present just during that import: `pytorch_lightning.LightningModule` = nn.Module and
`taming.main.instantiate_from_config` = taming's own three lines. VQModel / GumbelVQ themselves,
the encoder, decoder and quantizers are taming's.
"""
from __future__ import annotations

import importlib
import os
import sys
import types
from math import sqrt
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml
from einops import rearrange
from torch import nn

ORACLES = "pip install --no-deps taming-transformers-rom1504==0.0.6 dall-e==0.1"


def require(module: str):
    """Import a test oracle; without it the test is skipped, except in CI (.ci/run sets DALLE_PYTORCH_CI=1
    and installs the oracles), where a missing oracle is a failure."""
    if os.environ.get("DALLE_PYTORCH_CI"):
        return importlib.import_module(module)
    import pytest

    return pytest.importorskip(module, reason=f"the test oracle {module!r} is not installed ({ORACLES})")


def taming_models():
    """(VQModel, GumbelVQ) from the real taming.models.vqgan."""
    require("taming")
    if "taming.models.vqgan" not in sys.modules:
        def instantiate_from_config(config):  # taming/main.py
            module, cls = config["target"].rsplit(".", 1)
            return getattr(importlib.import_module(module, package=None), cls)(**config.get("params", dict()))

        pl = types.ModuleType("pytorch_lightning")
        pl.LightningModule = nn.Module
        main = types.ModuleType("taming.main")
        main.instantiate_from_config = instantiate_from_config
        saved = {name: sys.modules.get(name) for name in ("pytorch_lightning", "taming.main")}
        sys.modules.update({"pytorch_lightning": pl, "taming.main": main})
        try:
            importlib.import_module("taming.models.vqgan")
        finally:
            for name, module in saved.items():
                if module is None:
                    sys.modules.pop(name, None)
                else:
                    sys.modules[name] = module
    vqgan = sys.modules["taming.models.vqgan"]
    return vqgan.VQModel, vqgan.GumbelVQ


def taming_model_section(ddconfig: dict, n_embed: int, embed_dim: int, gumbel: bool = False) -> dict:
    """A taming config's `model:` section as taming writes it (training entries included, which readers ignore)."""
    params = {"embed_dim": embed_dim, "n_embed": n_embed, "ddconfig": ddconfig,
              "lossconfig": {"target": "torch.nn.Identity"}}
    if gumbel:
        params["kl_weight"] = 1.0e-08
        params["temperature_scheduler_config"] = {
            "target": "taming.lr_scheduler.LambdaWarmUpCosineScheduler",
            "params": {"warm_up_steps": 0, "max_decay_steps": 1000001, "lr_start": 0.9, "lr_max": 0.9, "lr_min": 1.0e-06}}
    target = "taming.models.vqgan.GumbelVQ" if gumbel else "taming.models.vqgan.VQModel"
    return {"base_learning_rate": 4.5e-06, "target": target, "params": params}


def build_taming(section: dict, seed: int = 0) -> nn.Module:
    """The real taming model for `section`, with every parameter perturbed so that each layer matters."""
    VQModel, GumbelVQ = taming_models()
    cls = GumbelVQ if section["target"].endswith("GumbelVQ") else VQModel
    torch.manual_seed(seed)
    model = cls(**section["params"])
    perturb(model, seed)
    return model.eval()


def perturb(model: nn.Module, seed: int, scale: float = 0.1) -> None:
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale * (p.std() if p.numel() > 1 and p.std() > 0 else 1))


def save_taming_files(model: nn.Module, section: dict, folder: Path, name: str = "vqgan") -> tuple[Path, Path]:
    """Write `name`.ckpt (a Lightning-style dict, with loss.* weights and optimizer states) and `name`.yaml."""
    state = dict(model.state_dict())
    state["loss.discriminator.main.0.weight"] = torch.randn(8, 3, 4, 4)  # taming's checkpoints carry the loss too
    ckpt = {"epoch": 3, "global_step": 1234, "pytorch-lightning_version": "1.0.8", "state_dict": state,
            "optimizer_states": [{"state": {0: {"exp_avg": torch.randn(4, 4)}}, "param_groups": [{"lr": 4.5e-06}]}],
            "lr_schedulers": []}
    ckpt_path, yaml_path = folder / f"{name}.ckpt", folder / f"{name}.yaml"
    torch.save(ckpt, ckpt_path)
    yaml_path.write_text(yaml.safe_dump({"model": section}, sort_keys=False))
    return ckpt_path, yaml_path


# DALLE-pytorch 1.6.6 VQGanVAE.get_codebook_indices / decode, transcribed onto a taming model
@torch.no_grad()
def dalle_pytorch_vqgan_codes(model: nn.Module, img: torch.Tensor, is_gumbel: bool) -> torch.Tensor:
    b = img.shape[0]
    img = (2 * img) - 1
    _, _, [_, _, indices] = model.encode(img)
    if is_gumbel:
        return rearrange(indices, "b h w -> b (h w)", b=b)
    return rearrange(indices, "(b n) -> b n", b=b)


@torch.no_grad()
def dalle_pytorch_vqgan_decode(model: nn.Module, img_seq: torch.Tensor, num_tokens: int, is_gumbel: bool) -> torch.Tensor:
    b, n = img_seq.shape
    one_hot_indices = F.one_hot(img_seq, num_classes=num_tokens).float()
    z = one_hot_indices @ model.quantize.embed.weight if is_gumbel else (one_hot_indices @ model.quantize.embedding.weight)
    z = rearrange(z, "b (h w) c -> b c h w", h=int(sqrt(n)))
    img = model.decode(z)
    return (img.clamp(-1.0, 1.0) + 1) * 0.5


@torch.no_grad()
def taming_decode_grid(model: nn.Module, codes: torch.Tensor, num_tokens: int, is_gumbel: bool) -> torch.Tensor:
    """A (b, h, w) grid of codes through taming's own decode (one-hot @ codebook, as above, any h x w)."""
    one_hot = F.one_hot(codes, num_classes=num_tokens).float()
    z = one_hot @ (model.quantize.embed.weight if is_gumbel else model.quantize.embedding.weight)
    return (model.decode(z.permute(0, 3, 1, 2)).clamp(-1.0, 1.0) + 1) * 0.5


@torch.no_grad()
def dall_e_decode_grid(dec: nn.Module, codes: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """A (b, h, w) grid of codes through dall_e's Decoder (as DALLE-pytorch decodes a square grid)."""
    from dall_e.utils import unmap_pixels

    z = F.one_hot(codes, num_classes=num_tokens).permute(0, 3, 1, 2).float()
    return unmap_pixels(torch.sigmoid(dec(z).float()[:, :3]))


# DALLE-pytorch 1.6.6 OpenAIDiscreteVAE.get_codebook_indices / decode, on dall_e modules
@torch.no_grad()
def dalle_pytorch_dvae_codes(enc: nn.Module, img: torch.Tensor) -> torch.Tensor:
    img = 0.8 * img + 0.1  # DALLE-pytorch's map_pixels
    z_logits = enc.blocks(img)
    return rearrange(torch.argmax(z_logits, dim=1), "b h w -> b (h w)")


@torch.no_grad()
def dalle_pytorch_dvae_decode(dec: nn.Module, img_seq: torch.Tensor, num_tokens: int) -> torch.Tensor:
    from dall_e.utils import unmap_pixels

    b, n = img_seq.shape
    img_seq = rearrange(img_seq, "b (h w) -> b h w", h=int(sqrt(n)))
    z = rearrange(F.one_hot(img_seq, num_classes=num_tokens), "b h w c -> b c h w").float()
    x_stats = dec(z).float()
    return unmap_pixels(torch.sigmoid(x_stats[:, :3]))


def build_dall_e(n_hid: int = 64, n_blk_per_group: int = 1, vocab_size: int = 512, n_init: int = 32, seed: int = 0):
    """Real dall_e Encoder and Decoder (their validators need n_hid >= 64, vocab_size >= 512), perturbed."""
    dall_e = require("dall_e")
    Decoder, Encoder = dall_e.Decoder, dall_e.Encoder

    torch.manual_seed(seed)
    enc = Encoder(n_hid=n_hid, n_blk_per_group=n_blk_per_group, vocab_size=vocab_size)
    dec = Decoder(n_hid=n_hid, n_blk_per_group=n_blk_per_group, vocab_size=vocab_size, n_init=n_init)
    perturb(enc, seed)
    perturb(dec, seed + 7)
    return enc, dec


# taming's released VQGAN configs, as OmegaConf wrote the model.yaml / *.config.yml next to their checkpoints
REAL_CONFIGS = {
    # vqgan_imagenet_f16_1024 (DALLE-pytorch's default VQGAN), as OmegaConf wrote its model.yaml
    "f16_1024": """\
model:
  base_learning_rate: 4.5e-06
  target: taming.models.vqgan.VQModel
  params:
    embed_dim: 256
    n_embed: 1024
    ddconfig:
      double_z: false
      z_channels: 256
      resolution: 256
      in_channels: 3
      out_ch: 3
      ch: 128
      ch_mult:
      - 1
      - 1
      - 2
      - 2
      - 4
      num_res_blocks: 2
      attn_resolutions:
      - 16
      dropout: 0.0
    lossconfig:
      target: taming.modules.losses.vqperceptual.VQLPIPSWithDiscriminator
      params:
        disc_conditional: false
        disc_in_channels: 3
        disc_start: 250001
        disc_weight: 0.8
        codebook_weight: 1.0
""",
    # vqgan_imagenet_f16_16384
    "f16_16384": """\
model:
  base_learning_rate: 4.5e-06
  target: taming.models.vqgan.VQModel
  params:
    embed_dim: 256
    n_embed: 16384
    monitor: val/rec_loss
    ddconfig:
      double_z: false
      z_channels: 256
      resolution: 256
      in_channels: 3
      out_ch: 3
      ch: 128
      ch_mult:
      - 1
      - 1
      - 2
      - 2
      - 4
      num_res_blocks: 2
      attn_resolutions:
      - 16
      dropout: 0.0
    lossconfig:
      target: taming.modules.losses.vqperceptual.VQLPIPSWithDiscriminator
      params:
        disc_conditional: false
        disc_in_channels: 3
        disc_start: 0
        disc_weight: 0.75
        disc_num_layers: 2
        codebook_weight: 1.0
""",
    # vqgan_gumbel_f8 (8192 codes)
    "gumbel_f8_8192": """\
model:
  base_learning_rate: 4.5e-06
  target: taming.models.vqgan.GumbelVQ
  params:
    kl_weight: 1.0e-08
    embed_dim: 256
    n_embed: 8192
    monitor: val/rec_loss
    temperature_scheduler_config:
      target: taming.lr_scheduler.LambdaWarmUpCosineScheduler
      params:
        warm_up_steps: 0
        max_decay_steps: 1000001
        lr_start: 0.9
        lr_max: 0.9
        lr_min: 1.0e-06
    ddconfig:
      double_z: false
      z_channels: 256
      resolution: 256
      in_channels: 3
      out_ch: 3
      ch: 128
      ch_mult:
      - 1
      - 1
      - 2
      - 4
      num_res_blocks: 2
      attn_resolutions:
      - 32
      dropout: 0.0
    lossconfig:
      target: taming.modules.losses.vqperceptual.DummyLoss
""",
}
