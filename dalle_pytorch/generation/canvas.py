"""Sampling a canvas larger than the trained code grid with a sliding window (taming-transformers'
`scripts/sample_conditional.py` rule, on our cached step).

Dimensions: R image rows (2R with guidance: the conditional rows, then their null rows), F the trained
grid's side (fmap_size), a canvas of H x W codes (H, W >= F), T' = text_len.

The codes of the canvas are sampled in raster order. The code at (i, j) is drawn from the model run
on the caption and on the F x F *window* of the canvas at rows i0 .. i0 + F - 1 and columns
j0 .. j0 + F - 1, where

    i0 = clamp(i - F // 2, 0, H - F),  j0 = clamp(j - F // 2, 0, W - F)

(the window roughly centred on the code, pushed inside the canvas at its borders: taming's rule; for
an odd F taming's window can reach one code past the far border, ours stops at it). Inside the window
the code sits at local position p = (i - i0) * F + (j - j0), and the model sees the window's first p
codes in the window's raster order: the window rows above the code (whole, already sampled, since
they are earlier canvas rows) and the codes left of it in its row. So every window is an image of the
trained size, with the trained positions, attention patterns and token shift: the model is never run
outside what it was trained on.

Cached wherever the window allows: when the next code's window is the same window, one step of the
code just drawn continues the window's cache (the window does not move while a code's column is
within F // 2 of the canvas's left or right edge, and on a canvas as wide as the grid it never moves
sideways); when the window moves, its first p codes are run again as one multi-token step after the
caption's cached prefix (the caption is prefilled once per call: its positions do not depend on the
window). On a canvas of the trained size this is exactly plain decoding.

`use_cache=False` is the reference the cached path is tested against: every code runs its whole
window prefix again through the uncached forward.

A guidance schedule (`SamplingConfig.cond_schedule`) runs over the canvas's codes in raster order
(position n of H * W); the null rows stay in the batch for the whole canvas (they do not leave at an
interval's end here, as they do on the trained grid).

Kept codes (outpainting, masked completion and priming on a canvas): `known` (R, H, W) codes and
`keep` (R, H, W) bool; a kept code is never drawn (no noise is drawn for a position every row keeps)
and conditions the codes after it inside their windows.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch
from tqdm.auto import tqdm

from dalle_pytorch.errors import setting
from dalle_pytorch.generation.decode import (check_null_text, check_num_images, image_codes, kept_codes, plan_rows,
                                             prime_length)
from dalle_pytorch.generation.sampling import SamplingConfig, next_codes

__all__ = ["CanvasState", "CanvasStats", "canvas_codes", "draw_canvas_code", "canvas_kept", "check_canvas", "generate_canvas", "window_origin"]


def check_canvas(canvas, fmap_size: int) -> tuple[int, int]:
    """(H, W) codes from `canvas` (a pair of integers, each >= fmap_size), or a one-line ValueError."""
    if (not isinstance(canvas, (tuple, list)) or len(canvas) != 2
            or any(isinstance(s, bool) or not isinstance(s, int) for s in canvas)):
        raise ValueError(f"{setting('canvas')} must be (height, width) in codes, two integers, got {canvas!r}")
    h, w = canvas
    if h < fmap_size or w < fmap_size:
        raise ValueError(f"{setting('canvas')} must be at least the trained grid, {fmap_size}x{fmap_size} codes, got {h}x{w}")
    return int(h), int(w)


def window_origin(i: int, j: int, canvas: tuple[int, int], fmap_size: int) -> tuple[int, int]:
    """The top-left code (i0, j0) of the window that samples canvas code (i, j) (the rule above)."""
    half = fmap_size // 2
    h, w = canvas
    return min(max(i - half, 0), h - fmap_size), min(max(j - half, 0), w - fmap_size)


@dataclass
class CanvasStats:
    """What a canvas call did: codes sampled, one-token steps (the window continued) and window
    prefills (the window moved: its prefix run again as one multi-token step)."""

    codes: int = 0
    steps: int = 0
    prefills: int = 0
    prefill_tokens: int = 0


class CanvasState:
    """One canvas being sampled: its codes and the cache of its current window (the inference state of
    `canvas_codes` and of the server's canvas requests, which advance it one code per loop iteration).

    ids: model text ids (R or 2R, T') of every row (guided: the conditional rows, then their null rows;
    `rows` = R); known, keep: (R, H, W) kept codes and where they are kept (or None).  `logits()` gives
    the image logits (R or 2R, V) of the code at `filled` (its window's forward, cached where the window
    allows); `put(codes (R,))` writes that code and moves on.  use_cache=False: the uncached reference.
    """

    def __init__(self, model, ids: torch.Tensor, canvas: tuple[int, int], *, rows: int, use_cache: bool = True,
                 known: Optional[torch.Tensor] = None, keep: Optional[torch.Tensor] = None,
                 kv_dtype: Optional[torch.dtype] = None, pack_weights=None, stats: Optional[CanvasStats] = None):
        self.model, self.ids, self.canvas, self.rows, self.use_cache = model, ids, canvas, rows, use_cache
        self.guided = ids.shape[0] != rows
        h, w = canvas
        codes = torch.zeros(rows, h, w, dtype=torch.long, device=ids.device)
        self.codes = codes if keep is None else torch.where(keep, known, codes)  # (R, H, W)
        self.keep = keep
        self.filled = 0
        self.stats = CanvasStats() if stats is None else stats
        self._current = None  # (i0, j0, p) of the window whose first p codes the cache holds
        self._positions = torch.arange(model.text_len + model.image_seq_len, device=ids.device)
        if use_cache:
            self._prefix = model.setup_cache(ids.shape[0], model.text_len, kv_dtype=kv_dtype, pack_weights=False)
            self._text_last = model.prefill(ids, None, self._prefix)[:, model.num_text_tokens :]  # window position 0
            self._cache = model.setup_cache(ids.shape[0], kv_dtype=kv_dtype, pack_weights=pack_weights)

    @property
    def total(self) -> int:
        return self.canvas[0] * self.canvas[1]

    @property
    def flat(self) -> torch.Tensor:
        """(R, H * W) a view of the live codes in raster order."""
        return self.codes.view(self.rows, self.total)

    def forced(self) -> Optional[torch.Tensor]:
        """(R,) bool: the rows whose code at `filled` is kept, or None (nothing kept there)."""
        if self.keep is None:
            return None
        i, j = divmod(self.filled, self.canvas[1])
        return self.keep[:, i, j]

    def _window_prefix(self, i0: int, j0: int, p: int) -> torch.Tensor:  # (R or 2R, p) the window's first p codes
        f = self.model.fmap_size
        win = self.codes[:, i0 : i0 + f, j0 : j0 + f].reshape(self.rows, f * f)[:, :p]
        return torch.cat((win, win)) if self.guided else win

    def logits(self) -> torch.Tensor:
        """The image logits (R or 2R, V) of the code at `filled` (called once per position)."""
        model, f, n = self.model, self.model.fmap_size, self.filled
        i, j = divmod(n, self.canvas[1])
        i0, j0 = window_origin(i, j, self.canvas, f)
        p = (i - i0) * f + (j - j0)
        text_len = model.text_len
        if not self.use_cache:
            last = model.last_logits(self.ids, self._window_prefix(i0, j0, p))[:, model.num_text_tokens :]
        elif self._current == (i0, j0, p - 1):  # the window continues: one step of the code just drawn
            prev = self.codes[:, i0 + (p - 1) // f, j0 + (p - 1) % f]
            pos = text_len + p - 1
            last = model.decode_step(torch.cat((prev, prev)) if self.guided else prev, self._positions[pos],
                                     self._cache, length=pos + 1)
            self.stats.steps += 1
        else:  # a new window: the caption's prefix, then (p > 0) its first p codes in one step
            self._cache.copy_rows_from(self._prefix, torch.arange(self.ids.shape[0], device=self.ids.device))
            if p == 0:
                last = self._text_last
            else:
                last = model.step(self._window_prefix(i0, j0, p), self._positions[text_len], self._cache,
                                  length=text_len + p)[:, -1]
                self.stats.prefills += 1
                self.stats.prefill_tokens += p * self.ids.shape[0]
        self._current = (i0, j0, p)
        return last

    def put(self, code: torch.Tensor) -> None:
        """Write the code (R,) at `filled` (kept rows keep theirs) and move to the next position."""
        i, j = divmod(self.filled, self.canvas[1])
        forced = self.forced()
        self.codes[:, i, j] = code if forced is None else torch.where(forced, self.codes[:, i, j], code)
        self.stats.codes += self.rows if forced is None else int((~forced).sum())
        self.filled += 1

    def skip(self) -> None:
        """Move past a position every row keeps (nothing drawn)."""
        self.filled += 1


def draw_canvas_code(state: CanvasState, logits: torch.Tensor, sampling: SamplingConfig,
                     generator: Optional[torch.Generator]) -> None:
    """Draw the state's code at `filled` from `logits` (its schedule's scale there; no noise drawn where every
    row keeps its code) and move on: the one canvas draw of `canvas_codes` and the server."""
    forced = state.forced()
    if forced is not None and bool(forced.all()):
        state.skip()
        return
    scale = sampling.scale_at(state.filled, state.total)
    state.put(next_codes(logits, sampling, generator, rows=state.rows, vocab_size=state.model.total_tokens,
                         cond_scale=scale))


def canvas_codes(model, ids: torch.Tensor, sampling: SamplingConfig, canvas: tuple[int, int], *, rows: int,
                 generator: Optional[torch.Generator] = None, use_cache: bool = True,
                 known: Optional[torch.Tensor] = None, keep: Optional[torch.Tensor] = None,
                 kv_dtype: Optional[torch.dtype] = None, pack_weights=None, progress: bool = False,
                 callback: Optional[Callable[[int, torch.Tensor], None]] = None,
                 stats: Optional[CanvasStats] = None) -> torch.Tensor:
    """The codes (R, H, W) of a canvas of `canvas` = (H, W) codes (`CanvasState` documents ids, rows,
    known and keep).  callback(filled, codes): after every code, the number filled in raster order and
    the live buffer as (R, H * W) codes in raster order (as generate_codes').  The model must be in eval mode.
    """
    state = CanvasState(model, ids, canvas, rows=rows, use_cache=use_cache, known=known, keep=keep,
                        kv_dtype=kv_dtype, pack_weights=pack_weights, stats=stats)
    with tqdm(total=state.total, desc="canvas codes", disable=not progress, leave=False) as bar:
        while state.filled < state.total:
            draw_canvas_code(state, state.logits(), sampling, generator)
            if callback is not None:
                callback(state.filled, state.flat)
            bar.update(1)
    return state.codes


def canvas_kept(model, canvas: tuple[int, int], img: torch.Tensor, img_offset, num_init_img_tokens: Optional[int],
                mask, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Outpainting, priming and masked completion on a canvas: (known, keep) each (batch, H, W).

    img: (1 or batch, c, S, S) pixels of the trained size (or (1 or batch, I) codes), placed with its
    top-left code at `img_offset` = (row, column) on the canvas.  Its codes are all kept (outpainting)
    unless `num_init_img_tokens` keeps only its first n codes in its raster order (priming) or `mask`
    (as `decode.kept_codes`', over the image) keeps some; every code outside the image is sampled.
    """
    f, (h, w) = model.fmap_size, canvas
    if (not isinstance(img_offset, (tuple, list)) or len(img_offset) != 2
            or any(isinstance(o, bool) or not isinstance(o, int) for o in img_offset)):
        raise ValueError(f"{setting('img_offset')} must be (row, column) in codes, two integers, got {img_offset!r}")
    oi, oj = img_offset
    if not (0 <= oi <= h - f and 0 <= oj <= w - f):
        raise ValueError(f"{setting('img_offset')} must place the {f}x{f} codes of {setting('img')} inside the {h}x{w} canvas: row in "
                         f"[0, {h - f}], column in [0, {w - f}], got {tuple(img_offset)}")
    if mask is not None:
        if num_init_img_tokens is not None:
            raise ValueError("give num_init_img_tokens (keep the first codes) or mask, not both")
        codes, keep_img = kept_codes(model, img, mask, batch)
    elif num_init_img_tokens is not None:
        if img is None:
            raise ValueError("num_init_img_tokens needs img (the image whose first codes prime generation)")
        n = prime_length(model, num_init_img_tokens)
        codes = image_codes(model, img, batch).expand(batch, model.image_seq_len)
        keep_img = (torch.arange(model.image_seq_len, device=codes.device) < n).expand(batch, -1)
    else:
        codes = image_codes(model, img, batch).expand(batch, model.image_seq_len)
        keep_img = torch.ones_like(codes, dtype=torch.bool)
    known = torch.zeros(batch, h, w, dtype=torch.long, device=codes.device)
    keep = torch.zeros(batch, h, w, dtype=torch.bool, device=codes.device)
    known[:, oi : oi + f, oj : oj + f] = codes.reshape(batch, f, f)
    keep[:, oi : oi + f, oj : oj + f] = keep_img.reshape(batch, f, f)
    return known, keep


def generate_canvas(model, text: torch.Tensor, sampling: SamplingConfig, canvas, *, img=None, img_offset=(0, 0),
                    num_init_img_tokens: Optional[int] = None, mask=None, null_text: Optional[torch.Tensor] = None,
                    use_cache: bool = True, num_images: int = 1, generator: Optional[torch.Generator] = None,
                    progress: bool = False, kv_dtype: Optional[torch.dtype] = None, pack_weights=None,
                    callback: Optional[Callable[[int, torch.Tensor], None]] = None,
                    stats: Optional[CanvasStats] = None) -> torch.Tensor:
    """The codes (b * num_images, H * W) in raster order of a canvas of (H, W) codes for the captions
    `text` (b, T) (`DALLE.generate_images(canvas=)` documents the arguments; rows grouped by caption).
    `img` (+ `img_offset`, `num_init_img_tokens`, `mask`): the codes kept on the canvas (`canvas_kept`)."""
    text = model.check_text(text)
    h, w = check_canvas(canvas, model.fmap_size)
    check_num_images(num_images)
    b, device = text.shape[0], text.device
    if b == 0:
        return torch.zeros(0, h * w, dtype=torch.long, device=device)
    null_text = check_null_text(model, null_text, sampling.guided, text)
    known = keep = None
    if img is not None:
        known, keep = canvas_kept(model, (h, w), img, img_offset, num_init_img_tokens, mask, b)
    elif mask is not None or num_init_img_tokens is not None:
        raise ValueError("mask and num_init_img_tokens need img (the image whose codes they keep)")
    plan = plan_rows(text, num_images, null_text, None, sampling.guided)
    ids = model.text_ids(plan.unique_text)[plan.expand]
    if keep is not None:
        rows_of = plan.expand[: plan.rows]
        known, keep = known[rows_of], keep[rows_of]
    codes = canvas_codes(model, ids, sampling, (h, w), rows=plan.rows, generator=generator, use_cache=use_cache,
                         known=known, keep=keep, kv_dtype=kv_dtype, pack_weights=pack_weights, progress=progress,
                         callback=callback, stats=stats)
    return codes.reshape(plan.rows, h * w)
