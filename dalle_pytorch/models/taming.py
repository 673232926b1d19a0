"""taming-transformers' VQGAN (Esser et al. 2021, https://arxiv.org/abs/2012.09841) without taming or
Lightning: its config (`VQGanConfig`, read from taming's YAML) and its modules (`VQModel`: encoder,
quantizer, decoder).  `vqgan.VQGanVAE` wraps them as DALLE-pytorch 1.6.6 does.

Architecture (taming's `diffusionmodules/model.py`), for L = len(ch_mult) levels, R = num_res_blocks:

    Encoder   conv_in -> down[0..L-1]: R x ResnetBlock (+ AttnBlock where the side is in attn_resolutions),
              Downsample (not after the last level) -> mid: ResnetBlock, AttnBlock, ResnetBlock
              -> GroupNorm, swish, conv_out (z_channels)
    quant_conv (1x1, z_channels -> embed_dim) -> quantize:
              VQModel: VectorQuantizer2, nearest codebook entry (`quantize.embedding`)
              GumbelVQ: GumbelQuantize, 1x1 `quantize.proj` to n_embed logits, a hard gumbel-softmax
              sample (random, as in taming and DALLE-pytorch), codebook `quantize.embed`
    post_quant_conv (1x1, embed_dim -> z_channels) -> Decoder: conv_in -> mid -> up[L-1..0]:
              R + 1 x ResnetBlock (+ AttnBlock), Upsample (not after level 0) -> GroupNorm, swish, conv_out

An image of side s gives (s / 2**(L-1))**2 codes. Parameter names equal taming's state-dict keys
(`encoder.down.0.block.0.norm1.weight`, ...), under `model.` in `VQGanVAE` as in DALLE-pytorch,
so `vae.*` keys of a DALLE-pytorch checkpoint load directly. The computations follow taming
operation by operation (x * sigmoid(x), the attention's bmm / softmax order, the distance
formula of the nearest-code search), so codes are identical and pixels equal to float rounding.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Mapping, Optional

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

__all__ = ["VQGanConfig", "DDConfig", "VQModel", "Encoder", "Decoder", "ResnetBlock", "AttnBlock", "Upsample",
           "Downsample", "VectorQuantizer2", "GumbelQuantize", "TARGETS", "MAX_PARAMETERS"]

TARGETS = {"taming.models.vqgan.VQModel": False, "taming.models.vqgan.GumbelVQ": True}  # target -> gumbel

# bounds far above any released VQGAN (f16: ch 128, 1024-16384 codes), far below what would exhaust memory
MAX_PARAMETERS = 1_000_000_000
_LIMITS = {"ch": 1024, "out_ch": 64, "in_channels": 64, "resolution": 8192, "z_channels": 4096, "num_res_blocks": 16,
           "embed_dim": 4096, "n_embed": 1 << 20}


# -- config ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DDConfig:
    """taming's `ddconfig`: the encoder / decoder architecture."""

    ch: int  # channels of the first level; level i has ch * ch_mult[i]
    out_ch: int  # image channels out of the decoder
    ch_mult: tuple[int, ...]  # channel multiplier per level; len(ch_mult) - 1 halvings of the side
    num_res_blocks: int  # ResnetBlocks per encoder level (the decoder has one more)
    attn_resolutions: tuple[int, ...]  # sides (in pixels of the config's `resolution`) that get attention
    in_channels: int  # image channels into the encoder
    resolution: int  # the side the attention placement is computed for
    z_channels: int  # channels of the latent grid
    dropout: float = 0.0  # dropout inside the ResnetBlocks (training mode only)
    resamp_with_conv: bool = True  # strided / post-upsampling 3x3 convs (else average pool / plain upsample)
    double_z: bool = False  # taming's default True makes conv_out 2*z_channels wide, which a VQGAN cannot use

    @property
    def downsampling(self) -> int:
        """Image side / latent side: 2**(len(ch_mult) - 1)."""
        return 2 ** (len(self.ch_mult) - 1)


