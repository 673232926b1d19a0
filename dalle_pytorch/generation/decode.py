"""The decode loop: captions' token ids in, image codes (or caption tokens) out.

Dimensions: b captions, R = b * num_images image rows (2R with guidance: the conditional rows, then
their null rows), u unique prefilled rows, T text_seq_len, T' = T + 1, I = F*F image codes.

    codes = generate_codes(model, text, SamplingConfig(cond_scale=3.0), num_images=4, generator=g)

What one call does, in order (each a function below, shared with the server where it needs them):
1. `plan_rows`: the rows to sample (each caption repeated num_images times) and, with guidance, the
   null rows; the null rows of different captions are mostly the same (the empty caption, a shared
   negative prompt), so each distinct null row is prefilled once;
2. priming (`prime_codes`: an image's first codes) or masked completion (`kept_codes`: the codes a
   mask keeps, fixed wherever they are);
3. `prefill_rows`: the unique rows' captions (and priming codes) through the model's cached step,
   their cache rows copied to every image row;
4. the loop: one code per row per step, drawn by `sampling.next_codes` (guidance combined, filtered,
   Gumbel-max with the caller's generator), fed back through the model's one-token step (eager, or
   compiled once per mode and reused: `compiled_step`).

The model is driven through its step interface (`setup_cache`, `prefill`, `decode_step`,
`last_logits`, `check_text`, `check_image`, `text_ids` and its sizes); nothing here imports a model
class, so `DALLE.generate_images` can call this module (as HF's models inherit their GenerationMixin).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from dalle_pytorch.generation.sampling import SamplingConfig, next_codes, sample
from dalle_pytorch.generation.speculative import DecodeStats, speculative_codes

__all__ = ["COMPILE_MODES", "check_null_text", "DecodeStats", "RowPlan", "compiled_step", "generate_codes", "generate_texts", "image_codes",
           "kept_codes", "plan_rows", "prefill_rows", "prime_codes", "prime_length", "check_num_images"]

#: `compile=` values: False (eager), True / "prefix" (dynamic shapes over the filled prefix), "static"
COMPILE_MODES = (False, True, "prefix", "static")


# -- the compile cache -----------------------------------------------------------------------------


def _one_token_step(model, token, pos, cache, length):
    return model.decode_step(token, pos, cache, length=length)


def _window_step(model, tokens, start, cache, length):
    return model.step(tokens, start, cache, length=length)


_compiled: dict = {}  # (mode, on_cpu) -> the compiled step, made at first use (see compiled_step)


def compiled_step(mode: str, device: torch.device) -> Callable:
    """torch.compile of a cached step for `mode`, made once per process and mode and reused by every
    call and every model (the model is an argument, its parameters graph inputs: a model of another
    configuration adds graphs, not a second compiled function; nothing here keeps a model alive).

    "prefix": the one-token step `(model, token, pos, cache, length)`, dynamic shapes, attending over
    the filled prefix (one graph for every length); "static": the same over the whole preallocated
    cache, shapes fixed (CUDA-graph capture); "window": the t-token step of speculative decoding
    `(model, tokens, start, cache, length)`, dynamic shapes.
    On the CPU, inductor's C++ wrapper calls the step's kernels without Python in between: faster
    steps (measured in docs/benchmarks.md), for a longer first compile.
    """
    if mode not in ("prefix", "static", "window"):
        raise ValueError(f'compiled_step mode must be "prefix", "static" or "window", got {mode!r}')
    on_cpu = torch.device(device).type == "cpu"
    key = (mode, on_cpu)
    if key not in _compiled:
        options = {"cpp_wrapper": True} if on_cpu else None
        fn = _window_step if mode == "window" else _one_token_step
        _compiled[key] = torch.compile(fn, dynamic=mode != "static", options=options)
    return _compiled[key]


def compiled_modes() -> set:
    """The compile modes whose step this process has made (a step is made once per mode, then reused)."""
    return {mode for mode, _ in _compiled}


# -- the rows of a call ---------------------------------------------------------------------------


@dataclass
class RowPlan:
    """Which prefilled (unique) row each sampled row starts from.

    unique_text: (u, T) captions to prefill: the b captions, then (guided) each distinct null row;
    unique_prime: (u, n) their priming codes or None; expand: (R or 2R,) the unique row of every row
    (image rows grouped by caption, then their null rows in the same order); rows: R.
    """

    unique_text: torch.Tensor
    unique_prime: Optional[torch.Tensor]
    expand: torch.Tensor
    rows: int


def plan_rows(text: torch.Tensor, num_images: int, null_text: Optional[torch.Tensor],
              prime: Optional[torch.Tensor], guided: bool) -> RowPlan:
    """Rows for `num_images` images of each caption of `text` (b, T); with guidance one null row per
    image row, `null_text` (b, T) (the empty caption where None), each distinct null row (with its
    priming codes `prime` (b, n)) prefilled once."""
    b, device = text.shape[0], text.device
    rows = b * num_images
    expand = torch.arange(b, device=device).repeat_interleave(num_images)
    unique_text, unique_prime = text, prime
    if guided:
        null_text = torch.zeros_like(text) if null_text is None else null_text
        null_rows = null_text if prime is None else torch.cat((null_text, prime), dim=1)
        distinct, which = torch.unique(null_rows, dim=0, return_inverse=True)
        if distinct.shape[0] == b:  # all differ: keep them in caption order
            distinct, which = null_rows, torch.arange(b, device=device)
        unique_text = torch.cat((text, distinct[:, : text.shape[1]]))
        if prime is not None:
            unique_prime = torch.cat((prime, distinct[:, text.shape[1] :]))
        expand = torch.cat((expand, which[expand] + b))
    return RowPlan(unique_text, unique_prime, expand, rows)


def prefill_rows(model, plan: RowPlan, *, kv_dtype=None, pack_weights=None, rewind: int = 0):
    """Prefill the plan's unique rows and give every row its prefix: (cache of len(plan.expand) rows,
    image logits (len(plan.expand), num_image_tokens) of the first code to sample).

    With every row unique the cache itself is prefilled (no gather); otherwise one prefill per
    unique row, its cache rows copied to each of its rows.  kv_dtype, pack_weights, rewind: as
    `setup_cache`'s (the prefix cache packs no weights: its one step multiplies each weight once).
    """
    ids = model.text_ids(plan.unique_text)
    n_all = plan.expand.shape[0]
    cache = model.setup_cache(n_all, kv_dtype=kv_dtype, pack_weights=pack_weights, rewind=rewind)
    if plan.unique_text.shape[0] == n_all:
        return cache, model.prefill(ids, plan.unique_prime, cache)[:, model.num_text_tokens :]
    start = 0 if plan.unique_prime is None else plan.unique_prime.shape[1]
    prefix = model.setup_cache(plan.unique_text.shape[0], model.text_len + start, kv_dtype=kv_dtype,
                               pack_weights=False)
    last = model.prefill(ids, plan.unique_prime, prefix)[plan.expand, model.num_text_tokens :]
    cache.copy_rows_from(prefix, plan.expand)
    return cache, last


def check_null_text(model, null_text: Optional[torch.Tensor], guided: bool, text: torch.Tensor) -> Optional[torch.Tensor]:
    """The null rows' captions (b, T) of a guided call for the captions `text` (b, T) from `null_text` (1 or
    b, T), or None (the empty caption); ValueError in one line for a bad one, or for null_text without guidance."""
    if null_text is None:
        return None
    if not guided:
        raise ValueError("null_text only has an effect with cond_scale != 1")
    batch = text.shape[0]
    null_text = model.check_text(null_text.to(text.device), "null_text")
    if null_text.shape[0] not in (1, batch):
        raise ValueError(f"null_text batch must be 1 or {batch}, got {null_text.shape[0]}")
    return null_text.expand(batch, -1)


# -- priming and masked completion ------------------------------------------------------------------


def image_codes(model, img: torch.Tensor, batch: int) -> torch.Tensor:
    """The codes (1 or batch, I) of `img`: pixels (1 or batch, c, H, W) in [0, 1], encoded by the VAE, or
    the codes (1 or batch, I) of an earlier image (checked, not re-encoded)."""
    if img.dim() not in (2, 4) or img.shape[0] not in (1, batch) or (img.dim() == 2 and img.shape[1] != model.image_seq_len):
        raise ValueError(f"img must be (1 or {batch}, c, H, W) pixels in [0, 1] or (1 or {batch}, "
                         f"{model.image_seq_len}) codes, got {tuple(img.shape)}")
    return model.check_image(img, img.shape[0])


def prime_length(model, num_init_img_tokens: Optional[int]) -> int:
    """How many of an image's first codes prime generation: `num_init_img_tokens`, checked to be in
    [0, image_seq_len), or 43.75% of the codes when None (DALLE-pytorch's default)."""
    n = int(0.4375 * model.image_seq_len) if num_init_img_tokens is None else int(num_init_img_tokens)
    if not 0 <= n < model.image_seq_len:
        raise ValueError(f"num_init_img_tokens must be in [0, image_seq_len={model.image_seq_len}), got {n}")
    return n


def prime_codes(model, img: Optional[torch.Tensor], num_init_img_tokens: Optional[int], batch: int):
    """The first codes of `img` (pixels or codes: `image_codes`) that prime every image (batch, n), or None.
    n defaults to 43.75% of the codes (DALLE-pytorch's default)."""
    if img is None:
        if num_init_img_tokens:
            raise ValueError("num_init_img_tokens needs img (the image whose first codes prime generation)")
        return None
    n = prime_length(model, num_init_img_tokens)
    codes = image_codes(model, img, batch)[:, :n]
    return codes.expand(batch, n) if codes.shape[0] == 1 else codes


def kept_codes(model, img: Optional[torch.Tensor], mask, batch: int):
    """Masked completion: (known codes, keep) each (batch, I) from `img` (pixels or codes: `image_codes`)
    and `mask`.

    mask: 1 / True keeps, 0 / False generates; (H, W) or (1 or batch, [1,] H, W) at the image's
    resolution (a code is kept when at least half of its cell's pixels are) or at the code grid's
    (F, F) (each entry one code).
    """
    if img is None:
        raise ValueError("mask needs img (the image whose codes the mask keeps)")
    known = image_codes(model, img, batch).expand(batch, model.image_seq_len)
    m = torch.as_tensor(mask, device=known.device)
    if not (m.dtype == torch.bool or m.is_floating_point() or m.dtype in (torch.uint8, torch.int64, torch.int32)):
        raise ValueError(f"mask must be a bool or numeric tensor, got {m.dtype}")
    if m.dim() == 2:  # (H, W)
        m = m[None, None]
    elif m.dim() == 3:  # (b, H, W)
        m = m[:, None]
    f, size = model.fmap_size, model.vae.image_size
    if m.dim() != 4 or m.shape[1] != 1 or m.shape[0] not in (1, batch) or tuple(m.shape[2:]) not in ((f, f), (size, size)):
        raise ValueError(f"mask must be (H, W) or (1 or {batch}, [1,] H, W) with H = W = {size} (pixels) or {f} "
                         f"(codes), got {tuple(torch.as_tensor(mask).shape)}")
    m = m.float()
    if m.shape[-1] != f:  # pixel mask -> code mask: a code is kept when most of its cell is
        m = F.avg_pool2d(m, size // f)
    keep = (m >= 0.5).reshape(m.shape[0], f * f).expand(batch, f * f)
    return known, keep


# -- the loops --------------------------------------------------------------------------------------


#: speculative="auto": this window where a step feeds at most AUTO_MAX_ROWS rows (guided rows count
#: twice), plain decoding above: a small batch's step streams the weights whatever it computes, so a
#: window is nearly free there, while a large batch's step is compute-bound (docs/benchmarks.md)
AUTO_WINDOW = 8
AUTO_MAX_ROWS = 4


def _check_speculative(speculative, use_cache, rows: int = 1) -> int:
    """The window of `speculative` for a step of `rows` rows (None or 1: plain decoding, 0 returned)."""
    if speculative is None:
        return 0
    if speculative == "auto":
        return AUTO_WINDOW if use_cache and rows <= AUTO_MAX_ROWS else 0
    if isinstance(speculative, bool) or not isinstance(speculative, int) or speculative < 1:
        raise ValueError(f'speculative must be None, "auto" or a window of at least 1 code, got {speculative!r}')
    if speculative > 1 and not use_cache:
        raise ValueError("speculative decoding verifies drafts with the cached step: it needs use_cache=True")
    return speculative if speculative > 1 else 0


def _check_options(compile, use_cache, kv_dtype, num_images) -> None:
    if compile not in COMPILE_MODES:
        raise ValueError(f'compile must be False, True, "prefix" or "static", got {compile!r}')
    if compile and not use_cache:
        raise ValueError("compile applies to the cached decode step: it needs use_cache=True")
    if kv_dtype is not None and not (isinstance(kv_dtype, torch.dtype) and kv_dtype.is_floating_point):
        raise ValueError(f"kv_dtype must be a floating torch.dtype, got {kv_dtype!r}")
    if kv_dtype is not None and not use_cache:
        raise ValueError("kv_dtype is the KV cache's dtype: it needs use_cache=True")
    check_num_images(num_images)


def check_num_images(num_images) -> None:
    """ValueError unless `num_images` (images per caption) is a positive integer."""
    if isinstance(num_images, bool) or int(num_images) != num_images or num_images < 1:
        raise ValueError(f"num_images must be a positive integer, got {num_images}")


@torch.inference_mode()
def generate_codes(model, text: torch.Tensor, sampling: SamplingConfig, *, img: Optional[torch.Tensor] = None,
                   num_init_img_tokens: Optional[int] = None, mask=None, null_text: Optional[torch.Tensor] = None,
                   use_cache: bool = True, num_images: int = 1, generator: Optional[torch.Generator] = None,
                   progress: bool = False, compile=False, kv_dtype: Optional[torch.dtype] = None,
                   pack_weights: Optional[bool] = None,
                   callback: Optional[Callable[[int, torch.Tensor], None]] = None,
                   speculative: Optional[int] = None, draft_prior: str = "above",
                   stats: Optional[DecodeStats] = None) -> torch.Tensor:
    """The image codes (b * num_images, I) of `DALLE.generate_images` (which documents the arguments);
    the model must be in eval mode.

    callback(filled, codes): called after each sampled code with the number of codes filled so far
    and the codes (b * num_images, I) (positions >= filled are not sampled yet; priming codes count
    as filled).  It sees the live buffer: copy what it keeps.  Absent, it costs nothing.
    speculative: a window of K > 1 drafts verified per forward (`generation.speculative`; None or 1:
    one code per forward; "auto": AUTO_WINDOW where the step's rows are at most AUTO_MAX_ROWS, else
    plain); draft_prior: how new drafts are guessed (`speculative.DRAFT_PRIORS`).
    stats: a `DecodeStats` to fill (forward passes, codes, accepted drafts per position).
    """
    text = model.check_text(text)
    _check_options(compile, use_cache, kv_dtype, num_images)
    window = _check_speculative(speculative, use_cache, text.shape[0] * num_images * (2 if sampling.guided else 1))
    b, device = text.shape[0], text.device
    if b == 0:  # no caption, no image
        return torch.zeros(0, model.image_seq_len, dtype=torch.long, device=device)
    guided = sampling.guided
    null_text = check_null_text(model, null_text, guided, text)
    known = keep = None
    if mask is not None:
        if num_init_img_tokens is not None:
            raise ValueError("give num_init_img_tokens (keep the first codes) or mask, not both")
        known, keep = kept_codes(model, img, mask, b)
        # the codes every row keeps from the start are a prefix, exactly as priming (same noise drawn)
        lead = int(keep.all(dim=0).long().cumprod(0).sum())
        prime = known[:, : min(lead, model.image_seq_len - 1)] if lead else None
    else:
        prime = prime_codes(model, img, num_init_img_tokens, b)
    plan = plan_rows(text, num_images, null_text, prime, guided)
    rows, expand = plan.rows, plan.expand
    start = 0 if prime is None else prime.shape[1]

    codes = torch.zeros(rows, model.image_seq_len, dtype=torch.long, device=device)
    if prime is not None:
        codes[:, :start] = prime[expand[:rows]]
    if keep is not None:
        known, keep = known[expand[:rows]], keep[expand[:rows]]

    total = model.image_seq_len
    # the guidance schedule: positions first <= t < end draw with the null rows, scale_at(t) each
    first, end = sampling.guidance_span(total)

    def draw(img_logits, t):  # the code of every row at image position t
        scale = sampling.scale_at(t, total)
        if keep is None:
            return next_codes(img_logits, sampling, generator, rows=rows, vocab_size=model.total_tokens, cond_scale=scale)
        forced = keep[:, t]
        if bool(forced.all()):  # nothing to sample at t: no noise drawn
            return known[:, t]
        drawn = next_codes(img_logits, sampling, generator, rows=rows, vocab_size=model.total_tokens, cond_scale=scale)
        return torch.where(forced, known[:, t], drawn)

    if stats is not None:
        stats.rows, stats.codes = rows, rows * (model.image_seq_len - start) - (
            0 if keep is None else int(keep[:, start:].sum()))
    steps = range(start, model.image_seq_len)
    bar = tqdm(steps, desc="image tokens", disable=not progress, leave=False)
    if not use_cache:  # the reference: every step runs the whole sequence again
        all_ids = model.text_ids(plan.unique_text)[expand]
        for t in bar:
            with_null = first <= t < end  # the schedule's rows, as the cached loop's
            cur = torch.cat((codes[:, :t], codes[:, :t])) if with_null else codes[:, :t]
            ids = all_ids if with_null else all_ids[:rows]
            codes[:, t] = draw(model.last_logits(ids, cur)[:, model.num_text_tokens :], t)
            if callback is not None:
                callback(t + 1, codes)
        return codes

    weight = model.to_logits[0].weight  # the activations' (the projection may be quantized)
    if compile:
        model.keep_kernel_layouts()  # int4: its kernel's layout inside the compiled graph
    if kv_dtype is None and not compile and weight.device.type == "cpu" and weight.dtype in (torch.bfloat16, torch.float16):
        kv_dtype = torch.float32  # eager CPU attention: fp32 reads faster (see generate_images' docstring)
    # a compiled step multiplies with inductor's kernels (dynamo does not trace packed tensors);
    # the eager one goes through the cache's packed weights
    cache, last = prefill_rows(model, plan, kv_dtype=kv_dtype, pack_weights=False if compile else pack_weights,
                               rewind=window)
    if window:
        step = None
        if compile:
            compiled = compiled_step("window", weight.device)
            step = lambda tokens, start, cache, length: compiled(model, tokens, start, cache, length)  # noqa: E731
        with bar:
            return speculative_codes(model, codes, start, last, cache, sampling, window=window, rows=rows,
                                     guided=guided, generator=generator, known=known, keep=keep,
                                     prior=draft_prior, stats=stats, callback=callback, on_progress=bar.update,
                                     step=step)
    mode = "prefix" if compile is True else compile
    if compile:
        if progress and mode not in compiled_modes():
            bar.write(f"compiling the decode step (compile={mode!r}): a one-off wait of seconds to a minute")
        compiled = compiled_step(mode, weight.device)
        step_fn = lambda token, pos, cache, length: compiled(model, token, pos, cache, length)  # noqa: E731
    else:
        step_fn = model.decode_step
    positions = torch.arange(model.text_len + model.image_seq_len, device=device)
    # the rows each step feeds: 2R while the schedule needs the null rows, R (the first R rows of the cache,
    # so the step costs an unguided one) before its span starts and after it ends; the null rows skipped
    # before the span catch up in one multi-token step as it starts (`catch_up_rows`)
    lead = cache.narrow_rows(0, rows) if guided else cache
    null_fed = first <= start < end  # the null rows' cache is filled up to the position being drawn
    for t in bar:
        code = draw(last, t)
        codes[:, t] = code
        if callback is not None:
            callback(t + 1, codes)
        if t + 1 < model.image_seq_len:
            with_null = first <= t + 1 < end
            pos = model.text_len + t
            # "static" attends over the whole cache (shapes never change); otherwise the filled prefix
            length = None if mode == "static" else pos + 1
            if with_null and null_fed:
                last = step_fn(torch.cat((code, code)), positions[pos], cache, length=length)
            else:
                last = step_fn(code, positions[pos], lead, length=length)
                if with_null:  # the span starts at t + 1: the null rows take codes start..t in one step
                    null = catch_up_rows(model, cache.narrow_rows(rows, rows), codes[:, start : t + 1],
                                         model.text_len + start)
                    last, null_fed = torch.cat((last, null)), True
                    if stats is not None:
                        stats.forward_passes += 1
            if stats is not None:
                stats.forward_passes += 1
    return codes


def catch_up_rows(model, cache, codes: torch.Tensor, pos: int) -> torch.Tensor:
    """Feed image codes (r, n) into `cache` (r rows) at sequence positions pos .. pos + n - 1 with the
    model's multi-token step (chunks of `model.PREFILL_CHUNK`, shared start); returns the image logits
    (r, num_image_tokens) of the position after the last code.  A guidance interval's null rows, skipped
    while their scale was 1, join the batch this way where the interval starts."""
    last = None
    for first in range(0, codes.shape[1], model.PREFILL_CHUNK):
        part = codes[:, first : first + model.PREFILL_CHUNK]
        start = pos + first
        last = model.step(part, torch.tensor(start, device=codes.device), cache, length=start + part.shape[1])[:, -1]
    return last


@torch.inference_mode()
def generate_texts(model, tokenizer, text: Optional[str], sampling: SamplingConfig, *, use_cache: bool = True,
                   generator: Optional[torch.Generator] = None):
    """Continue a caption (or start one) up to text_seq_len tokens: (tokens (1, T) with pads as 0,
    [decoded caption]).  The model must be in eval mode."""
    device = model.to_logits[0].weight.device
    prompt = tokenizer.encode(text) if text else []
    if len(prompt) > model.text_seq_len:
        raise ValueError(f"text is {len(prompt)} tokens, longer than text_seq_len={model.text_seq_len}")
    if any(t < 0 or t >= model.num_user_text_tokens for t in prompt):
        raise ValueError(f"the tokenizer produced ids outside [0, {model.num_user_text_tokens}); "
                         "is it the tokenizer the model was trained with?")
    ids = torch.tensor([[0] + prompt], dtype=torch.long, device=device)  # <bos> + prompt

    def pick(logits):  # text logits (1, num_text_tokens)
        return sample(logits, sampling, generator, vocab_size=model.total_tokens)

    n0 = ids.shape[1]
    if use_cache and n0 < model.text_len:
        cache = model.setup_cache(1, model.text_len)
        last = model.prefill(ids, None, cache)[:, : model.num_text_tokens]
        positions = torch.arange(model.text_len, device=device)
        for pos in range(n0, model.text_len):
            tok = pick(last)
            ids = torch.cat((ids, tok[:, None]), dim=1)
            if pos + 1 < model.text_len:
                last = model.decode_step(tok, positions[pos], cache, image=False, length=pos + 1)
    else:
        for _ in range(n0, model.text_len):
            last = model.last_logits(ids)[:, : model.num_text_tokens]
            ids = torch.cat((ids, pick(last)[:, None]), dim=1)
    tokens = ids[:, 1:]
    tokens = torch.where(tokens >= model.num_user_text_tokens, torch.zeros_like(tokens), tokens)
    return tokens, [tokenizer.decode(tokens[0])]
