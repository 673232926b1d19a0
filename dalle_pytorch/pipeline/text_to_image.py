"""`Pipeline`: captions in, images out; the one path from text to pictures.

    pipe = Pipeline.from_checkpoint("dalle.safetensors")         # or Pipeline(model, tokenizer)
    out = pipe(["a red circle on a blue background"], num_images=4, seed=0, cond_scale=3.0)
    out.images, out.seeds, out.settings                          # PIL images, each one's batch seed
    result = pipe.generate("a red circle on a blue background", num_images=4, seed=0)   # one caption

A `callback(step)` sees every batch's codes as they are sampled; `step.preview()` decodes the
partial grid (unsampled codes painted a neutral grey), cheaply enough to show every few codes.

`generate.py` (which also writes the files) and the server both use it; neither re-implements it.
A caption's images are sampled in batches of `batch_size`: batch k with a CPU
`torch.Generator().manual_seed(seed + k)`, so the noise does not depend on the device and the same
seed, batch size, settings, checkpoint, device and dtype give the same images.
"""
from __future__ import annotations

import math
import os
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Union

import torch
from PIL import Image
from torch import nn

from dalle_pytorch.checkpoint.clip_weights import load_open_clip
from dalle_pytorch.checkpoint.build import SOURCE_LEGACY
from dalle_pytorch.checkpoint.ours import load_checkpoint
from dalle_pytorch.errors import CheckpointError, GenerationError, setting
from dalle_pytorch.formats.files import PathLike
from dalle_pytorch.formats.images import tensor_to_pil
from dalle_pytorch.generation.sampling import SamplingConfig
from dalle_pytorch.generation.speculative import DecodeStats
from dalle_pytorch.pipeline.resolve import DEMO, DTYPES, demo_path, resolve_checkpoint, resolve_device, resolve_dtype
from dalle_pytorch.pipeline.variations import check_strength, plan_variation, source_codes
from dalle_pytorch.nn.packed import PackedLinears, packing_available
from dalle_pytorch.models.dalle import DALLE
from dalle_pytorch.models.quantize import QUANTIZE_MODES, quantization_of
from dalle_pytorch.models.quantize import quantize as quantize_model
from dalle_pytorch.models.rerank import Reranker, as_reranker
from dalle_pytorch.text.base import CaptionTooLongError
from dalle_pytorch.text.factory import BaseTokenizer, select_tokenizer

__all__ = ["DEMO", "DTYPES", "GeneratedImages", "Pipeline", "PipelineOutput", "Step", "batch_seeds", "demo_path",
           "fresh_seed", "generation_settings", "preview_images", "resolve_checkpoint", "resolve_device", "resolve_dtype"]

# ------------------------------------------------------------------------------------------------
# seeds (the checkpoint, device and dtype: resolve.py)
# ------------------------------------------------------------------------------------------------


#: seeds are those of torch.Generator.manual_seed: integers in [0, 2**64)
MAX_SEED = 2**64 - 1


def batch_seeds(seed: int, num_images: int, batch_size: int) -> list[tuple[int, int]]:
    """[(seed of batch k, images in batch k), ...]: batch k is sampled with seed + k."""
    if num_images < 1:
        raise GenerationError(f"{setting('num_images')} must be >= 1, got {num_images}")
    if batch_size < 1:
        raise GenerationError(f"{setting('batch_size')} must be >= 1, got {batch_size}")
    n_batches = math.ceil(num_images / batch_size)
    if not 0 <= seed <= MAX_SEED - (n_batches - 1):
        raise GenerationError(f"{setting('seed')} must be in [0, 2**64 - {n_batches}] so that the seeds of its "
                              f"{n_batches} "
                              f"batches (seed + k) stay below 2**64; got {seed}")
    return [(seed + k, min(batch_size, num_images - k * batch_size)) for k in range(n_batches)]


