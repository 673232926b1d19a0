"""Discrete VAE (gumbel-softmax over a learned codebook), parameter-compatible with DALLE-pytorch 1.6.6.

Images are in [0, 1]. The VAE normalises them internally with `normalization = (means, stds)` and
returns reconstructions / decodes in the same [0, 1] space (denormalised, not clamped).

Parameter layout (same names as DALLE-pytorch's `DiscreteVAE`), for L = num_layers, R = num_resnet_blocks:

    codebook                      Embedding(num_tokens, codebook_dim)
    encoder.0 .. encoder.{L-1}    Sequential(Conv2d 4x4 stride 2 pad 1, ReLU)
    encoder.{L} .. {L+R-1}        ResBlock (net.0 conv3x3, net.2 conv3x3, net.4 conv1x1; residual)
    encoder.{L+R}                 Conv2d 1x1 -> num_tokens (logits)
    decoder.0                     Conv2d 1x1 codebook_dim -> hidden_dim        (only when R > 0)
    decoder.1 .. decoder.R        ResBlock
    decoder.{..}                  L x Sequential(ConvTranspose2d 4x4 stride 2 pad 1, ReLU)
    decoder.{last}                Conv2d 1x1 -> channels
"""

from __future__ import annotations

from math import isqrt, log2
from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

__all__ = ["DiscreteVAE", "ResBlock", "reinmax_one_hot"]


def reinmax_one_hot(logits: Tensor, temperature: float, dim: int = -1) -> Tensor:
    """Sample a one-hot from softmax(logits) with ReinMax gradients (Liu et al. 2023, Algorithm 2).

    Forward value is a hard one-hot sample D ~ Cat(softmax(logits)). The backward pass uses the
    second-order (Heun's method) estimator:

        pi0 = softmax(logits)
        pi1 = (D + softmax(logits / temperature)) / 2
        pi1 = softmax(stopgrad(log pi1 - logits) + logits)     # value pi1, gradient through softmax
        pi2 = 2 * pi1 - pi0 / 2
        out = pi2 - stopgrad(pi2) + D

    Args:
        logits: (..., n, ...) unnormalised log-probabilities, categories along `dim`.
    Returns:
        tensor of the same shape as `logits`, one-hot along `dim`.
    """
    pi0 = logits.softmax(dim=dim)
    # gumbel-max sample from pi0 (temperature does not change the argmax)
    gumbels = -torch.empty_like(logits).exponential_().log()
    index = (logits + gumbels).argmax(dim=dim, keepdim=True)
    hard = torch.zeros_like(logits).scatter_(dim, index, 1.0)

    pi1 = (hard + (logits / temperature).softmax(dim=dim)) / 2
    pi1 = ((pi1.clamp_min(1e-20).log() - logits).detach() + logits).softmax(dim=dim)
    pi2 = 2 * pi1 - 0.5 * pi0
    return pi2 - pi2.detach() + hard


# modules


