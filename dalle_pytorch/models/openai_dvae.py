"""OpenAI's discrete VAE of DALL-E (Ramesh et al. 2021, https://arxiv.org/abs/2102.12092) as
DALLE-pytorch 1.6.6's `OpenAIDiscreteVAE`, read from OpenAI's `encoder.pkl` / `decoder.pkl`
without the `dall_e` package and without running their pickles.

Architecture (openai/DALL-E `dall_e/encoder.py`, `decoder.py`), 4 groups of `n_blk_per_group`
residual blocks, each block `id_path + post_gain * res_path` with post_gain = 1 / (4 * n_blk_per_group)**2:

    Encoder  blocks.input 7x7 conv (n_hid) -> group_1 (n_hid) maxpool -> group_2 (2 n_hid) maxpool
             -> group_3 (4 n_hid) maxpool -> group_4 (8 n_hid) -> output: relu, 1x1 conv to vocab_size logits
             EncoderBlock res_path: relu, 3x3, relu, 3x3, relu, 3x3, relu, 1x1 (hidden width n_out / 4)
    Decoder  blocks.input 1x1 conv (vocab_size -> n_init) -> group_1 (8 n_hid) upsample -> group_2 (4 n_hid)
             upsample -> group_3 (2 n_hid) upsample -> group_4 (n_hid) -> output: relu, 1x1 conv to 2 * 3 channels
             DecoderBlock res_path: relu, 1x1, relu, 3x3, relu, 3x3, relu, 3x3

A 256 x 256 image gives 32 x 32 codes of 8192. Parameters are `w` / `b` of dall_e's Conv2d, with
dall_e's names (`blocks.group_1.block_1.res_path.conv_1.w`), under `enc.` / `dec.` in
`OpenAIDiscreteVAE` as in DALLE-pytorch. As in dall_e, convs marked `use_float16` run in half
precision on CUDA (all but the encoder's output and the decoder's input conv); on CPU all is float32.
"""
from __future__ import annotations

import math
import os
from collections import OrderedDict
from dataclasses import asdict, dataclass
from typing import Any, Mapping, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dalle_pytorch.formats.files import PathLike
from dalle_pytorch.formats.pretrained_files import CACHE_DIR, default_files
from dalle_pytorch.formats.pt_files import check_state_dict_shapes, module_tensors
from dalle_pytorch.formats.safe_pickle import StandIn, TorchFile
from dalle_pytorch.models.vae import CodeGrid

__all__ = ["OpenAIDiscreteVAE", "EncoderConfig", "DecoderConfig", "Encoder", "Decoder", "EncoderBlock",
           "DecoderBlock", "Conv2d", "map_pixels", "unmap_pixels"]

LOGIT_LAPLACE_EPS = 0.1
GROUP_COUNT = 4

# the default files (in CACHE_DIR) and DALLE-pytorch 1.6.6's addresses for them, quoted in the missing-file error
DALLE_PYTORCH_URLS = {"encoder.pkl": "https://cdn.openai.com/dall-e/encoder.pkl",
                      "decoder.pkl": "https://cdn.openai.com/dall-e/decoder.pkl"}

# the classes OpenAI's pickles name; each becomes an inert StandIn whose state we read
_TORCH_NN = "torch.nn.modules."
ENCODER_CLASSES = ("dall_e.encoder.Encoder", "dall_e.encoder.EncoderBlock", "dall_e.utils.Conv2d",
                   _TORCH_NN + "container.Sequential", _TORCH_NN + "activation.ReLU", _TORCH_NN + "pooling.MaxPool2d",
                   _TORCH_NN + "linear.Identity")
DECODER_CLASSES = ("dall_e.decoder.Decoder", "dall_e.decoder.DecoderBlock", "dall_e.utils.Conv2d",
                   _TORCH_NN + "container.Sequential", _TORCH_NN + "activation.ReLU",
                   _TORCH_NN + "upsampling.Upsample", _TORCH_NN + "linear.Identity")

