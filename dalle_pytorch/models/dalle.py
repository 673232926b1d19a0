"""DALLE: caption tokens followed by image codes, modelled by one decoder-only transformer.

Dimensions: b batch, T text_seq_len, I image_seq_len = F*F, c model dim, V total_tokens
(text vocabulary incl. one pad id per text position, then image codes).

Sequence (N = T + 1 + I positions, the last one never fed):
    <bos>=0, caption ids (a 0 in the caption becomes the pad id of its position), image codes.
Position i < T predicts text, position i >= T predicts image codes (logits masked accordingly).
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from dalle_pytorch.errors import setting
from dalle_pytorch.generation import decode
from dalle_pytorch.generation import canvas as canvas_decode
from dalle_pytorch.generation.sampling import SamplingConfig
from dalle_pytorch.models.dalle_pytorch_keys import accept_their_keys, emit_their_layout
from dalle_pytorch.models.config import DALLEConfig
from dalle_pytorch.models.transformer import Transformer
from dalle_pytorch.nn.cache import InferenceCache
from dalle_pytorch.nn.packed import PackedLinears, packing_available
from dalle_pytorch.nn.positions import StepPositions
from dalle_pytorch.nn.quantized import QuantizedLinear


class SharedEmbedding(nn.Module):
    """Embedding rows [start, end) of a Linear's weight (share_input_output_emb).

    The Linear is not registered here (it lives in to_logits), so no weight is stored twice.
    """

    def __init__(self, linear: nn.Linear, start: int, end: int):
        super().__init__()
        self._linear = [linear]
        self.start, self.end = start, end

    @property
    def weight(self) -> torch.Tensor:
        return self._linear[0].weight[self.start : self.end]

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids, self.weight)


class AxialPositionalEmbedding(nn.Module):
    """Learned image positions as a sum of a row and a column embedding (parameters weights.0/1)."""

    def __init__(self, dim: int, fmap_size: int):
        super().__init__()
        self.fmap_size = fmap_size
        self.weights = nn.ParameterList(
            [nn.Parameter(torch.randn(1, fmap_size, 1, dim)), nn.Parameter(torch.randn(1, 1, fmap_size, dim))]
        )

    def table(self) -> torch.Tensor:
        """(F*F, c): the embedding of every grid position in raster order."""
        return (self.weights[0] + self.weights[1]).reshape(self.fmap_size**2, -1)


class DALLE(nn.Module):
    """DALL-E transformer over a frozen VAE's codes (DALLE-pytorch 1.6 constructor and methods).

    `DALLE(vae=vae, dim=..., depth=..., ...)` takes DALLE-pytorch's keyword arguments (and a few of
    ours: see `DALLEConfig` for every field and its meaning), or `DALLE(vae=vae, config=config)`.
    `sparse_attn=True` is DALLE-pytorch's switch for block-sparse layers when attn_types is not given.
    The config is validated once and kept as `self.config`.
    """

    def __init__(self, *, vae: nn.Module, config: DALLEConfig | None = None, sparse_attn: bool = False, **kwargs):
        super().__init__()
        for attr in ("image_size", "num_tokens", "num_layers", "channels", "get_codebook_indices", "decode"):
            if not hasattr(vae, attr):
                raise ValueError(f"vae must be a DiscreteVAE-like module; it has no '{attr}'")
        if config is None:
            if kwargs.get("attn_types") is None and sparse_attn is True:
                kwargs["attn_types"] = ("sparse",)  # DALLE-pytorch's boolean switch for block-sparse layers
            unknown = sorted(set(kwargs) - {f.name for f in dataclasses.fields(DALLEConfig)})
            if unknown:
                raise TypeError(f"DALLE() got unexpected keyword arguments {unknown}")
            config = DALLEConfig(**kwargs)
        elif kwargs or sparse_attn:
            raise TypeError("pass either config= or keyword arguments to DALLE(), not both")
        self.config = c = config

        self.fmap_size = vae.image_size // (2**vae.num_layers)
        self.image_seq_len = self.fmap_size**2
        self.text_seq_len = c.text_seq_len
        self.text_len = c.text_seq_len + 1  # with <bos>
        self.num_user_text_tokens = c.num_text_tokens
        self.num_text_tokens = c.num_text_tokens + c.text_seq_len  # a unique pad id per text position
        self.num_image_tokens = vae.num_tokens
        self.total_tokens = self.num_text_tokens + self.num_image_tokens
        self.total_seq_len = c.text_seq_len + self.image_seq_len  # positions fed to the transformer
        self.loss_img_weight = c.loss_img_weight
        self.stable = c.stable
        self.rotary_emb = c.rotary_emb

        self.vae = vae
        for p in self.vae.parameters():
            p.requires_grad = False  # the VAE is frozen

        self.transformer = Transformer(c, text_len=self.text_len, fmap_size=self.fmap_size)
        dim = c.dim
        self.to_logits = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, self.total_tokens))
        if c.share_input_output_emb:
            self.text_emb = SharedEmbedding(self.to_logits[1], 0, self.num_text_tokens)
            self.image_emb = SharedEmbedding(self.to_logits[1], self.num_text_tokens, self.total_tokens)
        else:
            self.text_emb = nn.Embedding(self.num_text_tokens, dim)
            self.image_emb = nn.Embedding(self.num_image_tokens, dim)
        if not c.rotary_emb:
            self.text_pos_emb = nn.Embedding(self.text_len, dim)
            self.image_pos_emb = AxialPositionalEmbedding(dim, self.fmap_size)
        # state_dict() in DALLE-pytorch's names (its scripts torch.save it); ours inside native_state_dict()
        self.register_state_dict_post_hook(emit_their_layout)

    # -- input checks --------------------------------------------------------------------------------

    def check_text(self, text: torch.Tensor, name: str = "text") -> torch.Tensor:
        if not isinstance(text, torch.Tensor) or text.dim() != 2:
            raise ValueError(f"{name} must be a (batch, {self.text_seq_len}) tensor of token ids, got "
                             f"{type(text).__name__}{tuple(text.shape) if isinstance(text, torch.Tensor) else ''}")
        if text.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
            raise ValueError(f"{name} must hold integer token ids, got dtype {text.dtype}")
        if text.shape[1] != self.text_seq_len:
            raise ValueError(f"{name} must have length text_seq_len={self.text_seq_len}, got {text.shape[1]}")
        if text.numel() and (int(text.min()) < 0 or int(text.max()) >= self.num_user_text_tokens):
            raise ValueError(f"{name} token ids must be in [0, {self.num_user_text_tokens}) (num_text_tokens), "
                             f"got min {int(text.min())}, max {int(text.max())}")
        return text.long()

    def check_image(self, image: torch.Tensor, batch: int) -> torch.Tensor:
        """Raw pixels (b, c, H, W) in [0, 1] are encoded by the VAE; codes (b, n) are checked."""
        if image.shape[0] != batch:
            raise ValueError(f"image batch {image.shape[0]} does not match text batch {batch}")
        if image.dim() == 4:
            c, size = self.vae.channels, self.vae.image_size
            if tuple(image.shape[1:]) != (c, size, size):
                raise ValueError(f"images must have shape (b, {c}, {size}, {size}), got {tuple(image.shape)}")
            if image.numel():
                if not bool(torch.isfinite(image).all()):
                    raise ValueError("image pixels must be finite numbers; found NaN or inf")
                low, high = float(image.min()), float(image.max())
                if low < 0.0 or high > 1.0:
                    raise ValueError(f"image pixels must be in [0, 1], got values in [{low:.4g}, {high:.4g}] "
                                     "(scale 0..255 images by 1/255)")
            weight = next(self.vae.parameters(), None)  # a bf16 VAE encodes float32 pixels too
            return self.vae.get_codebook_indices(image if weight is None else image.to(weight.dtype))
        if image.dim() != 2 or image.dtype.is_floating_point:
            raise ValueError(f"image must be pixels (b, c, H, W) or integer codes (b, n), got {tuple(image.shape)} {image.dtype}")
        if image.shape[1] > self.image_seq_len:
            raise ValueError(f"image codes have length {image.shape[1]} > image_seq_len={self.image_seq_len}")
        if image.numel() and (int(image.min()) < 0 or int(image.max()) >= self.num_image_tokens):
            raise ValueError(f"image codes must be in [0, {self.num_image_tokens}), got min {int(image.min())}, max {int(image.max())}")
        return image.long()

    # -- embeddings and head ---------------------------------------------------------------------------

    def text_ids(self, text: torch.Tensor) -> torch.Tensor:
        """(b, T) user ids (0 = pad) -> (b, T + 1) model ids: <bos> first, each pad its own id."""
        pad_ids = torch.arange(self.text_seq_len, device=text.device) + self.num_user_text_tokens
        return F.pad(torch.where(text == 0, pad_ids, text), (1, 0), value=0)

    def embed_text(self, ids: torch.Tensor, start: int = 0) -> torch.Tensor:
        """ids: (b, n) model ids at positions start..start+n-1 -> (b, n, c)."""
        x = self.text_emb(ids)
        if not self.rotary_emb:
            x = x + self.text_pos_emb.weight[start : start + ids.shape[1]]
        return x

    def embed_image(self, codes: torch.Tensor, start: int = 0) -> torch.Tensor:
        """codes: (b, m) at grid positions start..start+m-1 -> (b, m, c)."""
        x = self.image_emb(codes)
        if not self.rotary_emb:
            x = x + self.image_pos_emb.table()[start : start + codes.shape[1]]
        return x

    def _stable_in(self, tokens: torch.Tensor) -> torch.Tensor:
        """stable=True: the embeddings' gradient scaled by 0.1 (the same values); else tokens."""
        return tokens * 0.1 + tokens.detach() * 0.9 if self.stable else tokens

    def _stable_out(self, out: torch.Tensor) -> torch.Tensor:
        """stable=True: the transformer's output divided by its (detached) maximum; else out."""
        return out / out.amax(dim=-1, keepdim=True).detach() if self.stable else out

    def _transform(self, tokens: torch.Tensor, masked: bool | None = None):
        return self._stable_out(self.transformer(self._stable_in(tokens), masked=masked))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        """`load_state_dict` takes DALLE-pytorch's key layout too (`dalle.load_state_dict(torch.load(f)['weights'])`
        in its scripts): its keys are renamed to ours first (shared layers' copies and the rotary table checked)."""
        accept_their_keys(state_dict, prefix, self.transformer)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def logits_mask(self, positions: torch.Tensor) -> torch.Tensor:
        """(n, V) bool: True where a logit is forbidden (text positions predict text, image positions codes)."""
        is_img_pos = positions[:, None] >= self.text_seq_len
        is_img_tok = torch.arange(self.total_tokens, device=positions.device) >= self.num_text_tokens
        return is_img_pos != is_img_tok[None, :]

    def _logits(self, out: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        logits = self.to_logits(out)
        return logits.masked_fill(self.logits_mask(positions), -torch.finfo(logits.dtype).max)

    # -- training / scoring -------------------------------------------------------------------------

    def forward(self, text: torch.Tensor, image: torch.Tensor | None = None, return_loss: bool = False,
                null_cond_prob: float = 0.0, masked: bool | None = None):
        """text: (b, T) ids (0 = pad); image: pixels (b, c, H, W) in [0, 1] or codes (b, n <= I).

        Returns logits (b, n, V) (n = T + 1 + image length, at most T + I), or the loss
        (CE_text + loss_img_weight * CE_img) / (loss_img_weight + 1) with return_loss=True.
        null_cond_prob: probability of dropping each caption (classifier-free guidance training).
        masked: force dense masked attention (True) or the sparse kernels (False) for this call.
        """
        text = self.check_text(text)
        b = text.shape[0]
        if not 0.0 <= null_cond_prob <= 1.0:
            raise ValueError(f"null_cond_prob must be in [0, 1], got {null_cond_prob}")
        if null_cond_prob > 0:
            keep = torch.rand(b, device=text.device) >= null_cond_prob
            text = text * keep[:, None]  # a new tensor: the caller's text is untouched
        ids = self.text_ids(text)
        tokens = self.embed_text(ids)
        codes = None
        if image is not None and image.numel() > 0:
            codes = self.check_image(image, b)
            tokens = torch.cat((tokens, self.embed_image(codes)), dim=1)
        if tokens.shape[1] > self.total_seq_len:
            tokens = tokens[:, :-1]  # the last code is only ever a target
        if return_loss and (codes is None or codes.shape[1] != self.image_seq_len):
            raise ValueError(f"return_loss needs a whole image (pixels or {self.image_seq_len} codes)")
        out = self._transform(tokens, masked=masked)
        if not return_loss:
            return self._logits(out, torch.arange(tokens.shape[1], device=tokens.device))
        text_logits, image_logits = self._split_logits(out)
        loss_text = F.cross_entropy(text_logits.flatten(0, 1), ids[:, 1:].flatten())
        loss_img = F.cross_entropy(image_logits.flatten(0, 1), codes.flatten())
        return (loss_text + self.loss_img_weight * loss_img) / (self.loss_img_weight + 1)

    def _split_logits(self, out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The logits the loss reads, without the forbidden ones: text positions over the text tokens (b, T,
        num_text_tokens), image positions over the codes (b, I, num_image_tokens). A forbidden logit is masked
        to -max, whose exp is exactly 0 in the softmax, so the loss is the masked logits' loss, at about a
        third of the logit products and softmax work (and no transposed copies)."""
        norm, proj = self.to_logits
        h, T, t = norm(out), self.text_seq_len, self.num_text_tokens
        if type(proj) is not nn.Linear:  # a quantized projection: its own product over every logit
            logits = proj(h)
            return logits[:, :T, :t], logits[:, T:, t:]
        bias = (None, None) if proj.bias is None else (proj.bias[:t], proj.bias[t:])
        return F.linear(h[:, :T], proj.weight[:t], bias[0]), F.linear(h[:, T:], proj.weight[t:], bias[1])

    def last_logits(self, ids: torch.Tensor, codes: torch.Tensor | None = None) -> torch.Tensor:
        """Uncached: the logits of the last position (b, V) after model text ids (b, <= T+1) and image
        codes (b, m), the whole sequence run again (the reference the cached steps are tested against)."""
        tokens = self.embed_text(ids)
        if codes is not None and codes.shape[1] > 0:
            tokens = torch.cat((tokens, self.embed_image(codes)), dim=1)
        out = self._transform(tokens)
        return self._logits(out[:, -1:], torch.tensor([tokens.shape[1] - 1], device=ids.device))[:, 0]

    # -- cached inference: one step for every shape ------------------------------------------------

    def setup_cache(self, batch: int, max_len: int | None = None, kv_dtype: torch.dtype | None = None,
                    pack_weights: bool | PackedLinears | None = None, rewind: int = 0) -> InferenceCache:
        """Preallocate the inference state for `batch` rows and up to `max_len` positions.

        kv_dtype: the keys' and values' dtype (default: the model's); steps attend in it.
        pack_weights: the steps' weight products through weights packed for oneDNN, held by the cache
        (`nn.packed.PackedLinears`: docs/caching.md). None: on the CPU in fp32 / bf16, each weight shape
        with the kernel this process measured faster (`nn.packed.KernelChoices`); True: every weight
        packed; False: F.linear; a `PackedLinears`: those packs (reused by every generation given them).
        rewind: how many positions before the end of a step the next step may start (speculative
        decoding re-runs the positions of rejected drafts); the token-shift rings keep that many more.
        """
        t = self.transformer
        param = self.to_logits[0].weight  # the activations' dtype and device (the projection may be quantized)
        if pack_weights is None:  # the measured kernel of each weight shape
            pack_weights = (PackedLinears.measured(batch)
                            if packing_available(param.device, param.dtype) else False)
        return InferenceCache.allocate(
            depth=t.depth, batch=batch, heads=t.heads, dim_head=t.dim_head,
            max_len=max_len or self.total_seq_len, shift_channels=t.shift_cache_channels,
            fmap_size=self.fmap_size, device=param.device, dtype=param.dtype, kv_dtype=kv_dtype,
            pack_weights=pack_weights, rewind=rewind,
        )

    def step(self, tokens: torch.Tensor, start: torch.Tensor, cache: InferenceCache, *, length: int | None = None,
             image: bool = True) -> torch.Tensor:
        """The one cached forward: t new tokens per row at positions start .. start + t - 1.

        tokens: (b, t) image codes (image=True; positions >= text_len) or model text ids (image=False;
        positions < text_len).  start: a 0-d long tensor shared by every row, or (b,) long, one start
        per row.  Writes the tokens' keys, values and token-shift inputs into `cache` at those
        positions and returns the logits of what can be sampled after each token (b, t, V'): the image
        codes (V' = num_image_tokens) after image tokens, the text tokens (V' = num_text_tokens) after
        text tokens; only those rows of the output projection are computed, through the cache's packed
        weights.  length: None attends over the whole preallocated cache (static shapes, for compile
        and CUDA graphs); otherwise over the filled positions, at least max(start) + t (start + t for a
        shared start).  Plain decoding is t = 1 (`decode_step`), the server's rows are unequal starts,
        speculative verification is t = K drafts; `prefill` runs a prompt through the same step.
        """
        pos = StepPositions.of(start, tokens.shape[1], length, self.transformer.positions)
        x = self._embed_step(tokens, pos, image)
        out = self._stable_out(self.transformer.step(self._stable_in(x), pos, cache))
        norm, proj = self.to_logits
        rows = slice(self.num_text_tokens, None) if image else slice(0, self.num_text_tokens)
        return cache.linear(norm(out), proj, rows)

    def keep_kernel_layouts(self) -> None:
        """Before compiled steps: int4 layers make their kernel's layout once and keep it (for the products a
        step makes: every transformer layer, the image rows of the logits), so the compiled graph multiplies
        with the int4 kernel (`QuantizedLinear.keep_kernel_layout`); nothing for a float or int8 model."""
        for module in self.transformer.modules():
            if isinstance(module, QuantizedLinear):
                module.keep_kernel_layout()
        if isinstance(self.to_logits[1], QuantizedLinear):
            self.to_logits[1].keep_kernel_layout(slice(self.num_text_tokens, None))

    def decode_step(self, token: torch.Tensor, pos: torch.Tensor, cache: InferenceCache, image: bool = True,
                    length: int | None = None) -> torch.Tensor:
        """`step` for one token per row: token (b,) at `pos` (0-d, or (b,) one position per row) ->
        logits (b, V') of the next token (see `step`)."""
        return self.step(token[:, None], pos, cache, length=length, image=image)[:, 0]

    def _embed_step(self, tokens: torch.Tensor, pos: StepPositions, image: bool) -> torch.Tensor:
        """(b, t) image codes or text ids at `pos` -> (b, t, c)."""
        x = (self.image_emb if image else self.text_emb)(tokens)
        if self.rotary_emb:
            return x
        if image:
            table, index = self.image_pos_emb.table(), pos.flat - self.text_len
        else:
            table, index = self.text_pos_emb.weight, pos.flat
        rows = table.index_select(0, index)  # (1 * t or b * t, c)
        return x + (rows if pos.shared and pos.tokens == 1 else rows.view(pos.table_rows, pos.tokens, -1))

    #: positions a prefill feeds per step: its attention is (chunk x positions) per row and head
    PREFILL_CHUNK = 256

    def prefill(self, ids: torch.Tensor, codes: torch.Tensor | None, cache: InferenceCache) -> torch.Tensor:
        """Run positions 0..n-1 (model text ids (b, <= T+1), then image codes (b, m)) into `cache` through
        the transformer's step (chunks of PREFILL_CHUNK positions, weights unpacked); sets cache.length = n.

        Returns the logits of the last position over the whole vocabulary, masked as `forward`'s (b, V).
        """
        x = self.embed_text(ids)
        if codes is not None and codes.shape[1] > 0:
            x = torch.cat((x, self.embed_image(codes)), dim=1)
        n = x.shape[1]
        x = self._stable_in(x)
        # plain F.linear: packing pays for the many thin products of the decode steps, and every prefill
        # (here, the server's prefix cache) then multiplies the same way, so their bits agree
        # (a quantized layer's kernel is the same with or without its pack: the packs made here serve the steps)
        unpacked = dataclasses.replace(cache, linears=None if cache.linears is None else cache.linears.quantized_only())
        for first in range(0, n, self.PREFILL_CHUNK):
            part = x[:, first : first + self.PREFILL_CHUNK]
            start = self.transformer.positions[first]
            pos = StepPositions.of(start, part.shape[1], first + part.shape[1], self.transformer.positions)
            out = self.transformer.step(part, pos, unpacked)
        cache.length = n
        out = self._stable_out(out[:, -1:])
        return self._logits(out, torch.tensor([n - 1], device=ids.device))[:, 0]

    @torch.inference_mode()
    def generate_images(
        self,
        text: torch.Tensor,
        *,
        clip: nn.Module | None = None,
        filter_thres: float = 0.5,
        top_p: float | None = None,
        temperature: float = 1.0,
        filter_scope: str = "vocab",
        img: torch.Tensor | None = None,
        num_init_img_tokens: int | None = None,
        mask: torch.Tensor | None = None,
        cond_scale: float = 1.0,
        null_text: torch.Tensor | None = None,
        use_cache: bool = True,
        num_images: int = 1,
        cond_schedule: str = "constant",
        generator: torch.Generator | None = None,
        return_codes: bool = False,
        progress: bool = False,
        compile: bool | str = False,
        kv_dtype: torch.dtype | None = None,
        pack_weights: bool | PackedLinears | None = None,
        callback: Callable[[int, torch.Tensor], None] | None = None,
        speculative: int | None = None,
        stats: decode.DecodeStats | None = None,
        canvas: tuple[int, int] | None = None,
        img_offset: tuple[int, int] = (0, 0),
    ):
        """Sample images for captions.

        text: (b, T) ids.  filter_thres: keep the top (1 - filter_thres) fraction of the whole
        vocabulary (DALLE-pytorch's meaning; filter_scope="candidates": of the image codes, see
        `sampling`).  Returns images (b * num_images, c, H, W) in [0, 1] (rows grouped by
        caption: caption 0's images first), or codes (b * num_images, I) with return_codes=True;
        with `clip`, returns (images, scores) where scores (b * num_images,) are CLIP similarities.
        cond_scale: classifier-free guidance, logits = null + (cond - null) * cond_scale (>= 0;
        1 = no guidance); the conditional and null rows run as one batch. null_text: (1 or b, T)
        caption for the null rows (a negative prompt); default the empty caption.  cond_schedule: the
        scale by code position, "constant", "interval:A:B" (guidance for A*I <= t < B*I only; the null
        rows leave the batch at its end) or "linear" (1 at the first code to cond_scale at the last);
        see `generation.sampling.SamplingConfig.scale_at`.
        compile: torch.compile the cached decode step (use_cache=True only). True or "prefix":
        dynamic shapes, each step attends over the filled prefix (fastest on CPU); "static": every
        step attends over the whole preallocated cache with fixed shapes (what CUDA graphs need).
        The first call compiles (seconds); later calls on the same model reuse the graphs.
        kv_dtype: the KV cache's dtype. Default: the model's, except that a bf16/fp16 model decoding
        eagerly on CPU keeps a float32 cache (there SDPA reads fp32 faster than bf16; compiled steps
        read a bf16 cache fastest: docs/benchmarks.md). Reduced precision is opt-in: a model
        converted with `.to(torch.bfloat16)` samples in bf16; images come back as float32.
        pack_weights: the eager cached steps' weight kernels (`setup_cache`: None measured per weight
        shape, True every weight packed, False F.linear with no extra memory, a `PackedLinears` its packs).
        callback(filled, codes): called after every sampled code, see `generation.decode.generate_codes`.
        img: (1 or b, c, H, W) pixels in [0, 1], or the codes (1 or b, I) of earlier images (not
        re-encoded): its first `num_init_img_tokens` codes (default 43.75%) prime every image. With
        `mask` (masked completion: inpainting / outpainting) the codes the mask keeps are fixed instead
        (mask 1 keeps, 0 generates; see `decode.kept_codes` for its shapes) and the others sampled, in
        raster order: a kept code conditions only the codes after it.
        speculative: K > 1 verifies a window of K drafts per forward (speculative Jacobi decoding,
        `generation.speculative`): fewer forward passes than codes, exactly the same distribution;
        None or 1: one code per forward.  stats: a `generation.speculative.DecodeStats` to fill.
        canvas: (H, W) codes, each >= fmap_size: a canvas larger than the trained grid, each code sampled
        with the trained-size window around it (`generation.canvas`); images (b * num_images, c,
        H * s, W * s) decoded as one image each, codes (b * num_images, H * W) in raster order.  With
        `img` (the trained size) its codes are kept at `img_offset` (row, column) on the canvas
        (outpainting), only its first num_init_img_tokens (priming) or what `mask` keeps.  Eager
        cached steps only (no compile, no speculative decoding yet); stats: a `canvas.CanvasStats`.
        """
        sampling = SamplingConfig(filter_thres=filter_thres, top_p=top_p, temperature=temperature,
                                  cond_scale=cond_scale, filter_scope=filter_scope, cond_schedule=cond_schedule)
        was_training = self.training
        self.eval()
        try:
            if canvas is not None:
                return self._generate_canvas(text, sampling, canvas, img=img, img_offset=img_offset,
                                             num_init_img_tokens=num_init_img_tokens, mask=mask, null_text=null_text,
                                             use_cache=use_cache, num_images=num_images, generator=generator,
                                             return_codes=return_codes, progress=progress, kv_dtype=kv_dtype,
                                             pack_weights=pack_weights, callback=callback, stats=stats,
                                             refused=dict(clip=clip, compile=compile, speculative=speculative))
            codes = decode.generate_codes(self, text, sampling, img=img, num_init_img_tokens=num_init_img_tokens,
                                          mask=mask, null_text=null_text, use_cache=use_cache, num_images=num_images,
                                          generator=generator, progress=progress, compile=compile, kv_dtype=kv_dtype,
                                          pack_weights=pack_weights, callback=callback, speculative=speculative,
                                          stats=stats)
            if return_codes:
                return codes
            images = self.vae.decode(codes).clamp(0.0, 1.0)
            if images.dtype in (torch.bfloat16, torch.float16):
                images = images.float()  # pixels as float32 from a reduced-precision model too
            if clip is not None:
                if images.shape[0] == 0:
                    return images, images.new_zeros(0)
                rows = text.long().repeat_interleave(num_images, dim=0)
                return images, clip(rows, images)
            return images
        finally:
            self.train(was_training)

    def _generate_canvas(self, text, sampling, canvas, *, return_codes, refused, **kwargs):
        for name, value in refused.items():
            if value is not None and value is not False and not (name == "speculative" and value == 1):
                raise ValueError(f"{setting('canvas')} does not combine with {setting(name)} yet (a canvas samples with eager cached steps)")
        codes = canvas_decode.generate_canvas(self, text, sampling, canvas, **kwargs)
        if return_codes:
            return codes
        h, w = canvas
        return self.vae.decode_grid(codes.view(-1, h, w)).clamp(0.0, 1.0).float()

    @torch.inference_mode()
    def generate_texts(self, tokenizer, text: str | None = None, *, filter_thres: float = 0.5,
                       temperature: float = 1.0, use_cache: bool = True, generator: torch.Generator | None = None,
                       filter_scope: str = "vocab"):
        """Continue a caption (or start one) up to text_seq_len tokens.

        filter_thres: the top (1 - filter_thres) fraction of the whole vocabulary is kept, as in
        DALLE-pytorch (filter_scope="candidates": of the text tokens).
        Returns (tokens (1, T) with pads as 0, [decoded caption]).
        """
        sampling = SamplingConfig(filter_thres=filter_thres, temperature=temperature, filter_scope=filter_scope)
        was_training = self.training
        self.eval()
        try:
            return decode.generate_texts(self, tokenizer, text, sampling, use_cache=use_cache, generator=generator)
        finally:
            self.train(was_training)