def generation_settings(sampling: SamplingConfig, negative_prompt: Optional[str], batch_size: int,
                        num_init_img_tokens: Optional[int] = None, speculative: Optional[int] = None,
                        quantize: Optional[str] = None) -> dict:
    """The settings that determine a caption's images (with its seed), as recorded in PNG text chunks
    and generation.json, and returned by the server (`speculative` only where a window K > 1 is used:
    it draws other samples of the same distribution; `quantize` only for a quantized model)."""
    # "null_text": the negative prompt's key in generation.json and PNG chunks (kept: files written by earlier releases)
    settings = {**sampling.to_dict(), "null_text": negative_prompt, "num_init_img_tokens": num_init_img_tokens,
                "batch_size": batch_size}
    if speculative is not None and speculative != 1:
        settings["speculative"] = speculative
    if quantize is not None:
        settings["quantize"] = quantize
    return settings


def fresh_seed() -> int:
    """A new random seed in [0, 2**31) for a request that gave none (recorded with its images)."""
    return int.from_bytes(os.urandom(4), "little") & 0x7FFFFFFF


# ------------------------------------------------------------------------------------------------
# previews
# ------------------------------------------------------------------------------------------------

#: the colour of the codes not sampled yet in a preview (pixels in [0, 1])
PREVIEW_GREY = 0.5


@torch.inference_mode()
def preview_images(vae: nn.Module, codes: torch.Tensor, filled: int, grid: Optional[tuple[int, int]] = None) -> torch.Tensor:
    """Decode a partly sampled grid: (b, I) codes whose first `filled` are sampled -> (b, c, H, W) in [0, 1].
    grid: (h, w) of a canvas's codes (b, h * w); None: the square grid.

    The unsampled codes are set to each row's most frequent sampled code (a cheap stand-in for the
    mean code, so the VAE's receptive field does not smear an arbitrary code into the filled part),
    and their cells are painted PREVIEW_GREY: the picture sharpens row by row as codes arrive.
    """
    b, n = codes.shape
    h, w = (math.isqrt(n),) * 2 if grid is None else grid

    def decode(c):
        return (vae.decode(c) if grid is None else vae.decode_grid(c.view(b, h, w))).clamp(0.0, 1.0).float()

    if filled >= n:
        return decode(codes)
    fill = codes[:, :filled].mode(dim=1).values if filled > 0 else torch.zeros(b, dtype=codes.dtype, device=codes.device)
    stand_in = torch.where(torch.arange(n, device=codes.device) < filled, codes, fill[:, None])
    images = decode(stand_in)
    cell = images.shape[-1] // w
    empty = (torch.arange(n, device=images.device) >= filled).view(h, w)
    empty = empty.repeat_interleave(cell, 0).repeat_interleave(cell, 1)  # (H, W)
    return images.masked_fill(empty, PREVIEW_GREY)


@dataclass
class Step:
    """What a `Pipeline` callback sees after each sampled code of a batch."""

    caption: str
    batch: int  # index of the batch within its caption (seed = seed + batch)
    seed: int  # the batch's seed
    filled: int  # codes sampled so far (of `total`)
    total: int  # image_seq_len
    codes: torch.Tensor  # (n, I) the batch's codes, live: positions >= filled are not sampled yet
    vae: nn.Module
    grid: Optional[tuple[int, int]] = None  # a canvas's (H, W) codes (codes (n, H * W)); None: the trained grid

    def preview(self) -> torch.Tensor:
        """(n, c, H, W) the batch's partial images (see `preview_images`)."""
        return preview_images(self.vae, self.codes, self.filled, self.grid)


# ------------------------------------------------------------------------------------------------
# the pipeline
# ------------------------------------------------------------------------------------------------


@dataclass
class GeneratedImages:
    """The images `Pipeline.generate` sampled for one caption (best CLIP score first when reranked)."""

    caption: str
    images: torch.Tensor  # (n, c, H, W) float32 on CPU, in [0, 1]
    seeds: list[int]  # the seed of each image's batch
    settings: dict  # the sampling settings that determine the images
    elapsed: float  # seconds of sampling (and decoding)
    scores: Optional[list[float]] = None  # CLIP scores, with a CLIP (see `Pipeline.clip`)
    order: list[int] = field(default_factory=list)  # index of each image before reranking
    forward_passes: list[int] = field(default_factory=list)  # the cached forward passes of each batch (after its prefill)
    codes: Optional[torch.Tensor] = None  # (n, I) long on CPU, the images' codes in the same order (`Pipeline.variations`)

    def pil_images(self) -> list[Image.Image]:
        return [tensor_to_pil(im) for im in self.images]