@dataclass(frozen=True)
class VQGanConfig:
    """A taming `model:` section: target (VQModel or GumbelVQ), codebook and architecture."""

    gumbel: bool  # taming.models.vqgan.GumbelVQ (else VQModel)
    n_embed: int  # codebook size
    embed_dim: int  # codebook vector size
    ddconfig: DDConfig = field(repr=False)

    @classmethod
    def from_taming(cls, model: Mapping[str, Any], source: str = "config") -> "VQGanConfig":
        """Read and check a taming `model:` section ({'target', 'params': {embed_dim, n_embed, ddconfig, ...}}).

        Entries taming uses only for training (lossconfig, base_learning_rate, monitor,
        temperature_scheduler_config, kl_weight, ignore_keys, image_key, ...) are ignored, and so is
        `ckpt_path` (a path stored in a file is never followed). Raises ValueError naming `source`.
        """
        def fail(message: str) -> ValueError:
            return ValueError(f"{source}: {message}")

        if not isinstance(model, Mapping):
            raise fail(f"expected a taming model section (a mapping with 'target' and 'params'), got {type(model).__name__}")
        target = model.get("target")
        if target not in TARGETS:
            raise fail(f"model.target {target!r} is not supported; expected one of {sorted(TARGETS)}")
        params = model.get("params")
        if not isinstance(params, Mapping):
            raise fail("model.params is missing")
        for key in ("remap", "colorize_nlabels"):
            if params.get(key) is not None:
                raise fail(f"model.params.{key} is not supported (DALLE-pytorch's VQGANs never set it)")
        n_embed = _int_param(params, "n_embed", fail)
        embed_dim = _int_param(params, "embed_dim", fail)
        dd = params.get("ddconfig")
        if not isinstance(dd, Mapping):
            raise fail("model.params.ddconfig is missing")
        known = {f.name for f in DDConfig.__dataclass_fields__.values()} | {"give_pre_end"}
        unknown = sorted(set(dd) - known)
        if unknown:
            raise fail(f"unknown ddconfig entries {unknown}")
        if dd.get("give_pre_end", False) is not False:
            raise fail("ddconfig.give_pre_end must be false: the decoder must end in conv_out")
        if dd.get("double_z", True) is not False:
            raise fail("ddconfig.double_z must be false for a VQGAN (taming's default true doubles conv_out, "
                       "which quant_conv cannot take)")
        ints = {k: _int_param(dd, k, fail, "ddconfig.") for k in
                ("ch", "out_ch", "num_res_blocks", "in_channels", "resolution", "z_channels")}
        ch_mult = _int_list(dd.get("ch_mult", [1, 2, 4, 8]), "ddconfig.ch_mult", fail)
        attn = _int_list(dd.get("attn_resolutions"), "ddconfig.attn_resolutions", fail, allow_empty=True)
        dropout = dd.get("dropout", 0.0)
        if type(dropout) not in (int, float) or not 0.0 <= dropout < 1.0:
            raise fail(f"ddconfig.dropout must be a number in [0, 1), got {dropout!r}")
        resamp = dd.get("resamp_with_conv", True)
        if not isinstance(resamp, bool):
            raise fail(f"ddconfig.resamp_with_conv must be true or false, got {resamp!r}")
        if not 1 <= len(ch_mult) <= 8 or max(ch_mult) > 16:
            raise fail(f"ddconfig.ch_mult {list(ch_mult)} must have 1 to 8 entries of at most 16")
        if ints["num_res_blocks"] < 0:
            raise fail("ddconfig.num_res_blocks must be >= 0")
        for name, value in ints.items():
            if name != "num_res_blocks" and value < 1:
                raise fail(f"ddconfig.{name} must be >= 1, got {value}")
        for name, value in {**ints, "n_embed": n_embed, "embed_dim": embed_dim}.items():
            if value > _LIMITS[name]:
                raise fail(f"{name} = {value} is beyond any VQGAN (at most {_LIMITS[name]}); refusing to build it")
        if n_embed < 1 or embed_dim < 1:
            raise fail("n_embed and embed_dim must be >= 1")
        # taming's Normalize is GroupNorm(32 groups) on every level's channels (and on ch itself)
        bad = sorted({ints["ch"] * m for m in (1, *ch_mult) if (ints["ch"] * m) % 32})
        if bad:
            raise fail(f"channel counts {bad} (ch * ch_mult) are not multiples of 32, which taming's GroupNorm needs")
        gumbel = TARGETS[target]
        if gumbel and embed_dim != ints["z_channels"]:
            raise fail(f"a GumbelVQ needs embed_dim == z_channels (its quantize.proj reads quant_conv's output), "
                       f"got {embed_dim} and {ints['z_channels']}")
        ddconfig = DDConfig(ch_mult=ch_mult, attn_resolutions=attn, dropout=float(dropout),
                            resamp_with_conv=resamp, double_z=False, **ints)
        return cls(gumbel=gumbel, n_embed=n_embed, embed_dim=embed_dim, ddconfig=ddconfig)

    def to_taming(self) -> dict:
        """The JSON-serialisable taming `model:` section that `from_taming` reads back."""
        dd = asdict(self.ddconfig)
        dd["ch_mult"], dd["attn_resolutions"] = list(dd["ch_mult"]), list(dd["attn_resolutions"])
        target = next(t for t, g in TARGETS.items() if g == self.gumbel)
        return {"target": target, "params": {"embed_dim": self.embed_dim, "n_embed": self.n_embed, "ddconfig": dd}}