_LIMITS = {"n_hid": 4096, "n_init": 4096, "n_blk_per_group": 16, "input_channels": 64, "output_channels": 64,
           "vocab_size": 1 << 17}


def map_pixels(x: Tensor, eps: float = LOGIT_LAPLACE_EPS) -> Tensor:
    """[0, 1] -> [eps, 1 - eps], the dVAE's input range."""
    return (1 - 2 * eps) * x + eps


def unmap_pixels(x: Tensor, eps: float = LOGIT_LAPLACE_EPS) -> Tensor:
    """Inverse of map_pixels, clamped to [0, 1]."""
    return torch.clamp((x - eps) / (1 - 2 * eps), 0, 1)


# -- config ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EncoderConfig:
    """dall_e's Encoder arguments (OpenAI's file: n_hid 256, n_blk_per_group 2, 3 channels, 8192 codes)."""

    n_hid: int = 256  # width of group_1; groups 2-4 are 2x, 4x, 8x
    n_blk_per_group: int = 2  # blocks per group
    input_channels: int = 3
    vocab_size: int = 8192  # codebook size (logit channels)


@dataclass(frozen=True)
class DecoderConfig:
    """dall_e's Decoder arguments (OpenAI's file: n_init 128, n_hid 256, n_blk_per_group 2, 3 channels, 8192 codes)."""

    n_init: int = 128  # width after the input 1x1 conv
    n_hid: int = 256  # width of group_4; groups 3-1 are 2x, 4x, 8x
    n_blk_per_group: int = 2
    output_channels: int = 3  # the output conv has 2 * output_channels (the logit-laplace mean and scale)
    vocab_size: int = 8192


def _checked(cls: type, values: Mapping[str, Any], source: str) -> Any:
    """Build config dataclass `cls` from `values` (exactly its fields, positive ints within limits)."""
    names = list(cls.__dataclass_fields__)
    unknown, missing = sorted(set(values) - set(names)), [n for n in names if n not in values]
    if unknown or missing:
        raise ValueError(f"{source}: expected entries {names}; unknown {unknown}, missing {missing}")
    for name in names:
        value = values[name]
        if type(value) is not int or not 1 <= value <= _LIMITS[name]:
            raise ValueError(f"{source}: {name} must be an integer in [1, {_LIMITS[name]}], got {value!r}")
    if values["n_hid"] % 4:
        raise ValueError(f"{source}: n_hid must be a multiple of 4 (each block's hidden width is n_out / 4)")
    return cls(**{n: values[n] for n in names})


# -- blocks ------------------------------------------------------------------------------------------------


