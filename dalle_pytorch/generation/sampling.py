"""Sampling from logits: top-k by fraction (DALLE-pytorch's filter_thres), nucleus, Gumbel-max.

DALLE-pytorch's `filter_thres` keeps the top `k = max(int((1 - filter_thres) * V), 1)` logits,
where V is the model's WHOLE vocabulary (`total_tokens`: text ids, one pad id per text position and
image codes): at an image position the codes compete with text logits masked to -inf, so it keeps
the top min(k, num_image_tokens) codes (all 512 of 512 codes with 10,000 text tokens and 0.9).
`filter_scope="vocab"` (the default) is that meaning; `filter_scope="candidates"` counts the
fraction over the tokens that can be sampled at the position (image codes, or text tokens), a
sharper filter of this package (0.9 keeps the top 10% of the codes).

`SamplingConfig` holds the sampling settings, validated once where they enter (the Python API,
generate.py, the server) and passed down as is. All randomness comes from an optional
torch.Generator, so a seed reproduces a sample exactly.

Guidance schedules (`cond_schedule`, issue #28; LlamaGen's `cfg_interval` is the prior art): the scale of
classifier-free guidance may depend on the image code position t of I codes: "constant" (cond_scale
everywhere), "interval:A:B" (cond_scale for A*I <= t < B*I, none elsewhere: the decode loop's null rows
leave the batch at the interval's end) or "linear" (a ramp from 1 at the first code to cond_scale at the
last).  `SamplingConfig.scale_at` and `guidance_span` are the one definition every loop reads.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Optional

import torch

from dalle_pytorch.errors import setting

__all__ = ["COND_SCHEDULES", "FILTER_SCOPES", "SamplingConfig", "sample", "sampling_probs", "filtered_logits", "next_codes", "guided_logits",
           "top_k_filter", "top_p_filter", "gumbel_sample", "categorical"]

FILTER_SCOPES = ("vocab", "candidates")
#: the forms of `SamplingConfig.cond_schedule` (A and B fractions of the image codes)
COND_SCHEDULES = ("constant", "interval:A:B", "linear")


def _interval(schedule: str) -> tuple[Fraction, Fraction]:
    """(A, B) of "interval:A:B", exact fractions (0.3 is 3/10, so A*I is exact), or ValueError."""
    parts = schedule.split(":")
    try:
        if len(parts) != 3 or parts[0] != "interval":
            raise ValueError
        a, b = Fraction(parts[1]), Fraction(parts[2])
    except (ValueError, ZeroDivisionError):
        raise ValueError(f"{setting('cond_schedule')} must be one of {', '.join(COND_SCHEDULES)}, "
                         f"got {schedule!r}") from None
    if not 0 <= a < b <= 1:
        raise ValueError(f"{setting('cond_schedule')} interval:A:B needs 0 <= A < B <= 1, got {schedule!r}")
    return a, b


def _number(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return float(value)


@dataclass(frozen=True)
class SamplingConfig:
    """How image codes (or caption tokens) are drawn from the model's logits."""

    filter_thres: float = 0.5  # keep the top (1 - filter_thres) fraction (of `filter_scope`); in [0, 1)
    top_p: Optional[float] = None  # nucleus sampling threshold in (0, 1], None = off
    temperature: float = 1.0  # > 0; logits are divided by it
    cond_scale: float = 1.0  # classifier-free guidance: null + (cond - null) * cond_scale; >= 0, 1 = none
    # what the fraction counts: "vocab" = the model's whole vocabulary (DALLE-pytorch), "candidates" =
    # the tokens that can be sampled at the position (the image codes, or the text tokens)
    filter_scope: str = "vocab"
    # the guidance scale by image code position: "constant", "interval:A:B" or "linear" (see scale_at)
    cond_schedule: str = "constant"

    def __post_init__(self) -> None:
        if not 0.0 <= _number("filter_thres", self.filter_thres) < 1.0:
            raise ValueError(f"filter_thres must be in [0, 1), got {self.filter_thres}")
        if self.filter_scope not in FILTER_SCOPES:
            raise ValueError(f"filter_scope must be one of {', '.join(FILTER_SCOPES)}, got {self.filter_scope!r}")
        if self.top_p is not None and not 0.0 < _number("top_p", self.top_p) <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if not _number("temperature", self.temperature) > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if not _number("cond_scale", self.cond_scale) >= 0:
            raise ValueError(f"cond_scale must be >= 0 (1 = no guidance), got {self.cond_scale}")
        if not isinstance(self.cond_schedule, str):
            raise ValueError(f"{setting('cond_schedule')} must be a string, got {self.cond_schedule!r}")
        if self.cond_schedule not in ("constant", "linear"):
            _interval(self.cond_schedule)
        if self.cond_schedule != "constant" and not self.guided:
            raise ValueError(f"{setting('cond_schedule')} {self.cond_schedule} only has an effect with guidance: "
                             f"set {setting('cond_scale')} != 1")

    @property
    def guided(self) -> bool:
        return self.cond_scale != 1.0

    def to_dict(self) -> dict:
        """The settings as recorded (PNG chunks, generation.json, the server's answers); `cond_schedule` only
        where it is not "constant", so records of constant guidance read as before and a record without it
        (every earlier one) is constant guidance: `SamplingConfig(**d)` rebuilds either."""
        d = dataclasses.asdict(self)
        if self.cond_schedule == "constant":
            del d["cond_schedule"]
        return d

    def guidance_span(self, total: int) -> tuple[int, int]:
        """(first, end): the image code positions first <= t < end of `total` codes whose draw combines the
        null rows' logits (an empty span is first == end); the null rows are needed from first to end - 1
        and leave at `end`.  Unguided: (0, 0).  "interval:A:B" is A*I <= t < B*I for integer t, i.e.
        ceil(A*I) <= t < ceil(B*I), with A*I exact (A a fraction): interval:0:1 is every position, as
        "constant"; interval:0:0.5 of 256 codes is t < 128 and of 255 codes t < 128 (127.5 rounds up).
        "linear" starts at scale 1, but its first position is counted guided: the rows are there anyway."""
        if not self.guided:
            return 0, 0
        if self.cond_schedule in ("constant", "linear"):
            return 0, total
        a, b = _interval(self.cond_schedule)
        return math.ceil(a * total), math.ceil(b * total)

    def scale_at(self, t: int, total: int) -> float:
        """The guidance scale of image code position t (0 <= t < total): 1.0 (no guidance) outside the span.

        "linear" ramps 1 + (cond_scale - 1) * t / (total - 1): 1 at the first code, cond_scale at the last.
        Increasing, not decreasing: the first codes are drawn with the least context and fix the layout,
        so guiding them hard narrows the samples to the caption's most likely composition, while later
        codes (details, and here the shape drawn over the background) are where the caption's content must
        be followed (increasing schedules did best in Wang et al. 2024, "Analysis of Classifier-Free
        Guidance Weight Schedulers", arXiv:2404.13040; Muse raises its scale during decoding too).
        """
        if not self.guided:
            return 1.0
        if self.cond_schedule == "constant":
            return self.cond_scale
        if self.cond_schedule == "linear":
            return self.cond_scale if total <= 1 else 1.0 + (self.cond_scale - 1.0) * t / (total - 1)
        first, end = self.guidance_span(total)
        return self.cond_scale if first <= t < end else 1.0

    def top_k_vocab(self, vocab_size: int) -> Optional[int]:
        """The vocabulary size `top_k_filter` counts the fraction over for a model of `vocab_size` tokens."""
        return vocab_size if self.filter_scope == "vocab" else None