def _int_param(params: Mapping, key: str, fail, prefix: str = "model.params.") -> int:
    value = params.get(key)
    if type(value) is not int:
        raise fail(f"{prefix}{key} must be an integer, got {value!r}")
    return value


def _int_list(value: Any, key: str, fail, allow_empty: bool = False) -> tuple[int, ...]:
    if not isinstance(value, (list, tuple)) or not all(type(v) is int and v >= 1 for v in value):
        raise fail(f"{key} must be a list of positive integers, got {value!r}")
    if not value and not allow_empty:
        raise fail(f"{key} must not be empty")
    return tuple(value)


# -- blocks ------------------------------------------------------------------------------------------------


def nonlinearity(x: Tensor) -> Tensor:
    """swish as taming computes it, x * sigmoid(x), to the bit (F.silu rounds differently).

    Without autograd the product is written into the sigmoid's buffer: one full-size temporary
    less at the decoder's 256 x 256 levels (a * b == b * a exactly).
    """
    s = torch.sigmoid(x)
    if torch.is_grad_enabled() and (x.requires_grad or s.requires_grad):
        return x * s
    return s.mul_(x)


def Normalize(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups=32, num_channels=channels, eps=1e-6, affine=True)


class Upsample(nn.Module):
    """Nearest 2x upsampling, then a 3x3 conv. (b, c, h, w) -> (b, c, 2h, 2w)."""

    def __init__(self, channels: int, with_conv: bool):
        super().__init__()
        self.with_conv = with_conv
        if with_conv:
            self.conv = nn.Conv2d(channels, channels, 3, stride=1, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        return self.conv(x) if self.with_conv else x


class Downsample(nn.Module):
    """Halve the side: pad right/bottom by 1, 3x3 conv stride 2 (or 2x2 average pool). (b, c, h, w) -> (b, c, h/2, w/2)."""

    def __init__(self, channels: int, with_conv: bool):
        super().__init__()
        self.with_conv = with_conv
        if with_conv:
            self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: Tensor) -> Tensor:
        if self.with_conv:
            return self.conv(F.pad(x, (0, 1, 0, 1), mode="constant", value=0))
        return F.avg_pool2d(x, kernel_size=2, stride=2)


class ResnetBlock(nn.Module):
    """norm, swish, conv3x3, norm, swish, dropout, conv3x3, plus the input (1x1 `nin_shortcut` when widths differ)."""

    def __init__(self, in_channels: int, out_channels: int, dropout: float):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.norm1 = Normalize(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=1, padding=1)
        self.norm2 = Normalize(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, stride=1, padding=1)
        if in_channels != out_channels:
            self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1, stride=1, padding=0)

    def forward(self, x: Tensor) -> Tensor:
        # one step per line: each intermediate is freed as soon as the next exists (x stays for the residual)
        h = self.norm1(x)
        h = nonlinearity(h)
        h = self.conv1(h)
        h = self.norm2(h)
        h = nonlinearity(h)
        h = self.dropout(h)
        h = self.conv2(h)
        if self.in_channels != self.out_channels:
            x = self.nin_shortcut(x)
        return x + h