class Conv2d(nn.Module):
    """dall_e's conv: parameters `w` (n_out, n_in, kw, kw) and `b` (n_out,), 'same' padding, half precision on CUDA."""

    def __init__(self, n_in: int, n_out: int, kw: int, use_float16: bool = True):
        super().__init__()
        self.n_in, self.n_out, self.kw, self.use_float16 = n_in, n_out, kw, use_float16
        self.w = nn.Parameter(torch.empty(n_out, n_in, kw, kw).normal_(std=1 / math.sqrt(n_in * kw**2)))
        self.b = nn.Parameter(torch.zeros(n_out))

    def forward(self, x: Tensor) -> Tensor:
        if self.use_float16 and self.w.device.type == "cuda":
            return F.conv2d(x.half(), self.w.half(), self.b.half(), padding=(self.kw - 1) // 2)
        return F.conv2d(x.float(), self.w, self.b, padding=(self.kw - 1) // 2)


class _Block(nn.Module):
    def __init__(self, n_in: int, n_out: int, n_layers: int, kernels: tuple[int, int, int, int]):
        super().__init__()
        n_hid = n_out // 4
        self.post_gain = 1 / (n_layers**2)
        self.id_path = Conv2d(n_in, n_out, 1) if n_in != n_out else nn.Identity()
        widths = (n_in, n_hid, n_hid, n_hid, n_out)
        layers: list[tuple[str, nn.Module]] = []
        for i, kw in enumerate(kernels):
            layers += [(f"relu_{i + 1}", nn.ReLU()), (f"conv_{i + 1}", Conv2d(widths[i], widths[i + 1], kw))]
        self.res_path = nn.Sequential(OrderedDict(layers))

    def forward(self, x: Tensor) -> Tensor:
        res = self.res_path(x)
        if torch.is_grad_enabled() and res.requires_grad:
            return self.id_path(x) + self.post_gain * res
        # without autograd: the same two roundings in res's buffer, and id_path's output made only now
        return res.mul_(self.post_gain).add_(self.id_path(x))


class EncoderBlock(_Block):
    """id_path + post_gain * (relu, 3x3, relu, 3x3, relu, 3x3, relu, 1x1). (b, n_in, h, w) -> (b, n_out, h, w)."""

    def __init__(self, n_in: int, n_out: int, n_layers: int):
        super().__init__(n_in, n_out, n_layers, (3, 3, 3, 1))


class DecoderBlock(_Block):
    """id_path + post_gain * (relu, 1x1, relu, 3x3, relu, 3x3, relu, 3x3). (b, n_in, h, w) -> (b, n_out, h, w)."""

    def __init__(self, n_in: int, n_out: int, n_layers: int):
        super().__init__(n_in, n_out, n_layers, (1, 3, 3, 3))


def _group(block: type, n_in: int, n_out: int, cfg: Any, resample: Optional[tuple[str, nn.Module]]) -> nn.Sequential:
    n_layers = GROUP_COUNT * cfg.n_blk_per_group
    layers = [(f"block_{i + 1}", block(n_in if i == 0 else n_out, n_out, n_layers)) for i in range(cfg.n_blk_per_group)]
    return nn.Sequential(OrderedDict(layers + ([resample] if resample else [])))


class Encoder(nn.Module):
    """Image (b, input_channels, s, s), mapped by map_pixels -> code logits (b, vocab_size, s/8, s/8)."""

    def __init__(self, cfg: EncoderConfig = EncoderConfig()):
        super().__init__()
        self.cfg = cfg
        h = cfg.n_hid
        pool = lambda: ("pool", nn.MaxPool2d(kernel_size=2))  # noqa: E731
        self.blocks = nn.Sequential(OrderedDict([
            ("input", Conv2d(cfg.input_channels, h, 7)),
            ("group_1", _group(EncoderBlock, h, h, cfg, pool())),
            ("group_2", _group(EncoderBlock, h, 2 * h, cfg, pool())),
            ("group_3", _group(EncoderBlock, 2 * h, 4 * h, cfg, pool())),
            ("group_4", _group(EncoderBlock, 4 * h, 8 * h, cfg, None)),
            ("output", nn.Sequential(OrderedDict([("relu", nn.ReLU()),
                                                  ("conv", Conv2d(8 * h, cfg.vocab_size, 1, use_float16=False))]))),
        ]))

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != 4 or x.shape[1] != self.cfg.input_channels or x.dtype != torch.float32:
            raise ValueError(f"input must be float32 (b, {self.cfg.input_channels}, h, w), got {x.dtype} {tuple(x.shape)}")
        return self.blocks(x)


class Decoder(nn.Module):
    """Codes as one-hot (b, vocab_size, f, f) -> logit-laplace statistics (b, 2 * output_channels, 8f, 8f)."""

    def __init__(self, cfg: DecoderConfig = DecoderConfig()):
        super().__init__()
        self.cfg = cfg
        h = cfg.n_hid
        up = lambda: ("upsample", nn.Upsample(scale_factor=2, mode="nearest"))  # noqa: E731
        self.blocks = nn.Sequential(OrderedDict([
            ("input", Conv2d(cfg.vocab_size, cfg.n_init, 1, use_float16=False)),
            ("group_1", _group(DecoderBlock, cfg.n_init, 8 * h, cfg, up())),
            ("group_2", _group(DecoderBlock, 8 * h, 4 * h, cfg, up())),
            ("group_3", _group(DecoderBlock, 4 * h, 2 * h, cfg, up())),
            ("group_4", _group(DecoderBlock, 2 * h, h, cfg, None)),
            ("output", nn.Sequential(OrderedDict([("relu", nn.ReLU()),
                                                  ("conv", Conv2d(h, 2 * cfg.output_channels, 1))]))),
        ]))

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != 4 or x.shape[1] != self.cfg.vocab_size or x.dtype != torch.float32:
            raise ValueError(f"input must be float32 (b, {self.cfg.vocab_size}, h, w), got {x.dtype} {tuple(x.shape)}")
        return self.blocks(x)

    def decode_codes(self, codes: Tensor) -> Tensor:
        """Codes (b, f, f) long -> statistics (b, 2 * output_channels, 8f, 8f).

        The input 1x1 conv of a one-hot picks one weight column: a lookup gives the same numbers
        (one product, one bias addition) without the (b, vocab_size, f, f) one-hot tensor.
        """
        conv = self.blocks.input
        x = F.embedding(codes, conv.w[:, :, 0, 0].t()) + conv.b  # (b, f, f, n_init)
        return self.blocks[1:](x.permute(0, 3, 1, 2))


# -- the DALLE-pytorch VAE -----------------------------------------------------------------------------------


class OpenAIDiscreteVAE(CodeGrid, nn.Module):
    """DALLE-pytorch 1.6.6's OpenAIDiscreteVAE: OpenAI's dVAE read from `encoder.pkl` and `decoder.pkl`.

    Args:
        encoder_path, decoder_path: OpenAI's files (whole pickled dall_e modules, read as data:
            see dalle_pytorch.formats.safe_pickle). Without paths, both are looked for where
            DALLE-pytorch downloaded them, ~/.cache/dalle/encoder.pkl and decoder.pkl; nothing is downloaded.

    Attributes as DALLE-pytorch: image_size = 256, num_layers = 3, channels = 3, num_tokens =
    vocab_size (8192 for OpenAI's files), enc, dec. `from_config(config, state_dict)` builds one
    from `vae.config` and `vae.state_dict()`.
    """

    def __init__(self, encoder_path: Optional[PathLike] = None, decoder_path: Optional[PathLike] = None):
        super().__init__()
        if encoder_path is None and decoder_path is None:
            encoder_path, decoder_path = default_files(DALLE_PYTORCH_URLS, "OpenAIDiscreteVAE",
                                                       "encoder_path and decoder_path")
        elif encoder_path is None or decoder_path is None:
            raise ValueError("OpenAIDiscreteVAE needs both encoder_path and decoder_path (or neither, for the "
                             f"default files in {CACHE_DIR})")
        enc_cfg, enc_state = _read_pickled(encoder_path, "encoder", EncoderConfig, ENCODER_CLASSES,
                                           "dall_e.encoder.Encoder", Encoder)
        dec_cfg, dec_state = _read_pickled(decoder_path, "decoder", DecoderConfig, DECODER_CLASSES,
                                           "dall_e.decoder.Decoder", Decoder)
        self._build(enc_cfg, dec_cfg, materialize=False)
        self.enc.load_state_dict(enc_state, assign=True)
        self.dec.load_state_dict(dec_state, assign=True)

    @classmethod
    def from_config(cls, config: Mapping[str, Any], state_dict: Optional[Mapping[str, Tensor]] = None) -> "OpenAIDiscreteVAE":
        """Build from `vae.config` ({'encoder': {...}, 'decoder': {...}}) and optionally `vae.state_dict()`
        (keys `enc.*`, `dec.*`); without it the weights are initialised as dall_e initialises them."""
        if not isinstance(config, Mapping) or set(config) != {"encoder", "decoder"}:
            raise ValueError("dVAE config: expected a mapping with exactly 'encoder' and 'decoder' entries")
        enc_cfg = _checked(EncoderConfig, config["encoder"], "dVAE config encoder")
        dec_cfg = _checked(DecoderConfig, config["decoder"], "dVAE config decoder")
        vae = cls.__new__(cls)
        nn.Module.__init__(vae)
        vae._build(enc_cfg, dec_cfg, materialize=state_dict is None)
        if state_dict is not None:
            expected = {name: t.shape for name, t in vae.state_dict().items()}
            check_state_dict_shapes(state_dict, expected, "dVAE state_dict")
            vae.load_state_dict({k: v.detach().to("cpu", torch.float32) for k, v in state_dict.items()}, assign=True)
        return vae

    def _build(self, enc_cfg: EncoderConfig, dec_cfg: DecoderConfig, materialize: bool) -> None:
        if enc_cfg.vocab_size != dec_cfg.vocab_size:
            raise ValueError(f"the encoder has {enc_cfg.vocab_size} codes, the decoder {dec_cfg.vocab_size}")
        if materialize:
            self.enc, self.dec = Encoder(enc_cfg), Decoder(dec_cfg)
        else:
            with torch.device("meta"):  # filled by load_state_dict(assign=True)
                self.enc, self.dec = Encoder(enc_cfg), Decoder(dec_cfg)
        self.channels = 3
        self.num_layers = 3
        self.image_size = 256
        self.num_tokens = enc_cfg.vocab_size

    @property
    def config(self) -> dict:
        """JSON-serialisable; `OpenAIDiscreteVAE.from_config(vae.config, vae.state_dict())` rebuilds the VAE."""
        return {"encoder": asdict(self.enc.cfg), "decoder": asdict(self.dec.cfg)}

    @torch.no_grad()
    def get_codebook_indices(self, img: Tensor) -> Tensor:
        """Images in [0, 1] (b, 3, h, w), h and w multiples of 8 -> codes (b, (h/8) * (w/8)) long (argmax)."""
        if img.ndim != 4 or img.shape[1] != self.enc.cfg.input_channels or not img.is_floating_point():
            raise ValueError(f"images must be float (b, {self.enc.cfg.input_channels}, h, w) in [0, 1], "
                             f"got {img.dtype} {tuple(img.shape)}")
        logits = self.enc.blocks(map_pixels(img))
        return torch.argmax(logits, dim=1).flatten(1)

    @torch.no_grad()
    def decode(self, img_seq: Tensor) -> Tensor:
        """Codes (b, n) with n a square -> images (b, 3, 8 sqrt(n), 8 sqrt(n)) in [0, 1].

        unmap_pixels(sigmoid(the first 3 statistics)), as DALLE-pytorch. Runs without autograd.
        """
        side = self.square_code_side(img_seq)
        return self._decode_grid(img_seq.long().view(-1, side, side))

    @torch.no_grad()
    def decode_grid(self, codes: Tensor) -> Tensor:
        """A grid of codes (b, h, w) -> images (b, 3, 8h, 8w) in [0, 1] (a canvas decodes as one image)."""
        self.check_grid(codes)
        return self._decode_grid(codes.long())

    def _decode_grid(self, codes: Tensor) -> Tensor:
        stats = self.dec.decode_codes(codes).float()
        return unmap_pixels(torch.sigmoid(stats[:, :3]))

    def forward(self, img: Tensor) -> Tensor:
        raise NotImplementedError("OpenAIDiscreteVAE is frozen: use get_codebook_indices(images) and decode(codes)")


# -- reading OpenAI's pickles ----------------------------------------------------------------------------------


_QUALNAMES = {Conv2d: "dall_e.utils.Conv2d", EncoderBlock: "dall_e.encoder.EncoderBlock",
              DecoderBlock: "dall_e.decoder.DecoderBlock", Encoder: "dall_e.encoder.Encoder",
              Decoder: "dall_e.decoder.Decoder", nn.Sequential: _TORCH_NN + "container.Sequential",
              nn.ReLU: _TORCH_NN + "activation.ReLU", nn.MaxPool2d: _TORCH_NN + "pooling.MaxPool2d",
              nn.Identity: _TORCH_NN + "linear.Identity", nn.Upsample: _TORCH_NN + "upsampling.Upsample"}


def _read_pickled(path: PathLike, part: str, cfg_cls: type, classes: tuple[str, ...], root_name: str,
                  module_cls: type) -> tuple[Any, dict[str, Tensor]]:
    """(config, state dict) of OpenAI's pickled dall_e encoder or decoder, checked against the module
    its config builds (class, child names, attributes and tensor shapes) before reading tensors."""
    what = f"dVAE {part} {os.fspath(path)!r}"
    with TorchFile(path, f"dVAE {part}") as f:
        root = f.load(stand_ins=classes)
        if not isinstance(root, StandIn) or root.qualname != root_name or not isinstance(root.state, dict):
            raise ValueError(f"{what}: expected a pickled {root_name}, got {root!r}")
        cfg = _checked(cfg_cls, {n: root.state.get(n) for n in cfg_cls.__dataclass_fields__}, what)
        with torch.device("meta"):
            ours = module_cls(cfg)
        _check_tree(ours, root, what, "")
        refs = module_tensors(root, what)
        expected = {name: t.shape for name, t in ours.state_dict().items()}
        check_state_dict_shapes(refs, expected, what)
        return cfg, {name: f.read(refs[name]).float() for name in expected}


def _check_tree(ours: nn.Module, theirs: StandIn, what: str, path: str) -> None:
    """Raise ValueError unless the pickled module tree has our classes, child names, order and settings."""
    where = path or "the root"
    if not isinstance(theirs, StandIn) or theirs.qualname != _QUALNAMES.get(type(ours)) or not isinstance(theirs.state, dict):
        raise ValueError(f"{what}: {where} is {theirs!r}, expected a {_QUALNAMES.get(type(ours))}")
    state = theirs.state
    attrs = {}
    if isinstance(ours, Conv2d):
        attrs = {"kw": ours.kw, "use_float16": ours.use_float16}
    elif isinstance(ours, (EncoderBlock, DecoderBlock)):
        attrs = {"post_gain": ours.post_gain}
    elif isinstance(ours, nn.ReLU):
        attrs = {"inplace": False}
    elif isinstance(ours, nn.MaxPool2d):
        attrs = {"kernel_size": 2, "padding": 0, "dilation": 1, "ceil_mode": False}
    elif isinstance(ours, nn.Upsample):
        attrs = {"mode": "nearest"}
        if state.get("scale_factor") not in (2, 2.0, (2, 2), (2.0, 2.0)) or state.get("size") is not None:
            raise ValueError(f"{what}: {where} upsamples by {state.get('scale_factor')!r} / to {state.get('size')!r}, not 2x")
    for name, value in attrs.items():
        if state.get(name) != value:
            raise ValueError(f"{what}: {where}.{name} is {state.get(name)!r}, expected {value!r}")
    if isinstance(ours, nn.MaxPool2d) and state.get("stride") not in (None, 2, (2, 2)):
        raise ValueError(f"{what}: {where}.stride is {state.get('stride')!r}, expected 2")
    children = state.get("_modules", {})
    names = list(children) if isinstance(children, dict) else None
    if names != [n for n, _ in ours.named_children()]:
        raise ValueError(f"{what}: {where} has submodules {names}, expected {[n for n, _ in ours.named_children()]}")
    for name, child in ours.named_children():
        _check_tree(child, children[name], what, f"{path}.{name}" if path else name)
