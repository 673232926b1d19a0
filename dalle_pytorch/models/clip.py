"""A small CLIP (contrastive text-image model) for ranking DALL-E samples.

Same constructor and forward signature as DALLE-pytorch's `CLIP`; the encoders are a self-contained
pre-norm bidirectional transformer (SDPA attention with a key padding mask, GEGLU feed-forward).
Parameter names are this package's own (DALLE-pytorch CLIP checkpoints do not load into it).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from dalle_pytorch.models.transformer import FeedForward  # the GEGLU feed-forward of the DALLE transformer

__all__ = ["CLIP", "Encoder"]


def masked_mean(t: Tensor, mask: Tensor) -> Tensor:
    """Mean over dim 1 of t (b, n, d) where mask (b, n) is True; (b, d). Empty rows give 0."""
    t = t.masked_fill(~mask[..., None], 0.0)
    return t.sum(dim=1) / mask.sum(dim=1, keepdim=True).clamp_min(1).to(t.dtype)


# transformer encoder


class Attention(nn.Module):
    """Multi-head self-attention (bidirectional). (b, n, dim) -> (b, n, dim)."""

    def __init__(self, dim: int, heads: int = 8, dim_head: int = 64):
        super().__init__()
        self.heads = heads
        inner = heads * dim_head
        self.to_qkv = nn.Linear(dim, inner * 3, bias=False)
        self.to_out = nn.Linear(inner, dim)

    def forward(self, x: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        q, k, v = self.to_qkv(x).chunk(3, dim=-1)
        q, k, v = (rearrange(t, "b n (h d) -> b h n d", h=self.heads) for t in (q, k, v))
        attn_mask = mask[:, None, None, :] if mask is not None else None  # (b, 1, 1, n): keys to attend to
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        return self.to_out(rearrange(out, "b h n d -> b n (h d)"))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, dim_head: int):
        super().__init__()
        self.attn_norm = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads=heads, dim_head=dim_head)
        self.ff_norm = nn.LayerNorm(dim)
        self.ff = FeedForward(dim)

    def forward(self, x: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        x = x + self.attn(self.attn_norm(x), mask=mask)
        return x + self.ff(self.ff_norm(x))


class Encoder(nn.Module):
    """Pre-norm bidirectional transformer: (b, n, dim), optional key mask (b, n) bool -> (b, n, dim)."""

    def __init__(self, dim: int, depth: int, heads: int = 8, dim_head: int = 64):
        super().__init__()
        self.layers = nn.ModuleList([Block(dim, heads, dim_head) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        if mask is not None:
            # a fully padded row would attend to nothing (NaN); let it attend everywhere instead
            mask = mask | ~mask.any(dim=-1, keepdim=True)
        for layer in self.layers:
            x = layer(x, mask=mask)
        return self.norm(x)


# CLIP


class CLIP(nn.Module):
    """Text and image encoders projected to a shared latent space, trained contrastively.

    Images are (b, channels, visual_image_size, visual_image_size) in [0, 1], cut into
    `visual_patch_size` patches. Text is (b, n) token ids with n <= text_seq_len, 0 = padding.
    `num_visual_tokens` is accepted for DALLE-pytorch compatibility and unused.
    """

    max_logit_scale = 100.0

    def __init__(
        self,
        *,
        dim_text: int = 512,
        dim_image: int = 512,
        dim_latent: int = 512,
        num_text_tokens: int = 10000,
        text_enc_depth: int = 6,
        text_seq_len: int = 256,
        text_heads: int = 8,
        num_visual_tokens: int = 512,
        visual_enc_depth: int = 6,
        visual_heads: int = 8,
        visual_image_size: int = 256,
        visual_patch_size: int = 32,
        channels: int = 3,
    ):
        super().__init__()
        if visual_image_size % visual_patch_size != 0:
            raise ValueError(
                f"visual_image_size ({visual_image_size}) must be divisible by visual_patch_size ({visual_patch_size})"
            )
        self._config = dict(
            dim_text=dim_text,
            dim_image=dim_image,
            dim_latent=dim_latent,
            num_text_tokens=num_text_tokens,
            text_enc_depth=text_enc_depth,
            text_seq_len=text_seq_len,
            text_heads=text_heads,
            num_visual_tokens=num_visual_tokens,
            visual_enc_depth=visual_enc_depth,
            visual_heads=visual_heads,
            visual_image_size=visual_image_size,
            visual_patch_size=visual_patch_size,
            channels=channels,
        )
        self.num_text_tokens = num_text_tokens
        self.text_seq_len = text_seq_len
        self.visual_image_size = visual_image_size
        self.visual_patch_size = visual_patch_size
        self.channels = channels

        # text
        self.text_emb = nn.Embedding(num_text_tokens, dim_text)
        self.text_pos_emb = nn.Embedding(text_seq_len, dim_text)
        self.text_transformer = Encoder(dim_text, text_enc_depth, heads=text_heads)
        self.to_text_latent = nn.Linear(dim_text, dim_latent, bias=False)

        # image
        num_patches = (visual_image_size // visual_patch_size) ** 2
        patch_dim = channels * visual_patch_size**2
        self.to_visual_embedding = nn.Linear(patch_dim, dim_image)
        self.visual_pos_emb = nn.Embedding(num_patches, dim_image)
        self.visual_transformer = Encoder(dim_image, visual_enc_depth, heads=visual_heads)
        self.to_visual_latent = nn.Linear(dim_image, dim_latent, bias=False)

        # log of the logit scale; similarity = cosine * exp(temperature)
        self.temperature = nn.Parameter(torch.tensor(1.0))

    @property
    def config(self) -> dict:
        """JSON-serialisable constructor kwargs; `CLIP(**clip.config)` rebuilds the architecture."""
        return dict(self._config)

    def _check_inputs(self, text: Tensor, image: Tensor, text_mask: Optional[Tensor]) -> None:
        if text.ndim != 2 or text.is_floating_point() or text.is_complex() or text.dtype == torch.bool:
            raise ValueError(f"text must be integer token ids of shape (b, n), got {tuple(text.shape)} {text.dtype}")
        n = text.shape[1]
        if n < 1 or n > self.text_seq_len:
            raise ValueError(f"text length must be between 1 and text_seq_len={self.text_seq_len}, got {n}")
        if text.numel() > 0 and (int(text.min()) < 0 or int(text.max()) >= self.num_text_tokens):
            raise ValueError(f"text token ids must lie in [0, {self.num_text_tokens})")
        s = self.visual_image_size
        if image.ndim != 4 or image.shape[1] != self.channels or image.shape[-2:] != (s, s):
            raise ValueError(f"image must have shape (b, {self.channels}, {s}, {s}), got {tuple(image.shape)}")
        if image.shape[0] != text.shape[0]:
            raise ValueError(f"text and image batch sizes differ: {text.shape[0]} vs {image.shape[0]}")
        if text_mask is not None and text_mask.shape != text.shape:
            raise ValueError(f"text_mask shape {tuple(text_mask.shape)} must equal text shape {tuple(text.shape)}")

    def embed_text(self, text: Tensor, text_mask: Optional[Tensor] = None) -> Tensor:
        """(b, n) token ids -> unit-norm latents (b, dim_latent). Mask defaults to text != 0."""
        text_mask = (text != 0 if text_mask is None else text_mask).bool()
        pos = torch.arange(text.shape[1], device=text.device)
        x = self.text_emb(text) + self.text_pos_emb(pos)
        x = self.text_transformer(x, mask=text_mask)
        return F.normalize(self.to_text_latent(masked_mean(x, text_mask)), dim=-1)

    def embed_image(self, image: Tensor) -> Tensor:
        """(b, c, H, W) in [0, 1] -> unit-norm latents (b, dim_latent)."""
        p = self.visual_patch_size
        patches = rearrange(image, "b c (h p1) (w p2) -> b (h w) (p1 p2 c)", p1=p, p2=p)
        x = self.to_visual_embedding(patches)
        x = x + self.visual_pos_emb(torch.arange(x.shape[1], device=image.device))
        x = self.visual_transformer(x)
        return F.normalize(self.to_visual_latent(x.mean(dim=1)), dim=-1)

    def forward(
        self,
        text: Tensor,
        image: Tensor,
        text_mask: Optional[Tensor] = None,
        return_loss: bool = False,
    ) -> Tensor:
        """Score text-image pairs.

        Args:
            text: (b, n) long token ids, n <= text_seq_len, 0 = padding.
            image: (b, channels, visual_image_size, visual_image_size) in [0, 1].
            text_mask: (b, n) bool, True for real tokens; defaults to text != 0.
            return_loss: return the symmetric InfoNCE loss over the batch instead of scores.
        Returns:
            (b,) similarity of each pair (cosine * exp(temperature)), or a scalar loss.
        """
        self._check_inputs(text, image, text_mask)
        text_latents = self.embed_text(text, text_mask)
        image_latents = self.embed_image(image)
        scale = self.temperature.exp().clamp(max=self.max_logit_scale)

        if not return_loss:
            return (text_latents * image_latents).sum(dim=-1) * scale

        sim = text_latents @ image_latents.t() * scale  # (b, b)
        labels = torch.arange(text.shape[0], device=text.device)
        return (F.cross_entropy(sim, labels) + F.cross_entropy(sim.t(), labels)) / 2
