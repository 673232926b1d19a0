"""Sampling from logits: top-k by fraction (DALLE-pytorch's filter_thres), nucleus, Gumbel-max.

All randomness comes from an optional torch.Generator, so a seed reproduces a sample exactly.
"""
from __future__ import annotations

import torch


def check_sampling_args(filter_thres: float, top_p: float | None, temperature: float) -> None:
    if not 0.0 <= filter_thres < 1.0:
        raise ValueError(f"filter_thres must be in [0, 1), got {filter_thres}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")


def top_k_filter(logits: torch.Tensor, thres: float = 0.5) -> torch.Tensor:
    """Keep the top (1 - thres) fraction of candidates (at least one); others become -inf.

    logits: (b, v) over the candidate vocabulary -> (b, v).
    """
    v = logits.shape[-1]
    k = max(int((1 - thres) * v), 1)
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


def sample(logits: torch.Tensor, *, filter_thres: float = 0.5, top_p: float | None = None,
           temperature: float = 1.0, generator: torch.Generator | None = None) -> torch.Tensor:
    """Filter (top-k fraction, then nucleus) and draw one token per row.  (b, v) -> (b,)."""
    logits = top_k_filter(logits, filter_thres)
    if top_p is not None:
        logits = top_p_filter(logits, top_p)
    return gumbel_sample(logits, temperature, generator)
