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
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Optional

import torch

__all__ = ["FILTER_SCOPES", "SamplingConfig", "sample", "sampling_probs", "filtered_logits", "next_codes", "guided_logits",
           "top_k_filter", "top_p_filter", "gumbel_sample", "categorical"]

FILTER_SCOPES = ("vocab", "candidates")


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

    @property
    def guided(self) -> bool:
        return self.cond_scale != 1.0

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

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
               vocab_size: Optional[int] = None) -> torch.Tensor:
    """The next token of each of `rows` sampled rows from a step's logits (what the decode loop and the
    server's scheduler both draw with).  logits: (rows, v), or (2 * rows, v) with guidance: the
    conditional rows, then their null rows, combined by `guided_logits`.  Returns (rows,) long.
    """
    if config.guided:
        logits = guided_logits(logits, rows, config.cond_scale)
    return sample(logits, config, generator, vocab_size=vocab_size)