class AttnBlock(nn.Module):
    """Single-head self-attention over the h*w positions, 1x1 convs for q, k, v and the output; residual."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = Normalize(channels)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        h_ = self.norm(x)
        q, k, v = self.q(h_), self.k(h_), self.v(h_)
        b, c, h, w = q.shape
        q = q.reshape(b, c, h * w).permute(0, 2, 1)  # (b, hw, c)
        k = k.reshape(b, c, h * w)  # (b, c, hw)
        attn = torch.bmm(q, k) * (int(c) ** (-0.5))  # (b, hw_q, hw_k)
        attn = F.softmax(attn, dim=2)
        v = v.reshape(b, c, h * w)
        out = torch.bmm(v, attn.permute(0, 2, 1)).reshape(b, c, h, w)  # (b, c, hw_q)
        return x + self.proj_out(out)


class Level(nn.Module):
    """One resolution of the encoder or decoder: `block` ResnetBlocks, `attn` AttnBlocks (one per block, or
    none), and a `downsample` / `upsample` except at the last level. A container: the Encoder and Decoder
    run its blocks themselves, so that no caller keeps the level's input alive while it runs."""

    def __init__(self, blocks: list[nn.Module], attns: list[nn.Module]):
        super().__init__()
        self.block = nn.ModuleList(blocks)
        self.attn = nn.ModuleList(attns)


class Mid(nn.Module):
    """ResnetBlock, AttnBlock, ResnetBlock at the lowest resolution."""

    def __init__(self, channels: int, dropout: float):
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels, dropout)
        self.attn_1 = AttnBlock(channels)
        self.block_2 = ResnetBlock(channels, channels, dropout)

    def forward(self, h: Tensor) -> Tensor:
        h = self.block_1(h)
        h = self.attn_1(h)
        return self.block_2(h)


