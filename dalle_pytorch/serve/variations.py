"""Variations on the server: a request's `Variation` (an earlier answer's codes posted back, no
re-encoding) checked before any work, and its groups started with the kept codes.

The codes are kept as `Pipeline.variations` keeps them (`pipeline.variations.plan_variation`, the
random positions drawn from the request's seed): the leading kept codes are primed (prefilled after
the caption, at most I - 1 of them, as `generation.decode.generate_codes` primes), and any kept code
after the first resampled one is forced where the loop reaches it (masked completion), with no noise
drawn there; a lone variation request then samples what `Pipeline.variations` samples.
"""
from __future__ import annotations

import torch

from dalle_pytorch.errors import GenerationError, setting_names
from dalle_pytorch.pipeline.variations import VariationPlan, check_strength, plan_variation
from dalle_pytorch.serve.requests import Ticket, Variation

__all__ = ["check_variation", "start_groups"]


def check_variation(model, variation: Variation) -> None:
    """GenerationError with a one-line reason unless `variation` holds the model's I codes, each in
    [0, num_image_tokens), a strength in [0, 1] and a mode of `pipeline.variations.VARIATION_MODES`."""
    if not isinstance(variation, Variation):
        raise GenerationError(f"variation must be a serve.requests.Variation, got {type(variation).__name__}")
    size, vocab = model.image_seq_len, model.num_image_tokens
    codes = variation.codes
    if not isinstance(codes, (tuple, list)) or any(isinstance(c, bool) or not isinstance(c, int) for c in codes):
        raise GenerationError(f"variation_of.codes must be a list of {size} integers (an image's codes, as an "
                              "answer gives them)")
    if len(codes) != size:
        raise GenerationError(f"variation_of.codes must hold this model's {size} codes, got {len(codes)}")
    bad = next((c for c in codes if not 0 <= c < vocab), None)
    if bad is not None:
        raise GenerationError(f"variation_of.codes must be in [0, {vocab}), got {bad}")
    with setting_names({"strength": "variation_of.strength", "mode": "variation_of.mode"}):
        check_strength(variation.strength, variation.mode)


def start_groups(ticket: Ticket, groups: list, device: torch.device) -> VariationPlan:
    """Give each group of a variation request its kept codes: the leading ones filled (`filled` of them, to
    be prefilled), the later ones as `known` / `keep` (m, I) when there are any; records the variation in
    the ticket's settings.  Returns the plan."""
    variation = ticket.request.variation
    codes = torch.tensor([list(variation.codes)], dtype=torch.long, device=device)
    plan = plan_variation(codes, variation.strength, variation.mode, seed=ticket.seed)
    keep = plan.keep.to(device)
    size = keep.numel()
    lead = min(int(keep.long().cumprod(0).sum()), size - 1)
    later = bool(keep[lead:].any())
    for g in groups:
        g.codes[:, :lead] = codes[0, :lead]
        g.filled = lead
        if later:
            g.known, g.keep = codes.expand(g.m, size), keep[None].expand(g.m, size)
    ticket.settings["variation"] = plan.settings()
    if plan.mode == "suffix" and 0 < plan.kept < size:
        ticket.settings["num_init_img_tokens"] = plan.kept  # as Pipeline.variations records its priming
    return plan