def top_k_filter(logits: torch.Tensor, thres: float = 0.5, vocab_size: Optional[int] = None) -> torch.Tensor:
    """Keep the top k = max(int((1 - thres) * vocab_size), 1) candidates (all when k >= v); others become -inf.

    logits: (b, v) over the candidates -> (b, v). vocab_size: what the fraction counts; None = v.
    DALLE-pytorch's filter passes its whole vocabulary (total_tokens) here. Ties with the k-th value
    are all kept (torch.topk keeps exactly k).
    """
    v = logits.shape[-1]
    k = max(int((1 - thres) * (v if vocab_size is None else vocab_size)), 1)
    if k >= v:
        return logits
    # the k-th largest value is the smallest of the top k: an unsorted top-k skips sorting the k
    # values (the same threshold, so the same samples; 64 x 1024 -> 512: 10x faster on CPU)
    kth = torch.topk(logits, k, dim=-1, sorted=False).values.amin(dim=-1, keepdim=True)
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Nucleus filtering: keep the smallest set of tokens whose probability reaches top_p."""
    sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
    probs = sorted_logits.softmax(dim=-1)
    before = probs.cumsum(dim=-1) - probs  # mass strictly before each token
    remove_sorted = before >= top_p  # the first token is always kept (before = 0)
    remove = torch.zeros_like(remove_sorted).scatter(-1, order, remove_sorted)
    return logits.masked_fill(remove, float("-inf"))


def gumbel_sample(logits: torch.Tensor, temperature: float = 1.0, generator: torch.Generator | None = None) -> torch.Tensor:
    """argmax(logits / temperature + Gumbel noise): an exact sample of softmax(logits / temperature).

    logits: (b, v) -> (b,) long.
    """
    device = generator.device if generator is not None else logits.device
    u = torch.rand(logits.shape, generator=generator, device=device, dtype=torch.float32).to(logits.device)
    u = u.clamp(1e-20, 1.0)
    noise = -torch.log((-torch.log(u)).clamp_min(1e-20))  # Gumbel(0, 1)
    return (logits.float() / temperature + noise).argmax(dim=-1)


def guided_logits(logits: torch.Tensor, rows: int, cond_scale: float) -> torch.Tensor:
    """Classifier-free guidance: logits (2R, v), the R conditional rows then their R null rows ->
    null + (cond - null) * cond_scale, (R, v)."""
    cond, null = logits[:rows], logits[rows:]
    return null + (cond - null) * cond_scale


def filtered_logits(logits: torch.Tensor, config: SamplingConfig, *, vocab_size: Optional[int] = None) -> torch.Tensor:
    """The logits `sample` draws from, before the temperature: top-k fraction, then nucleus; filtered
    tokens are -inf.  (..., v) -> (..., v).  vocab_size: as for `sample`."""
    vocab = None if vocab_size is None else config.top_k_vocab(vocab_size)
    logits = top_k_filter(logits, config.filter_thres, vocab)
    if config.top_p is not None:
        logits = top_p_filter(logits, config.top_p)
    return logits


def sample(logits: torch.Tensor, config: SamplingConfig, generator: torch.Generator | None = None, *,
           vocab_size: Optional[int] = None) -> torch.Tensor:
    """Filter (top-k fraction, then nucleus) and draw one token per row.  (b, v) -> (b,).

    vocab_size: the model's whole vocabulary (`DALLE.total_tokens`), which filter_scope="vocab" counts
    the top-k fraction over; None: the v candidates.
    """
    return gumbel_sample(filtered_logits(logits, config, vocab_size=vocab_size), config.temperature, generator)


def sampling_probs(logits: torch.Tensor, config: SamplingConfig, *, vocab_size: Optional[int] = None) -> torch.Tensor:
    """The exact distribution `sample` draws from: softmax(filtered logits / temperature) in float32.
    (..., v) -> (..., v); filtered tokens have probability 0."""
    return (filtered_logits(logits, config, vocab_size=vocab_size).float() / config.temperature).softmax(dim=-1)


def categorical(probs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One exact sample per row of unnormalised probabilities (..., v) >= 0 -> (...,) long (Gumbel-max on
    their logarithm; a zero is never drawn)."""
    return gumbel_sample(probs.float().log(), 1.0, generator)


def next_codes(logits: torch.Tensor, config: SamplingConfig, generator: torch.Generator | None = None, *, rows: int,
               vocab_size: Optional[int] = None, cond_scale: Optional[float] = None) -> torch.Tensor:
    """The next token of each of `rows` sampled rows from a step's logits (what the decode loop and the
    server's scheduler both draw with).  logits: (rows, v), unguided (or after a guidance interval's null
    rows left), or (2 * rows, v) with guidance: the conditional rows, then their null rows, combined by
    `guided_logits` with `cond_scale` (the schedule's scale at this position, `SamplingConfig.scale_at`;
    None: config.cond_scale); at scale 1 the conditional rows are taken as they are.  Returns (rows,) long.
    """
    if logits.shape[0] == 2 * rows:
        scale = config.cond_scale if cond_scale is None else cond_scale
        logits = logits[:rows] if scale == 1.0 else guided_logits(logits, rows, scale)
    return sample(logits, config, generator, vocab_size=vocab_size)