class ResBlock(nn.Module):
    """conv3x3 -> ReLU -> conv3x3 -> ReLU -> conv1x1, plus the input. (b, c, h, w) -> (b, c, h, w)."""

    def __init__(self, chan: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(chan, chan, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(chan, chan, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(chan, chan, 1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x) + x


class CodeGrid:
    """The code grid of a VAE that halves `image_size` pixels `num_layers` times, as DALLE reads it
    (DiscreteVAE, VQGanVAE and OpenAIDiscreteVAE all derive it so)."""

    image_size: int
    num_layers: int
    num_tokens: int

    @property
    def fmap_size(self) -> int:
        """Side of the code grid: image_size // 2**num_layers (DALLE-pytorch's image_fmap_size)."""
        return self.image_size // (2**self.num_layers)

    @property
    def image_seq_len(self) -> int:
        """Number of codes per image: fmap_size**2."""
        return self.fmap_size**2

    def square_code_side(self, img_seq: Tensor) -> int:
        """The side of the square grid of integer codes (b, n) (any non-zero square n, as the pretrained
        VAEs decode); ValueError in one line for another shape or dtype, or a code outside [0, num_tokens)."""
        if img_seq.ndim != 2 or img_seq.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"codes must be an integer tensor (b, n), got {img_seq.dtype} {tuple(img_seq.shape)}")
        side = isqrt(img_seq.shape[1])
        if side * side != img_seq.shape[1] or side == 0:
            raise ValueError(f"the number of codes per image ({img_seq.shape[1]}) must be a non-zero square")
        if img_seq.numel() and (int(img_seq.min()) < 0 or int(img_seq.max()) >= self.num_tokens):
            raise ValueError(f"codes must lie in [0, {self.num_tokens}), got [{int(img_seq.min())}, {int(img_seq.max())}]")
        return side

    def check_grid(self, codes: Tensor) -> tuple[int, int]:
        """(h, w) of integer codes (b, h, w) in [0, num_tokens) (a canvas: any grid of at least one code),
        or a one-line ValueError."""
        if codes.ndim != 3 or codes.dtype not in (torch.int64, torch.int32) or 0 in codes.shape[1:]:
            raise ValueError(f"codes must be an integer grid (b, h, w), got {codes.dtype} {tuple(codes.shape)}")
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= self.num_tokens):
            raise ValueError(f"codes must lie in [0, {self.num_tokens}), got [{int(codes.min())}, {int(codes.max())}]")
        return codes.shape[1], codes.shape[2]


class DiscreteVAE(CodeGrid, nn.Module):
    """Convolutional discrete VAE with a gumbel-softmax bottleneck over `num_tokens` codebook entries.

    Args:
        image_size: input side length (power of two).
        num_tokens: codebook size.
        codebook_dim: codebook vector size.
        num_layers: number of stride-2 down/up-sampling layers; fmap_size = image_size // 2**num_layers.
        num_resnet_blocks: ResBlocks after the encoder convs / before the decoder convs.
        hidden_dim: channels of the hidden convolutions.
        channels: image channels.
        smooth_l1_loss: use smooth L1 instead of MSE for the reconstruction loss.
        temperature: default gumbel-softmax temperature.
        straight_through: hard one-hot samples in the forward pass (straight-through gradients).
        reinmax: hard samples with ReinMax (second-order straight-through) gradients; implies hard samples.
        kl_div_loss_weight: weight of KL(q(z|x) || uniform) in the loss.
        normalization: (means, stds) per channel applied to [0, 1] inputs, or None for no normalisation.
    """

    def __init__(
        self,
        image_size: int = 256,
        num_tokens: int = 512,
        codebook_dim: int = 512,
        num_layers: int = 3,
        num_resnet_blocks: int = 0,
        hidden_dim: int = 64,
        channels: int = 3,
        smooth_l1_loss: bool = False,
        temperature: float = 0.9,
        straight_through: bool = False,
        reinmax: bool = False,
        kl_div_loss_weight: float = 0.0,
        normalization: Optional[Sequence[Sequence[float]]] = ((0.5,) * 3, (0.5,) * 3),
    ):
        super().__init__()
        if image_size < 1 or int(image_size) != image_size or not log2(image_size).is_integer():
            raise ValueError(f"image_size must be a power of 2, got {image_size}")
        image_size = int(image_size)
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        if image_size // 2**num_layers < 1:
            raise ValueError(f"image_size {image_size} is too small for {num_layers} down-sampling layers")
        if num_resnet_blocks < 0:
            raise ValueError(f"num_resnet_blocks must be >= 0, got {num_resnet_blocks}")
        if normalization is not None:
            normalization = tuple(tuple(float(v) for v in t) for t in normalization)
            if len(normalization) != 2 or any(len(t) != channels for t in normalization):
                raise ValueError(
                    f"normalization must be (means, stds) with {channels} values each, got {normalization}"
                )
            if any(s == 0 for s in normalization[1]):
                raise ValueError("normalization stds must be non-zero")

        self.image_size = image_size
        self.num_tokens = num_tokens
        self.codebook_dim = codebook_dim
        self.num_layers = num_layers
        self.num_resnet_blocks = num_resnet_blocks
        self.hidden_dim = hidden_dim
        self.channels = channels
        self.smooth_l1_loss = smooth_l1_loss
        self.temperature = temperature
        self.straight_through = straight_through
        self.reinmax = reinmax
        self.kl_div_loss_weight = kl_div_loss_weight
        self.normalization = normalization

        self.codebook = nn.Embedding(num_tokens, codebook_dim)

        has_resblocks = num_resnet_blocks > 0

        # encoder: downsample, resblocks, 1x1 to logits
        enc_layers: list[nn.Module] = []
        enc_in = channels
        for _ in range(num_layers):
            enc_layers.append(nn.Sequential(nn.Conv2d(enc_in, hidden_dim, 4, stride=2, padding=1), nn.ReLU()))
            enc_in = hidden_dim
        enc_layers.extend(ResBlock(hidden_dim) for _ in range(num_resnet_blocks))
        enc_layers.append(nn.Conv2d(hidden_dim, num_tokens, 1))

        # decoder: (1x1 codebook -> hidden, resblocks), upsample, 1x1 to channels
        dec_layers: list[nn.Module] = []
        if has_resblocks:
            dec_layers.append(nn.Conv2d(codebook_dim, hidden_dim, 1))
            dec_layers.extend(ResBlock(hidden_dim) for _ in range(num_resnet_blocks))
        dec_in = hidden_dim if has_resblocks else codebook_dim
        for _ in range(num_layers):
            dec_layers.append(
                nn.Sequential(nn.ConvTranspose2d(dec_in, hidden_dim, 4, stride=2, padding=1), nn.ReLU())
            )
            dec_in = hidden_dim
        dec_layers.append(nn.Conv2d(hidden_dim, channels, 1))

        self.encoder = nn.Sequential(*enc_layers)
        self.decoder = nn.Sequential(*dec_layers)

    # properties

    @property
    def config(self) -> dict:
        """JSON-serialisable constructor kwargs; `DiscreteVAE(**vae.config)` rebuilds the architecture."""
        return dict(
            image_size=self.image_size,
            num_tokens=self.num_tokens,
            codebook_dim=self.codebook_dim,
            num_layers=self.num_layers,
            num_resnet_blocks=self.num_resnet_blocks,
            hidden_dim=self.hidden_dim,
            channels=self.channels,
            smooth_l1_loss=self.smooth_l1_loss,
            temperature=self.temperature,
            straight_through=self.straight_through,
            reinmax=self.reinmax,
            kl_div_loss_weight=self.kl_div_loss_weight,
            normalization=[list(t) for t in self.normalization] if self.normalization is not None else None,
        )

    # normalisation

    def _norm_stats(self, like: Tensor) -> tuple[Tensor, Tensor]:
        means, stds = (torch.tensor(t, dtype=like.dtype, device=like.device).view(1, -1, 1, 1) for t in self.normalization)
        return means, stds

    def norm(self, images: Tensor) -> Tensor:
        """(b, c, h, w) in [0, 1] -> normalised (x - mean) / std. Returns a new tensor."""
        if self.normalization is None:
            return images
        means, stds = self._norm_stats(images)
        return (images - means) / stds

    def denorm(self, images: Tensor) -> Tensor:
        """Inverse of `norm`: x * std + mean. Returns a new tensor."""
        if self.normalization is None:
            return images
        means, stds = self._norm_stats(images)
        return images * stds + means

    def _check_images(self, img: Tensor) -> None:
        if img.ndim != 4:
            raise ValueError(f"images must have shape (b, {self.channels}, h, w), got {tuple(img.shape)}")
        b, c, h, w = img.shape
        if c != self.channels:
            raise ValueError(f"images must have {self.channels} channels, got {c} (shape {tuple(img.shape)})")
        if h != self.image_size or w != self.image_size:
            raise ValueError(f"images must be {self.image_size}x{self.image_size}, got {h}x{w}")

    # api

    @torch.no_grad()
    def get_codebook_indices(self, images: Tensor) -> torch.LongTensor:
        """Hard codes: (b, c, image_size, image_size) in [0, 1] -> LongTensor (b, fmap_size**2)."""
        was_training = self.training
        self.eval()
        try:
            logits = self(images, return_logits=True)
        finally:
            self.train(was_training)
        return logits.argmax(dim=1).flatten(1)

    def decode(self, img_seq: Tensor) -> Tensor:
        """Codes (b, fmap_size**2) long -> images (b, channels, image_size, image_size), denormalised (~[0, 1])."""
        if img_seq.ndim != 2:
            raise ValueError(f"img_seq must have shape (b, {self.image_seq_len}), got {tuple(img_seq.shape)}")
        n = img_seq.shape[1]
        if n != self.image_seq_len:
            raise ValueError(
                f"img_seq has {n} codes per image, expected fmap_size**2 = {self.fmap_size}**2 = {self.image_seq_len}"
            )
        if img_seq.numel() > 0:
            lo, hi = int(img_seq.min()), int(img_seq.max())
            if lo < 0 or hi >= self.num_tokens:
                raise ValueError(f"codes must lie in [0, {self.num_tokens}), got values in [{lo}, {hi}]")

        return self._decode_grid(img_seq.view(-1, self.fmap_size, self.fmap_size))

    def decode_grid(self, codes: Tensor) -> Tensor:
        """A grid of codes (b, h, w) long -> images (b, channels, h * 2**L, w * 2**L) (the decoder is
        convolutional: a canvas larger than the trained grid decodes as one image, without seams)."""
        self.check_grid(codes)
        return self._decode_grid(codes)

    def _decode_grid(self, codes: Tensor) -> Tensor:
        embeds = self.codebook(codes).permute(0, 3, 1, 2)  # (b, d, h, w)
        return self.denorm(self.decoder(embeds))

    def _sample_one_hot(self, logits: Tensor, temp: float) -> Tensor:
        if self.reinmax:
            return reinmax_one_hot(logits, temp, dim=1)
        return F.gumbel_softmax(logits, tau=temp, dim=1, hard=self.straight_through)

    def forward(
        self,
        img: Tensor,
        return_loss: bool = False,
        return_recons: bool = False,
        return_logits: bool = False,
        temp: Optional[float] = None,
    ) -> Union[Tensor, tuple[Tensor, Tensor]]:
        """Encode, sample codes with gumbel-softmax, decode.

        Args:
            img: (b, channels, image_size, image_size) in [0, 1] (never modified).
            return_loss: return the loss (recon in normalised space + kl_div_loss_weight * KL to uniform).
            return_recons: with return_loss, return (loss, recons).
            return_logits: return the encoder logits (b, num_tokens, fmap_size, fmap_size) only.
            temp: gumbel-softmax temperature (defaults to `self.temperature`).
        Returns:
            logits, or reconstructions (b, channels, image_size, image_size) in [0, 1] space,
            or loss (), or (loss, reconstructions).
        """
        self._check_images(img)
        img = self.norm(img)
        logits = self.encoder(img)

        if return_logits:
            return logits

        temp = self.temperature if temp is None else temp
        one_hot = self._sample_one_hot(logits, temp)
        sampled = torch.einsum("b n h w, n d -> b d h w", one_hot, self.codebook.weight)
        out = self.decoder(sampled)

        if not return_loss:
            return self.denorm(out)

        loss_fn = F.smooth_l1_loss if self.smooth_l1_loss else F.mse_loss
        recon_loss = loss_fn(out, img)

        # KL(q || uniform), summed over positions and tokens, averaged over the batch
        log_qy = F.log_softmax(rearrange(logits, "b n h w -> b (h w) n"), dim=-1)
        log_uniform = -torch.log(torch.tensor(float(self.num_tokens), device=logits.device, dtype=logits.dtype))
        kl_div = (log_qy.exp() * (log_qy - log_uniform)).sum() / logits.shape[0]

        loss = recon_loss + kl_div * self.kl_div_loss_weight

        if not return_recons:
            return loss
        return loss, self.denorm(out)