@dataclass
class PipelineOutput:
    """What `Pipeline.__call__` returns: every caption's images, caption 0's first."""

    images: list[Image.Image]
    seeds: list[int]  # the batch seed of each image
    captions: list[str]  # the caption of each image
    settings: dict  # the sampling settings shared by all images
    results: list[GeneratedImages]  # per caption, with the pixels as tensors and the timings


class Pipeline:
    """A DALLE, its tokenizer and optionally a CLIP for reranking, ready to turn captions into images.

    Args:
        model: a DALLE (put in eval mode; its device and dtype are the pipeline's).
        tokenizer: the tokenizer the model was trained with.
        clip: what ranks each caption's images (best first), or None: a `dalle_pytorch.CLIP` (scored on
            the DALLE's caption tokens) or any `rerank.Reranker`, such as a pretrained
            `rerank.OpenCLIPReranker`; `self.clip` is it as a Reranker.
    """

    def __init__(self, model: DALLE, tokenizer: BaseTokenizer, *,
                 clip: Optional[Union[nn.Module, Reranker]] = None) -> None:
        if not isinstance(model, DALLE):
            raise TypeError(f"Pipeline needs a DALLE, got {type(model).__name__}")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.clip = as_reranker(clip)
        param = next(model.parameters())
        self.device, self.dtype = param.device, param.dtype
        #: the LoadedCheckpoint a pipeline made by `from_checkpoint` came from
        self.checkpoint = None
        #: the weights packed for the decode steps, per batch of rows: packed at the first batch, reused by
        #: every later one (those of the shapes measured faster packed, `nn.packed.KernelChoices`: as much
        #: memory again as those weights while the pipeline lives; generate(pack_weights=False) decodes
        #: without them)
        self.packs: dict[int, PackedLinears] = {}

    @property
    def quantize(self) -> Optional[str]:
        """The model's quantization mode ("int8", "int4"; `dalle_pytorch.quantize`), or None: a generation
        setting (it changes the images)."""
        return (quantization_of(self.model) or {}).get("mode")

    @classmethod
    def from_checkpoint(cls, dalle_path: Optional[PathLike] = None, *, vae: Optional[nn.Module] = None,
                        vae_path: Optional[PathLike] = None, bpe_path: Optional[PathLike] = None, hug: bool = False,
                        chinese: bool = False, clip_path: Optional[PathLike] = None, clip_model: Optional[str] = None,
                        device: str = "auto", dtype: str = "float32", quantize: Optional[str] = None) -> "Pipeline":
        """Load a DALLE checkpoint (ours, DALLE-pytorch's, or the demo model when `dalle_path` is None or
        "demo"), its tokenizer (or the one `bpe_path` / `hug` / `chinese` select: `select_tokenizer`)
        and an optional CLIP to rerank with: `clip_path` alone is a CLIP of ours (`dalle_pytorch.save(clip,
        path)`); with `clip_model` (an open_clip model name or config JSON) it is a pretrained OpenCLIP /
        OpenAI CLIP's weights (`rerank.OpenCLIPReranker`, run in float32 whatever `dtype`).

        vae / vae_path: as for `load_checkpoint` (a DALLE-pytorch model over a pretrained VAE needs
        `vae=VQGanVAE(...)`, see `dalle_pytorch.checkpoint.pretrained.vae_from_flags`, unless its files are in
        ~/.cache/dalle).
        quantize: None, "int8" or "int4": decode with quantized weights (`dalle_pytorch.quantize`, after the
        model is cast to `dtype`; a checkpoint saved quantized is already quantized: this must then be
        None or its own mode).

        Raises GenerationError with a one-line reason for anything that does not fit.
        """
        dev = resolve_device(device)
        dt = resolve_dtype(dtype, dev)
        path, _ = resolve_checkpoint(dalle_path)
        try:
            loaded = load_checkpoint(path, map_location=dev, vae=vae, vae_path=vae_path)
        except (CheckpointError, OSError) as e:  # OSError: missing, a directory, a FIFO, ...
            raise GenerationError(str(e)) from None
        if loaded.kind != "dalle":
            raise GenerationError(f"{path} is a {loaded.kind} checkpoint; a DALLE checkpoint is needed")
        clip = None
        if clip_model is not None:
            if clip_path is None:
                raise GenerationError(f"{setting('clip_model')} needs {setting('clip_path')}, the file of its weights "
                                      "(nothing is downloaded)")
            try:
                clip = load_open_clip(clip_model, clip_path, device=dev)
            except (CheckpointError, ValueError, OSError, ImportError) as e:
                raise GenerationError(str(e)) from None
        elif clip_path is not None:
            try:
                loaded_clip = load_checkpoint(clip_path, map_location=dev)
            except (CheckpointError, OSError) as e:
                raise GenerationError(f"{setting('clip_path')}: {e}") from None
            if loaded_clip.kind != "clip":
                raise GenerationError(f"{setting('clip_path')} {str(clip_path)!r} is a {loaded_clip.kind} checkpoint, "
                                      "not a CLIP "
                                      "(save one with dalle_pytorch.save(clip, path))")
            clip = loaded_clip.model.to(dt)
        if loaded.tokenizer is None and loaded.tokenizer_description is not None and bpe_path is None:
            warnings.warn("the checkpoint's tokenizer could not be rebuilt; using the default CLIP SimpleTokenizer")
        try:
            tokenizer = select_tokenizer(bpe_path, hug=hug, chinese=chinese, stored=loaded.tokenizer,
                                            model_text_tokens=loaded.model.num_user_text_tokens)
        except ValueError as e:
            raise GenerationError(str(e)) from None
        model = loaded.model.to(dt)
        if quantize is not None:
            stored = quantization_of(model)
            if stored is not None and stored["mode"] != quantize:
                raise GenerationError(f"{path} holds a model quantized to {stored['mode']}; it cannot be made "
                                      f"{quantize} ({setting('quantize')} {stored['mode']}, or leave it out)")
            if quantize not in QUANTIZE_MODES:
                raise GenerationError(f"{setting('quantize')} must be one of {', '.join(QUANTIZE_MODES)}, got {quantize!r}")
            if stored is None:
                try:
                    model = quantize_model(model, quantize)
                except ValueError as e:
                    raise GenerationError(f"{setting('quantize')} {quantize}: {e}") from None
        if tokenizer.vocab_size > model.num_user_text_tokens:
            warnings.warn(f"the tokenizer has {tokenizer.vocab_size} tokens but the model only "
                          f"{model.num_user_text_tokens}; is it the tokenizer the model was trained with?")
        pipe = cls(model, tokenizer, clip=clip)
        pipe.checkpoint = loaded
        return pipe

    # -- text ---------------------------------------------------------------------------------------

    def tokenize(self, captions: list[str]) -> torch.Tensor:
        """(b, text_seq_len) ids of `captions` on the pipeline's device; GenerationError names a caption
        that does not fit: too long, or token ids the model has no embedding for (another tokenizer)."""
        try:
            ids = self.tokenizer.tokenize(list(captions), self.model.text_seq_len)
        except CaptionTooLongError as e:  # nothing truncates a caption here
            raise GenerationError(str(e.with_hint("shorten it (the model's text_seq_len)"))) from None
        except ValueError as e:
            raise GenerationError(str(e)) from None
        limit = self.model.num_user_text_tokens
        if ids.numel() and int(ids.max()) >= limit:
            row = int((ids >= limit).any(dim=1).long().argmax())
            stored = self.checkpoint is not None and self.checkpoint.source == SOURCE_LEGACY
            raise GenerationError(
                f"caption {captions[row]!r} has token id {int(ids[row].max())}, not in [0, {limit}) (the model's text "
                f"tokens): the model was trained with another tokenizer than this {type(self.tokenizer).__name__}"
                f"{' (DALLE-pytorch files do not store theirs)' if stored else ''}; give the tokenizer file it was "
                f"trained with as {setting('bpe_path')}")
        return ids.to(self.device)

    # -- images -------------------------------------------------------------------------------------

    def generate(self, caption: str, *, num_images: int = 4, seed: int = 0, batch_size: int = 4,
                 sampling: SamplingConfig = SamplingConfig(filter_thres=0.9), negative_prompt: Optional[str] = None,
                 img: Optional[torch.Tensor] = None, num_init_img_tokens: Optional[int] = None,
                 mask: Optional[torch.Tensor] = None, use_cache: bool = True, compile: bool | str = False,
                 pack_weights: Optional[bool] = None, speculative: Optional[int] = None,
                 progress: bool = False, on_batch: Optional[Callable[[int], None]] = None,
                 callback: Optional[Callable[[Step], None]] = None, callback_steps: int = 1,
                 canvas: Optional[tuple[int, int]] = None, img_offset: tuple[int, int] = (0, 0)) -> GeneratedImages:
        """Sample `num_images` images for `caption`.

        Batch k (of `batch_size` images) is sampled with a CPU generator seeded `seed + k`.
        negative_prompt: the caption guidance steers away from (needs sampling.cond_scale != 1).
        img: (1, c, H, W) pixels in [0, 1] (or the codes (1, I) of an earlier image, not re-encoded) whose
        first `num_init_img_tokens` codes prime every image, or, with `mask` (H, W) (1 keeps, 0
        generates), whose kept codes are fixed (masked completion).
        `use_cache`, `compile` and `pack_weights` (False: no packed copies of the weights, see
        `DALLE.generate_images`) change the speed and memory, never the images.  speculative: K > 1
        verifies K drafts per forward (speculative Jacobi decoding: the same distribution, other samples,
        so it is recorded in the settings).  on_batch(n) is called after each batch of n images.
        callback(Step) is called every `callback_steps` sampled codes of a batch (at the first step
        that reaches each multiple: speculative steps fill several) and after its last one; it changes
        nothing that is sampled.
        canvas: (H, W) codes, a canvas larger than the trained grid (`generation.canvas`; img is then
        kept at img_offset); its codes (n, H * W) and images of H x W codes; recorded in the settings.
        """
        if int(callback_steps) != callback_steps or callback_steps < 1:
            raise GenerationError(f"callback_steps must be a positive integer, got {callback_steps}")
        text = self.tokenize([caption])
        null = self.tokenize([negative_prompt]) if negative_prompt is not None else None
        prime = None if img is None else img.to(self.device) if not img.is_floating_point() else img.to(
            device=self.device, dtype=self.dtype)
        settings = generation_settings(sampling, negative_prompt, batch_size,
                                       num_init_img_tokens if img is not None else None, speculative,
                                       self.quantize)
        images, seeds, scores, passes, all_codes = [], [], [], [], []
        packs = pack_weights
        if canvas is not None:
            if self.clip is not None:
                raise GenerationError("canvas does not combine with CLIP reranking (CLIP scores images of the trained size)")
            settings["canvas"] = list(canvas)
            if img is not None:
                settings["img_offset"] = list(img_offset)
        if pack_weights is None and not compile and packing_available(self.device, self.dtype):
            rows = batch_size * (2 if sampling.guided else 1)  # every batch packs for the full batch's rows
            packs = self.packs.setdefault(rows, PackedLinears.measured(rows))
        start = time.perf_counter()
        for k, (batch_seed, n) in enumerate(batch_seeds(seed, num_images, batch_size)):
            generator = torch.Generator().manual_seed(batch_seed)
            hook = None if callback is None else self._step_hook(callback, callback_steps, caption, k, batch_seed, canvas)
            stats = DecodeStats()
            try:
                codes = self.model.generate_images(
                    text, filter_thres=sampling.filter_thres, filter_scope=sampling.filter_scope,
                    top_p=sampling.top_p,
                    temperature=sampling.temperature, img=prime, num_init_img_tokens=num_init_img_tokens,
                    mask=mask, cond_scale=sampling.cond_scale, cond_schedule=sampling.cond_schedule, null_text=null,
                    use_cache=use_cache, num_images=n,
                    generator=generator, progress=progress, compile=compile, pack_weights=packs, callback=hook,
                    speculative=speculative, stats=None if canvas is not None else stats, return_codes=True,
                    **({} if canvas is None else {"canvas": canvas, "img_offset": img_offset}),
                )
            except ValueError as e:  # bad settings for this model (e.g. num_init_img_tokens too large)
                raise GenerationError(str(e)) from None
            with torch.inference_mode():  # as generate_images decodes them
                out = (self.model.vae.decode(codes) if canvas is None
                       else self.model.vae.decode_grid(codes.view(n, *canvas))).clamp(0.0, 1.0).float()
            if self.clip is not None:  # each image scored with its caption (the DALLE's tokens for our own CLIP)
                batch_scores = self.clip.score([caption] * n, out, text.long().repeat_interleave(n, dim=0))
                scores.extend(float(s) for s in batch_scores)
            images.append(out.cpu())
            all_codes.append(codes.cpu())
            seeds.extend([batch_seed] * n)
            passes.append(stats.forward_passes)
            if on_batch is not None:
                on_batch(n)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        elapsed = time.perf_counter() - start
        pixels, codes = torch.cat(images), torch.cat(all_codes)
        order = list(range(num_images))
        if self.clip is not None:
            order = sorted(order, key=lambda i: -scores[i])  # best CLIP score first
            pixels, codes, seeds, scores = pixels[order], codes[order], [seeds[i] for i in order], [scores[i] for i in order]
        return GeneratedImages(caption=caption, images=pixels, seeds=seeds, settings=settings, elapsed=elapsed,
                               scores=scores or None, order=order, forward_passes=passes, codes=codes)

    def variations(self, image: Any, n: int = 4, strength: float = 0.5, *, caption: str = "", mode: str = "suffix",
                   seed: int = 0, **kwargs: Any) -> GeneratedImages:
        """`n` variations of `image`: round(strength * I) of its codes resampled for `caption`, the others
        kept exactly; mode "suffix" resamples the bottom-right share in raster order (each new code sees
        every kept one), "random" a random set of positions drawn from `seed` (`pipeline.variations`).

        image: a PIL image or pixels (1, c, H, W) in [0, 1], encoded once by the VAE, or the codes (I,) /
        (1, I) of an earlier result (`GeneratedImages.codes[i]`).  strength 0: the image's own codes n
        times, nothing sampled; 1: free sampling, the images of `generate(caption, seed=seed)`.  Other
        keyword arguments (sampling, batch_size, negative_prompt, speculative, ...) go to `generate`;
        the settings record the variation under "variation".
        """
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise GenerationError(f"{setting('n')} must be an integer >= 1 (the number of variations), got {n!r}")
        taken = sorted({"img", "mask", "num_init_img_tokens", "num_images"} & set(kwargs))
        if taken:
            raise GenerationError(f"variations choose the kept codes themselves: leave out {', '.join(taken)}")
        if kwargs.get("canvas") is not None:
            raise GenerationError("variations do not combine with canvas yet (they vary an image of the trained grid)")
        check_strength(strength, mode)  # before the image is encoded
        self.tokenize([caption])
        plan = plan_variation(source_codes(self.model, image), strength, mode, seed)
        if plan.kept < plan.keep.numel():
            result = self.generate(caption, num_images=n, seed=seed, **plan.generate_args(self.model.fmap_size), **kwargs)
        else:  # nothing to resample (strength 0, or below half a code): the image itself, n times
            start, batch_size = time.perf_counter(), kwargs.get("batch_size", 4)
            codes = plan.codes.expand(n, -1)
            with torch.inference_mode():
                pixels = self.model.vae.decode(codes).clamp(0.0, 1.0).float().cpu()
            settings = generation_settings(kwargs.get("sampling") or SamplingConfig(filter_thres=0.9),
                                           kwargs.get("negative_prompt"), batch_size, quantize=self.quantize)
            seeds = [s for s, m in batch_seeds(seed, n, batch_size) for _ in range(m)]
            result = GeneratedImages(caption, pixels, seeds, settings, time.perf_counter() - start, codes=codes.cpu())
        result.settings["variation"] = plan.settings()
        return result

    def _step_hook(self, callback: Callable[[Step], None], every: int, caption: str, batch: int,
                   seed: int, canvas: Optional[tuple[int, int]] = None) -> Callable[[int, torch.Tensor], None]:
        """generate_codes' callback(filled, codes) -> callback(Step) every `every` codes and at the last."""
        total = self.model.image_seq_len if canvas is None else canvas[0] * canvas[1]
        vae = self.model.vae
        shown = [0]  # the last multiple of `every` reported

        def hook(filled: int, codes: torch.Tensor) -> None:
            if filled // every > shown[0] or filled == total:
                shown[0] = filled // every
                callback(Step(caption, batch, seed, filled, total, codes, vae, canvas))

        return hook

    def sampling_config(self, *, top_k: float = 0.9, top_p: Optional[float] = None, temperature: float = 1.0,
                        cond_scale: float = 1.0, negative_prompt: Optional[str] = None,
                        cond_schedule: str = "constant") -> SamplingConfig:
        """The validated SamplingConfig of these settings; GenerationError with the CLI's one-line reason.

        top_k is DALLE-pytorch's filter_thres (generate.py's --top_k): keep the top (1 - top_k) fraction.
        """
        try:
            sampling = SamplingConfig(filter_thres=top_k, top_p=top_p, temperature=temperature, cond_scale=cond_scale,
                                      cond_schedule=cond_schedule)
        except ValueError as e:
            raise GenerationError(str(e)) from None
        if negative_prompt is not None and not sampling.guided:
            raise GenerationError(f"{setting('negative_prompt')} only has an effect with guidance: set "
                                  f"{setting('cond_scale')} != 1")
        return sampling

    def __call__(self, captions: str | list[str], *, num_images: int = 4, seed: Optional[int] = None,
                 batch_size: int = 4, cond_scale: float = 1.0, top_k: float = 0.9, top_p: Optional[float] = None,
                 temperature: float = 1.0, negative_prompt: Optional[str] = None, cond_schedule: str = "constant",
                 callback: Optional[Callable[[Step], None]] = None, callback_steps: int = 1,
                 **kwargs: Any) -> PipelineOutput:
        """Sample `num_images` images for each caption (a string or a list of them).

        Captions are tokenized with the model's own tokenizer; every one is checked before any
        sampling.  seed: batch k of each caption uses seed + k (None: a fresh seed, in the output).
        top_k (filter_thres), top_p, temperature, cond_scale, negative_prompt, cond_schedule: as for generate.py.
        Other keyword arguments (use_cache, compile, img, ...) go to `generate`.
        """
        if isinstance(captions, str):
            captions = [captions]
        if not captions:
            raise GenerationError("give at least one caption")
        sampling = self.sampling_config(top_k=top_k, top_p=top_p, temperature=temperature, cond_scale=cond_scale,
                                        negative_prompt=negative_prompt, cond_schedule=cond_schedule)
        self.tokenize(list(captions) + ([negative_prompt] if negative_prompt is not None else []))
        seed = fresh_seed() if seed is None else seed
        results = [self.generate(c, num_images=num_images, seed=seed, batch_size=batch_size, sampling=sampling,
                                 negative_prompt=negative_prompt, callback=callback, callback_steps=callback_steps, **kwargs)
                   for c in captions]
        return PipelineOutput(images=[im for r in results for im in r.pil_images()],
                              seeds=[s for r in results for s in r.seeds],
                              captions=[r.caption for r in results for _ in r.seeds],
                              settings=dict(results[0].settings, seed=seed), results=results)