class Encoder(nn.Module):
    """Image (b, in_channels, s, s) -> latent (b, z_channels, s / 2**(L-1), s / 2**(L-1))."""

    def __init__(self, cfg: DDConfig):
        super().__init__()
        ch, mults = cfg.ch, cfg.ch_mult
        self.conv_in = nn.Conv2d(cfg.in_channels, ch, 3, stride=1, padding=1)
        self.down = nn.ModuleList()
        res, block_in = cfg.resolution, ch
        for i, mult in enumerate(mults):
            block_in, block_out = ch * (1, *mults)[i], ch * mult
            blocks, attns = [], []
            for _ in range(cfg.num_res_blocks):
                blocks.append(ResnetBlock(block_in, block_out, cfg.dropout))
                block_in = block_out
                if res in cfg.attn_resolutions:
                    attns.append(AttnBlock(block_in))
            level = Level(blocks, attns)
            if i != len(mults) - 1:
                level.downsample = Downsample(block_in, cfg.resamp_with_conv)
                res //= 2
            self.down.append(level)
        self.mid = Mid(block_in, cfg.dropout)
        self.norm_out = Normalize(block_in)
        self.conv_out = nn.Conv2d(block_in, cfg.z_channels, 3, stride=1, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        # only the current activation is kept (taming's list of every level's output is for a U-Net)
        h = self.conv_in(x)
        for level in self.down:
            for i, block in enumerate(level.block):
                h = block(h)
                if len(level.attn) > 0:
                    h = level.attn[i](h)
            if hasattr(level, "downsample"):
                h = level.downsample(h)
        h = self.mid(h)
        h = self.norm_out(h)  # reassigned step by step: each input is freed as soon as it is used
        h = nonlinearity(h)
        return self.conv_out(h)


class Decoder(nn.Module):
    """Latent (b, z_channels, f, f) -> image (b, out_ch, f * 2**(L-1), f * 2**(L-1))."""

    def __init__(self, cfg: DDConfig):
        super().__init__()
        ch, mults = cfg.ch, cfg.ch_mult
        block_in = ch * mults[-1]
        res = cfg.resolution // 2 ** (len(mults) - 1)
        self.conv_in = nn.Conv2d(cfg.z_channels, block_in, 3, stride=1, padding=1)
        self.mid = Mid(block_in, cfg.dropout)
        levels: list[Level] = []
        for i in reversed(range(len(mults))):
            block_out = ch * mults[i]
            blocks, attns = [], []
            for _ in range(cfg.num_res_blocks + 1):
                blocks.append(ResnetBlock(block_in, block_out, cfg.dropout))
                block_in = block_out
                if res in cfg.attn_resolutions:
                    attns.append(AttnBlock(block_in))
            level = Level(blocks, attns)
            if i != 0:
                level.upsample = Upsample(block_in, cfg.resamp_with_conv)
                res *= 2
            levels.insert(0, level)  # up[0] is the full-resolution level, as in taming
        self.up = nn.ModuleList(levels)
        self.norm_out = Normalize(block_in)
        self.conv_out = nn.Conv2d(block_in, cfg.out_ch, 3, stride=1, padding=1)

    def forward(self, z: Tensor) -> Tensor:
        h = self.conv_in(z)
        h = self.mid(h)
        for level in reversed(self.up):
            for i, block in enumerate(level.block):
                h = block(h)
                if len(level.attn) > 0:
                    h = level.attn[i](h)
            if hasattr(level, "upsample"):
                h = level.upsample(h)
        h = self.norm_out(h)  # reassigned step by step: each input is freed as soon as it is used
        h = nonlinearity(h)
        return self.conv_out(h)


class VectorQuantizer2(nn.Module):
    """Nearest-neighbour codebook (taming's VectorQuantizer2): `embedding` (n_e, e_dim)."""

    def __init__(self, n_e: int, e_dim: int):
        super().__init__()
        self.n_e, self.e_dim = n_e, e_dim
        self.embedding = nn.Embedding(n_e, e_dim)
        self.embedding.weight.data.uniform_(-1.0 / n_e, 1.0 / n_e)

    def indices(self, z: Tensor) -> Tensor:
        """(b, e_dim, h, w) -> nearest codes (b, h*w), by taming's |z|^2 + |e|^2 - 2 z.e."""
        b = z.shape[0]
        z_flat = rearrange(z, "b c h w -> b h w c").contiguous().view(-1, self.e_dim)
        weight = self.embedding.weight
        d = (torch.sum(z_flat**2, dim=1, keepdim=True) + torch.sum(weight**2, dim=1)
             - 2 * torch.einsum("bd,dn->bn", z_flat, rearrange(weight, "n d -> d n")))
        return torch.argmin(d, dim=1).view(b, -1)

    def codebook(self) -> Tensor:
        return self.embedding.weight


class GumbelQuantize(nn.Module):
    """Gumbel-softmax codebook (taming's GumbelQuantize): `proj` 1x1 conv to n_embed logits, `embed` (n_embed, dim)."""

    def __init__(self, num_hiddens: int, embedding_dim: int, n_embed: int):
        super().__init__()
        self.n_embed = n_embed
        self.temperature = 1.0  # taming's temp_init; annealed only while training the VQGAN
        self.proj = nn.Conv2d(num_hiddens, n_embed, 1)
        self.embed = nn.Embedding(n_embed, embedding_dim)

    def indices(self, z: Tensor) -> Tensor:
        """(b, num_hiddens, h, w) -> sampled codes (b, h*w): a hard gumbel-softmax draw from the global RNG,
        exactly as taming draws it (same noise for the same seed)."""
        logits = self.proj(z)
        one_hot = F.gumbel_softmax(logits, tau=self.temperature, dim=1, hard=True)
        return one_hot.argmax(dim=1).flatten(1)

    def codebook(self) -> Tensor:
        return self.embed.weight


class VQModel(nn.Module):
    """taming's VQModel / GumbelVQ without the training parts: encoder, quant_conv, quantize, post_quant_conv, decoder."""

    def __init__(self, cfg: VQGanConfig):
        super().__init__()
        dd = cfg.ddconfig
        self.encoder = Encoder(dd)
        self.decoder = Decoder(dd)
        if cfg.gumbel:
            self.quantize: nn.Module = GumbelQuantize(dd.z_channels, cfg.embed_dim, cfg.n_embed)
        else:
            self.quantize = VectorQuantizer2(cfg.n_embed, cfg.embed_dim)
        self.quant_conv = nn.Conv2d(dd.z_channels, cfg.embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(cfg.embed_dim, dd.z_channels, 1)

    def encode_indices(self, x: Tensor) -> Tensor:
        """Images in [-1, 1] (b, in_channels, s, s) -> codes (b, (s / 2**(L-1))**2)."""
        return self.quantize.indices(self.quant_conv(self.encoder(x)))

    def decode_indices(self, codes: Tensor, side: int, width: Optional[int] = None) -> Tensor:
        """Codes (b, side * width) (width = side by default) -> images (b, out_ch, side * 2**(L-1),
        width * 2**(L-1)), unclamped (about [-1, 1])."""
        z = F.embedding(codes, self.quantize.codebook())  # == one_hot(codes) @ codebook, exactly
        z = rearrange(z, "b (h w) c -> b c h w", h=side, w=side if width is None else width)
        z = self.post_quant_conv(z)
        return self.decoder(z)
