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
from tqdm.auto import tqdm

from dalle_pytorch.generation.sampling import SamplingConfig, guided_logits, sample
from dalle_pytorch.models.config import DALLEConfig
from dalle_pytorch.models.transformer import Transformer
from dalle_pytorch.nn.cache import InferenceCache
from dalle_pytorch.nn.packed import packing_available


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

    # -- input checks --------------------------------------------------------------------------------

    def _check_text(self, text: torch.Tensor, name: str = "text") -> torch.Tensor:
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

    def _check_image(self, image: torch.Tensor, batch: int) -> torch.Tensor:
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

    def _transform(self, tokens: torch.Tensor, cache: InferenceCache | None = None, masked: bool | None = None):
        return self._stable_out(self.transformer(self._stable_in(tokens), cache=cache, masked=masked))

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
        text = self._check_text(text)
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
            codes = self._check_image(image, b)
            tokens = torch.cat((tokens, self.embed_image(codes)), dim=1)
        if tokens.shape[1] > self.total_seq_len:
            tokens = tokens[:, :-1]  # the last code is only ever a target
        out = self._transform(tokens, masked=masked)
        logits = self._logits(out, torch.arange(tokens.shape[1], device=tokens.device))
        if not return_loss:
            return logits
        if codes is None or codes.shape[1] != self.image_seq_len:
            raise ValueError(f"return_loss needs a whole image (pixels or {self.image_seq_len} codes)")
        labels = torch.cat((ids[:, 1:], codes + self.num_text_tokens), dim=1)
        T = self.text_seq_len
        loss_text = F.cross_entropy(logits[:, :T].transpose(1, 2), labels[:, :T])
        loss_img = F.cross_entropy(logits[:, T:].transpose(1, 2), labels[:, T:])
        return (loss_text + self.loss_img_weight * loss_img) / (self.loss_img_weight + 1)

    # -- cached inference -----------------------------------------------------------------------------

    def setup_cache(self, batch: int, max_len: int | None = None, kv_dtype: torch.dtype | None = None,
                    pack_weights: bool | None = None) -> InferenceCache:
        """Preallocate the inference state for `batch` rows and up to `max_len` positions.

        kv_dtype: the keys' and values' dtype (default: the model's); decode steps attend in it.
        pack_weights: run the decode steps' weight products through weights packed for oneDNN
        (`packed.PackedLinears`: the same products up to float rounding, faster on the CPU, most at small
        batches: docs/benchmarks.md; packed at each weight's first use, held by the cache); None = wherever it is available
        (`packed.packing_available`: the CPU in float32 / bfloat16).
        """
        t = self.transformer
        param = self.to_logits[1].weight
        return InferenceCache.allocate(
            depth=t.depth, batch=batch, heads=t.heads, dim_head=t.dim_head,
            max_len=max_len or self.total_seq_len, shift_channels=t.shift_cache_channels,
            fmap_size=self.fmap_size, device=param.device, dtype=param.dtype, kv_dtype=kv_dtype,
            pack_weights=packing_available(param.device, param.dtype) if pack_weights is None else pack_weights,
        )

    def prefill(self, ids: torch.Tensor, codes: torch.Tensor | None, cache: InferenceCache) -> torch.Tensor:
        """Run positions 0..n-1 (model text ids (b, <= T+1), then codes (b, m)) into `cache`.

        Returns the logits of the last position (b, V).
        """
        tokens = self.embed_text(ids)
        if codes is not None and codes.shape[1] > 0:
            tokens = torch.cat((tokens, self.embed_image(codes)), dim=1)
        out = self._transform(tokens, cache=cache)
        n = tokens.shape[1]
        return self._logits(out[:, -1:], torch.tensor([n - 1], device=ids.device))[:, 0]

    def decode_step(self, token: torch.Tensor, pos: torch.Tensor, cache: InferenceCache, image: bool = True,
                    length: int | None = None):
        """Feed one token at position `pos` (0-d long tensor) and return the next token's logits.

        token: (b,) image code (image=True) or model text id.  Returns (b, num_image_tokens) image
        logits after an image token, (b, num_text_tokens) text logits after a text token: only the
        rows of the output projection that can be sampled are computed.  With length=None shapes
        never depend on `pos`, so the step can be compiled / graph-captured; eager decoding passes
        length=pos+1 to attend over the filled part of the cache only.
        """
        if image:
            x = self.image_emb(token[:, None])
            if not self.rotary_emb:
                x = x + self.image_pos_emb.table().index_select(0, (pos - self.text_len).view(1))
        else:
            x = self.text_emb(token[:, None])
            if not self.rotary_emb:
                x = x + self.text_pos_emb.weight.index_select(0, pos.view(1))
        return self._step_logits(self.transformer.step(self._stable_in(x), pos, cache, length), cache, image)

    def decode_step_rows(self, token: torch.Tensor, pos: torch.Tensor, cache: InferenceCache,
                         length: int | None = None) -> torch.Tensor:
        """`decode_step` for image codes with each row at its own position (continuous batching).

        token: (b,) image codes; pos: (b,) long positions (each >= text_len); length: positions the
        attention spans, at least max(pos) + 1 (None: the whole cache).  Returns (b, num_image_tokens).
        Row i reads and writes only cache row i, so rows of different requests can share a step.
        """
        x = self.image_emb(token[:, None])
        if not self.rotary_emb:
            x = x + self.image_pos_emb.table().index_select(0, pos - self.text_len)[:, None]
        return self._step_logits(self.transformer.step_rows(self._stable_in(x), pos, cache, length), cache, image=True)

    def _step_logits(self, out: torch.Tensor, cache: InferenceCache, image: bool) -> torch.Tensor:
        """The transformer's output for one token (b, 1, c) -> the logits that can be sampled after it:
        (b, num_image_tokens) after an image token, (b, num_text_tokens) after a text token (only those
        rows of the output projection are computed, through the cache's packed weights)."""
        norm, proj = self.to_logits
        rows = slice(self.num_text_tokens, None) if image else slice(0, self.num_text_tokens)
        return cache.linear(norm(self._stable_out(out)[:, 0]), proj.weight[rows], proj.bias[rows])

    def __getstate__(self):
        # compiled decode steps are a per-process cache bound to this object: not pickled or deep-copied
        state = self.__dict__.copy()
        state.pop("_compiled_steps", None)
        return state

    def _compiled_decode_step(self, mode: str):
        """torch.compile of decode_step, made once per model and mode (later calls reuse its graphs).

        "prefix": dynamic shapes, attends over the filled prefix (one graph for every length);
        "static": attends over the whole preallocated cache, shapes fixed (CUDA-graph capture).
        """
        compiled = self.__dict__.setdefault("_compiled_steps", {})
        if mode not in compiled:
            # on CPU, inductor's C++ wrapper calls the step's kernels without Python in between:
            # faster steps (measured in docs/benchmarks.md), for a longer first compile
            on_cpu = self.to_logits[1].weight.device.type == "cpu"
            options = {"cpp_wrapper": True} if on_cpu else None
            compiled[mode] = torch.compile(self.decode_step, dynamic=mode == "prefix", options=options)
        return compiled[mode]

    # -- generation -------------------------------------------------------------------------------------

    def _prime_codes(self, img, num_init_img_tokens, batch):
        if img is None:
            if num_init_img_tokens:
                raise ValueError("num_init_img_tokens needs img (the image whose first codes prime generation)")
            return None
        n = int(0.4375 * self.image_seq_len) if num_init_img_tokens is None else int(num_init_img_tokens)
        if not 0 <= n < self.image_seq_len:
            raise ValueError(f"num_init_img_tokens must be in [0, image_seq_len={self.image_seq_len}), got {n}")
        if img.dim() != 4 or img.shape[0] not in (1, batch):
            raise ValueError(f"img must be (1 or {batch}, c, H, W) pixels in [0, 1], got {tuple(img.shape)}")
        codes = self._check_image(img, img.shape[0])[:, :n]
        return codes.expand(batch, n) if codes.shape[0] == 1 else codes

    def _kept_codes(self, img, mask, batch):
        """Masked completion: (known codes, keep) each (batch, I) from `img` and `mask`.

        mask: 1 / True keeps, 0 / False generates; (H, W) or (1 or batch, [1,] H, W) at the image's
        resolution (a code is kept when at least half of its cell's pixels are) or at the code grid's
        (F, F) (each entry one code).
        """
        if img is None:
            raise ValueError("mask needs img (the image whose codes the mask keeps)")
        if img.dim() != 4 or img.shape[0] not in (1, batch):
            raise ValueError(f"img must be (1 or {batch}, c, H, W) pixels in [0, 1], got {tuple(img.shape)}")
        known = self._check_image(img, img.shape[0]).expand(batch, self.image_seq_len)
        m = torch.as_tensor(mask, device=known.device)
        if not (m.dtype == torch.bool or m.is_floating_point() or m.dtype in (torch.uint8, torch.int64, torch.int32)):
            raise ValueError(f"mask must be a bool or numeric tensor, got {m.dtype}")
        if m.dim() == 2:  # (H, W)
            m = m[None, None]
        elif m.dim() == 3:  # (b, H, W)
            m = m[:, None]
        f, size = self.fmap_size, self.vae.image_size
        if m.dim() != 4 or m.shape[1] != 1 or m.shape[0] not in (1, batch) or tuple(m.shape[2:]) not in ((f, f), (size, size)):
            raise ValueError(f"mask must be (H, W) or (1 or {batch}, [1,] H, W) with H = W = {size} (pixels) or {f} "
                             f"(codes), got {tuple(torch.as_tensor(mask).shape)}")
        m = m.float()
        if m.shape[-1] != f:  # pixel mask -> code mask: a code is kept when most of its cell is
            m = F.avg_pool2d(m, size // f)
        keep = (m >= 0.5).reshape(m.shape[0], f * f).expand(batch, f * f)
        return known, keep

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
        generator: torch.Generator | None = None,
        return_codes: bool = False,
        progress: bool = False,
        compile: bool | str = False,
        kv_dtype: torch.dtype | None = None,
        pack_weights: bool | None = None,
        callback: Callable[[int, torch.Tensor], None] | None = None,
    ):
        """Sample images for captions.

        text: (b, T) ids.  filter_thres: keep the top (1 - filter_thres) fraction of the whole
        vocabulary (DALLE-pytorch's meaning; filter_scope="candidates": of the image codes, see
        `sampling`).  Returns images (b * num_images, c, H, W) in [0, 1] (rows grouped by
        caption: caption 0's images first), or codes (b * num_images, I) with return_codes=True;
        with `clip`, returns (images, scores) where scores (b * num_images,) are CLIP similarities.
        cond_scale: classifier-free guidance, logits = null + (cond - null) * cond_scale (>= 0;
        1 = no guidance); the conditional and null rows run as one batch. null_text: (1 or b, T)
        caption for the null rows (a negative prompt); default the empty caption.
        compile: torch.compile the cached decode step (use_cache=True only). True or "prefix":
        dynamic shapes, each step attends over the filled prefix (fastest on CPU); "static": every
        step attends over the whole preallocated cache with fixed shapes (what CUDA graphs need).
        The first call compiles (seconds); later calls on the same model reuse the graphs.
        kv_dtype: the KV cache's dtype. Default: the model's, except that a bf16/fp16 model decoding
        eagerly on CPU keeps a float32 cache (there SDPA reads fp32 faster than bf16; compiled steps
        read a bf16 cache fastest: docs/benchmarks.md). Reduced precision is opt-in: a model
        converted with `.to(torch.bfloat16)` samples in bf16; images come back as float32.
        pack_weights: the eager cached steps multiply by weights packed for oneDNN (`setup_cache`;
        faster on the CPU, for as much memory again as the transformer's weights during the call).
        None: wherever available (the CPU in fp32 / bf16); False: plain F.linear, no extra memory.
        callback(filled, codes): called after every sampled code, see `generate_codes`.
        img: (1 or b, c, H, W) pixels in [0, 1]: its first `num_init_img_tokens` codes (default 43.75%)
        prime every image. With `mask` (masked completion: inpainting / outpainting) the codes the
        mask keeps are fixed instead (mask 1 keeps, 0 generates; see `_kept_codes` for its shapes)
        and the others sampled, in raster order: a kept code conditions only the codes after it.
        """
        sampling = SamplingConfig(filter_thres=filter_thres, top_p=top_p, temperature=temperature,
                                  cond_scale=cond_scale, filter_scope=filter_scope)
        was_training = self.training
        self.eval()
        try:
            codes = self.generate_codes(text, sampling, img=img, num_init_img_tokens=num_init_img_tokens,
                                        mask=mask, null_text=null_text, use_cache=use_cache, num_images=num_images,
                                        generator=generator, progress=progress, compile=compile, kv_dtype=kv_dtype,
                                        pack_weights=pack_weights, callback=callback)
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

    @torch.inference_mode()
    def generate_codes(self, text: torch.Tensor, sampling: SamplingConfig, *, img: torch.Tensor | None = None,
                       num_init_img_tokens: int | None = None, mask: torch.Tensor | None = None,
                       null_text: torch.Tensor | None = None,
                       use_cache: bool = True, num_images: int = 1, generator: torch.Generator | None = None,
                       progress: bool = False, compile: bool | str = False,
                       kv_dtype: torch.dtype | None = None, pack_weights: bool | None = None,
                       callback: Callable[[int, torch.Tensor], None] | None = None) -> torch.Tensor:
        """The image codes (b * num_images, I) that `generate_images` decodes; the model must be in eval mode.

        sampling: the validated sampling settings; the other arguments as for `generate_images`.
        callback(filled, codes): called after each sampled code with the number of codes filled so
        far and the codes (b * num_images, I) (positions >= filled are not sampled yet; priming
        codes count as filled).  It sees the live buffer: copy what it keeps.  Absent, it costs nothing.
        """
        text = self._check_text(text)
        if compile not in (False, True, "prefix", "static"):
            raise ValueError(f'compile must be False, True, "prefix" or "static", got {compile!r}')
        if compile and not use_cache:
            raise ValueError("compile applies to the cached decode step: it needs use_cache=True")
        if kv_dtype is not None and not (isinstance(kv_dtype, torch.dtype) and kv_dtype.is_floating_point):
            raise ValueError(f"kv_dtype must be a floating torch.dtype, got {kv_dtype!r}")
        if kv_dtype is not None and not use_cache:
            raise ValueError("kv_dtype is the KV cache's dtype: it needs use_cache=True")
        cond_scale = sampling.cond_scale
        if int(num_images) != num_images or num_images < 1:
            raise ValueError(f"num_images must be a positive integer, got {num_images}")
        b, device = text.shape[0], text.device
        if b == 0:  # no caption, no image
            return torch.zeros(0, self.image_seq_len, dtype=torch.long, device=device)
        guided = sampling.guided
        if null_text is not None:
            if not guided:
                raise ValueError("null_text only has an effect with cond_scale != 1")
            null_text = self._check_text(null_text.to(device), "null_text")
            if null_text.shape[0] not in (1, b):
                raise ValueError(f"null_text batch must be 1 or {b}, got {null_text.shape[0]}")
            null_text = null_text.expand(b, -1)
        else:
            null_text = torch.zeros_like(text)
        known = keep = None
        if mask is not None:
            if num_init_img_tokens is not None:
                raise ValueError("give num_init_img_tokens (keep the first codes) or mask, not both")
            known, keep = self._kept_codes(img, mask, b)
            # the codes every row keeps from the start are a prefix, exactly as priming (same noise drawn)
            lead = int(keep.all(dim=0).long().cumprod(0).sum())
            prime = known[:, :min(lead, self.image_seq_len - 1)] if lead else None
        else:
            prime = self._prime_codes(img, num_init_img_tokens, b)

        # unique rows (one per caption, then one per distinct null row) and their expansion to all rows
        rows = b * num_images
        expand = torch.arange(b, device=device).repeat_interleave(num_images)
        unique_text, unique_prime = text, prime
        if guided:
            # the null rows of different captions are mostly the same (the empty caption, or one negative
            # prompt, with the same priming codes): each distinct null row is prefilled once
            null_rows = null_text if prime is None else torch.cat((null_text, prime), dim=1)
            distinct, which = torch.unique(null_rows, dim=0, return_inverse=True)
            if distinct.shape[0] == b:  # all differ: keep them in caption order
                distinct, which = null_rows, torch.arange(b, device=device)
            unique_text = torch.cat((text, distinct[:, :text.shape[1]]))
            if prime is not None:
                unique_prime = torch.cat((prime, distinct[:, text.shape[1]:]))
            expand = torch.cat((expand, which[expand] + b))
        start = 0 if prime is None else prime.shape[1]

        codes = torch.zeros(rows, self.image_seq_len, dtype=torch.long, device=device)
        if prime is not None:
            codes[:, :start] = prime[expand[:rows]]
        if keep is not None:
            known, keep = known[expand[:rows]], keep[expand[:rows]]

        def draw(img_logits, t):  # the code of every row at image position t
            if keep is None:
                return sample(combine(img_logits), sampling, generator, vocab_size=self.total_tokens)
            forced = keep[:, t]
            if bool(forced.all()):  # nothing to sample at t: no noise drawn
                return known[:, t]
            drawn = sample(combine(img_logits), sampling, generator, vocab_size=self.total_tokens)
            return torch.where(forced, known[:, t], drawn)
        ids = self.text_ids(unique_text)

        def combine(img_logits):  # (R or 2R, num_image_tokens) -> guided (R, num_image_tokens)
            return guided_logits(img_logits, rows, cond_scale) if guided else img_logits

        steps = range(start, self.image_seq_len)
        bar = tqdm(steps, desc="image tokens", disable=not progress, leave=False)
        if use_cache:
            weight = self.to_logits[1].weight
            if kv_dtype is None and not compile and weight.device.type == "cpu" and weight.dtype in (torch.bfloat16, torch.float16):
                kv_dtype = torch.float32  # eager CPU attention: fp32 reads faster (see the docstring)
            # a compiled step multiplies with inductor's kernels (dynamo does not trace packed tensors);
            # the eager one goes through the cache's packed weights
            cache = self.setup_cache(expand.shape[0], kv_dtype=kv_dtype, pack_weights=False if compile else pack_weights)
            if unique_text.shape[0] == expand.shape[0]:  # every row is unique: prefill the cache itself, no gather
                last = self.prefill(ids, unique_prime, cache)[:, self.num_text_tokens :]
            else:  # one prefill per caption (and per distinct null row), its cache rows copied to each of its images
                prefix = self.setup_cache(unique_text.shape[0], self.text_len + start, kv_dtype=kv_dtype)
                last = self.prefill(ids, unique_prime, prefix)[expand, self.num_text_tokens :]
                cache.copy_rows_from(prefix, expand)
                del prefix
            mode = "prefix" if compile is True else compile
            if compile and progress and mode not in self.__dict__.get("_compiled_steps", {}):
                bar.write(f"compiling the decode step (compile={mode!r}): a one-off wait of seconds to a minute")
            step_fn = self._compiled_decode_step(mode) if compile else self.decode_step
            positions = torch.arange(self.text_len + self.image_seq_len, device=device)
            for t in bar:
                code = draw(last, t)
                codes[:, t] = code
                if callback is not None:
                    callback(t + 1, codes)
                if t + 1 < self.image_seq_len:
                    token = torch.cat((code, code)) if guided else code
                    pos = self.text_len + t
                    # "static" attends over the whole cache (shapes never change); otherwise the filled prefix
                    length = None if mode == "static" else pos + 1
                    last = step_fn(token, positions[pos], cache, length=length)
        else:
            all_ids = ids[expand]
            for t in bar:
                cur = torch.cat((codes[:, :t], codes[:, :t])) if guided else codes[:, :t]
                tokens = torch.cat((self.embed_text(all_ids), self.embed_image(cur)), dim=1)
                out = self._transform(tokens)
                last = self._logits(out[:, -1:], torch.tensor([tokens.shape[1] - 1], device=device))[:, 0]
                last = last[:, self.num_text_tokens :]
                codes[:, t] = draw(last, t)
                if callback is not None:
                    callback(t + 1, codes)
        return codes

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
            device = self.to_logits[1].weight.device
            prompt = tokenizer.encode(text) if text else []
            if len(prompt) > self.text_seq_len:
                raise ValueError(f"text is {len(prompt)} tokens, longer than text_seq_len={self.text_seq_len}")
            if any(t < 0 or t >= self.num_user_text_tokens for t in prompt):
                raise ValueError(f"the tokenizer produced ids outside [0, {self.num_user_text_tokens}); "
                                 "is it the tokenizer the model was trained with?")
            ids = torch.tensor([[0] + prompt], dtype=torch.long, device=device)  # <bos> + prompt

            def pick(logits):  # text logits (1, num_text_tokens)
                return sample(logits, sampling, generator, vocab_size=self.total_tokens)

            n0 = ids.shape[1]
            if use_cache and n0 < self.text_len:
                cache = self.setup_cache(1, self.text_len)
                last = self.prefill(ids, None, cache)[:, : self.num_text_tokens]
                positions = torch.arange(self.text_len, device=device)
                for pos in range(n0, self.text_len):
                    tok = pick(last)
                    ids = torch.cat((ids, tok[:, None]), dim=1)
                    if pos + 1 < self.text_len:
                        last = self.decode_step(tok, positions[pos], cache, image=False, length=pos + 1)
            else:
                for pos in range(n0, self.text_len):
                    out = self._transform(self.embed_text(ids))
                    last = self._logits(out[:, -1:], torch.tensor([pos - 1], device=device))[:, 0, : self.num_text_tokens]
                    ids = torch.cat((ids, pick(last)[:, None]), dim=1)
            tokens = ids[:, 1:]
            tokens = torch.where(tokens >= self.num_user_text_tokens, torch.zeros_like(tokens), tokens)
            return tokens, [tokenizer.decode(tokens[0])]
        finally:
            self.train(was_training)
