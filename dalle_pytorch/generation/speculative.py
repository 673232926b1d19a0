"""Speculative Jacobi decoding (SJD, Teng et al. 2024, https://arxiv.org/abs/2410.01699): fewer forward
passes than codes, exactly the distribution of plain sampling.

Dimensions: R sampled rows, K the window, t = min(K, I - 1) tokens per verify step, I = F*F codes,
V image codes.

Every row keeps a window of K draft codes after its accepted ones, each with the distribution q it
was drawn from.  One forward (the model's cached step, t tokens per row at per-row starts) feeds the
last accepted code and the first t - 1 drafts and gives p, the sampling distribution (guidance,
top-k, top-p and temperature applied, `sampling.sampling_probs`) of every window position given
the accepted codes and the drafts before it.  `verify` accepts the drafts from the left, each with
probability min(1, p(x) / q(x)); the first rejected position is resampled from
norm(max(0, p - q)) and ends the step.  Each acceptance is one speculative-sampling step, so every
code has exactly its plain-sampling distribution given the codes before it; kept codes of masked
completion are accepted as they are.  The next window re-draws the positions this step computed
from their p (the paper's Jacobi iteration) and the new ones from a prior: any q is exact as long as
it is the one the draft came from; the prior only changes how many drafts are accepted.

Rows at the end of the image keep a window of t positions ending at the last code (re-feeding
accepted codes), so every step has the same shape; the cache is allocated with `rewind=K` for it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

from dalle_pytorch.generation.sampling import SamplingConfig, categorical, guided_logits, sampling_probs

__all__ = ["DRAFT_PRIORS", "DecodeStats", "verify", "speculative_codes"]

#: how a window position without a computed p is drafted: "left" copies the code to its left, "above"
#: the code one row up (left where there is none), "uniform" draws uniformly (the paper's start)
DRAFT_PRIORS = ("left", "above", "uniform")


@dataclass
class DecodeStats:
    """What a decode call did, for its caller to report (`generate_images(stats=...)`)."""

    forward_passes: int = 0  # cached steps after the prefill (plain decoding: one per code after the first)
    codes: int = 0  # codes sampled (not primed or kept) in every row
    rows: int = 0
    accepted_drafts: int = 0  # drafts accepted by speculative steps
    #: per image position: how often a draft was verified there, and how often it was accepted
    verified_at: list = field(default_factory=list)
    accepted_at: list = field(default_factory=list)

    @property
    def passes_per_row(self) -> float:
        """Forward passes per image: with plain decoding about the number of codes."""
        return self.forward_passes

    def acceptance_by_position(self) -> list:
        """The share of verified drafts accepted at each image position (None where none was verified)."""
        return [a / v if v else None for a, v in zip(self.accepted_at, self.verified_at)]


def verify(p: torch.Tensor, drafts: torch.Tensor, q: torch.Tensor, valid: torch.Tensor,
           forced: Optional[torch.Tensor] = None, generator: Optional[torch.Generator] = None):
    """Speculative sampling over a window, from the left.

    p: (R, t, V) the sampling distribution of each window position; drafts: (R, t) long; q: (R, t, V)
    the distributions the drafts were drawn from; valid: (R, t) bool, the positions p was computed for
    (a row accepts none past the first invalid one); forced: (R, t) bool, positions accepted whatever
    p says (kept codes) or None.  Returns (n, code): n (R,) the drafts accepted from the left, and
    code (R,) a sample of norm(max(0, p - q)) at position n (meaningful where n < t and position n is
    valid).  The same random numbers are drawn whatever is accepted: (R, t) uniforms and one Gumbel
    row per row.
    """
    r, t, _ = p.shape
    device = generator.device if generator is not None else p.device
    u = torch.rand((r, t), generator=generator, device=device).to(p.device)
    p_d = p.gather(-1, drafts[..., None])[..., 0]
    q_d = q.gather(-1, drafts[..., None])[..., 0]
    ok = u * q_d < p_d  # probability min(1, p(x) / q(x)); q(x) > 0 for a drafted x
    if forced is not None:
        ok = ok | forced
    ok = ok & valid
    n = ok.long().cumprod(dim=1).sum(dim=1)
    rows = torch.arange(r, device=p.device)
    j = n.clamp(max=t - 1)
    p_j, q_j = p[rows, j], q[rows, j]
    residual = (p_j - q_j).clamp_min(0)
    # p == q leaves nothing (such a draft is never rejected); rounding can: fall back to p
    residual = torch.where(residual.sum(-1, keepdim=True) > 0, residual, p_j)
    return n, categorical(residual, generator)


def _one_hot(codes: torch.Tensor, v: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(codes, v).float()


@torch.inference_mode()
def speculative_codes(model, codes: torch.Tensor, filled: int, last: torch.Tensor, cache, sampling: SamplingConfig,
                      *, window: int, rows: int, guided: bool, generator: Optional[torch.Generator],
                      known: Optional[torch.Tensor] = None, keep: Optional[torch.Tensor] = None,
                      prior: str = "left", stats: Optional[DecodeStats] = None,
                      callback: Optional[Callable[[int, torch.Tensor], None]] = None,
                      on_progress: Optional[Callable[[int], None]] = None) -> torch.Tensor:
    """Fill `codes` (R, I) from position `filled` (codes before it are given: primed) by speculative
    steps of `window` drafts; `last` (R or 2R, V) are the image logits of position `filled` (the
    prefill's); `cache` holds every row's prefix (allocated with rewind >= window).

    known, keep: masked completion's codes and mask (R, I).  callback(filled, codes): after each step,
    `filled` the codes every row has accepted (codes past it may already be accepted in some rows,
    never drafts).  on_progress(n): codes newly filled in every row.  Returns `codes`.
    """
    if prior not in DRAFT_PRIORS:
        raise ValueError(f"the draft prior must be one of {DRAFT_PRIORS}, got {prior!r}")
    total = codes.shape[1]
    device = codes.device
    f_side = model.fmap_size
    v = model.num_image_tokens

    def probs(logits):  # (R or 2R, ..., V) -> (R, ..., V): the final sampling distribution
        if guided:
            logits = guided_logits(logits, rows, sampling.cond_scale)
        return sampling_probs(logits, sampling, vocab_size=model.total_tokens)

    def kept(index):  # (R, k) code indices -> (R, k) bool, known (R, k)
        if keep is None:
            return None, None
        safe = index.clamp(max=total - 1)
        return keep.gather(1, safe) & (index < total), known.gather(1, safe)

    # the first code from the prefill's logits, as plain decoding draws it
    p0 = probs(last)
    first = categorical(p0, generator)
    if keep is not None:
        first = torch.where(keep[:, filled], known[:, filled], first)
    codes[:, filled] = first
    f = torch.full((rows,), filled + 1, dtype=torch.long, device=device)
    if stats is not None:
        stats.verified_at = [0] * total
        stats.accepted_at = [0] * total
    if callback is not None:
        callback(filled + 1, codes)
    if on_progress is not None:
        on_progress(1)
    t = min(window, total - 1)
    if filled + 1 >= total or t < 1:
        return codes
    k = window
    offsets = torch.arange(k, device=device)
    row_index = torch.arange(rows, device=device)

    def prior_drafts(win_tok, win_q, fresh, f_now):
        """Draft the window slots `fresh` (R, K) bool from the prior, left to right."""
        for j in range(k):
            need = fresh[:, j]
            if not bool(need.any()):
                continue
            c = f_now + j  # the code index of slot j
            if prior == "uniform":
                draw = torch.randint(0, v, (rows,), generator=generator,
                                     device=generator.device if generator is not None else device).to(device)
                q = torch.full((rows, v), 1.0 / v, device=device)
            else:
                left = codes.gather(1, (c - 1).clamp(0, total - 1)[:, None])[:, 0] if j == 0 else win_tok[:, j - 1]
                if prior == "above":
                    up = c - f_side
                    from_codes = codes.gather(1, up.clamp(0, total - 1)[:, None])[:, 0]
                    from_window = win_tok.gather(1, (up - f_now).clamp(0, k - 1)[:, None])[:, 0]
                    above = torch.where(up < f_now, from_codes, from_window)
                    draw = torch.where(up >= 0, above, left)
                else:
                    draw = left
                q = _one_hot(draw, v)
            win_tok[:, j] = torch.where(need, draw, win_tok[:, j])
            win_q[:, j] = torch.where(need[:, None], q, win_q[:, j])
        return win_tok, win_q

    def force_kept(win_tok, win_q, f_now):
        forced, known_w = kept(f_now[:, None] + offsets)
        if forced is None:
            return win_tok, win_q
        win_tok = torch.where(forced, known_w, win_tok)
        win_q = torch.where(forced[..., None], _one_hot(known_w, v), win_q)
        return win_tok, win_q

    win_tok = torch.zeros(rows, k, dtype=torch.long, device=device)
    win_q = torch.zeros(rows, k, v, device=device)
    win_tok, win_q = prior_drafts(win_tok, win_q, torch.ones(rows, k, dtype=torch.bool, device=device), f)
    win_tok, win_q = force_kept(win_tok, win_q, f)
    arange_t = torch.arange(t, device=device)
    done_before = filled + 1
    while bool((f < total).any()):
        s = torch.minimum(f, torch.full_like(f, total - t))  # window start (code index); rows at the end shift left
        index = s[:, None] - 1 + arange_t  # (R, t) the code index of each fed token
        from_window = win_tok.gather(1, (index - f[:, None]).clamp(0, k - 1))
        tokens = torch.where(index < f[:, None], codes.gather(1, index), from_window)
        start = s - 1 + model.text_len
        if guided:
            tokens, start = torch.cat((tokens, tokens)), torch.cat((start, start))
        logits = model.step(tokens, start, cache, length=int(start.max()) + t)
        p = probs(logits)  # (R, t, V): codes s .. s + t - 1
        o = f - s  # window slot 0 is code f, at p index o
        p_index = (o[:, None] + arange_t).clamp(max=t - 1)
        valid = (o[:, None] + arange_t) < t
        p_win = p[row_index[:, None], p_index]  # (R, t, V)
        forced, _ = kept(f[:, None] + arange_t)
        n, resampled = verify(p_win, win_tok[:, :t], win_q[:, :t], valid, forced, generator)
        # accepted drafts, then the resampled code where a valid position rejected its draft
        room = valid.long().sum(dim=1)  # positions verified this step
        take = (arange_t[None, :] < n[:, None]) & valid
        target = f[:, None] + arange_t
        codes[row_index[:, None].expand(rows, t)[take], target[take]] = win_tok[:, :t][take]
        rejected = (n < room) & (f + n < total)
        at = (f + n).clamp(max=total - 1)
        codes[row_index, at] = torch.where(rejected, resampled, codes[row_index, at])
        advance = n + rejected.long()
        if stats is not None:
            stats.forward_passes += 1
            stats.accepted_drafts += int(n.sum())
            pos = (f[:, None] + arange_t)[valid & (arange_t[None, :] <= n[:, None])]
            acc = (f[:, None] + arange_t)[take]
            for c in pos.tolist():
                stats.verified_at[c] += 1
            for c in acc.tolist():
                stats.accepted_at[c] += 1
        f_new = f + advance
        # the next window: slot j is code f_new + j; codes this step computed p for are re-drawn from it
        c_new = f_new[:, None] + offsets  # (R, K)
        p_slot = c_new - s[:, None]
        has_p = (p_slot < t) & (c_new < total)
        draws = categorical(p[row_index[:, None], p_slot.clamp(0, t - 1)], generator)  # (R, K)
        new_tok = torch.where(has_p, draws, torch.zeros_like(draws))
        new_q = torch.where(has_p[..., None], p[row_index[:, None], p_slot.clamp(0, t - 1)],
                            torch.zeros(rows, k, v, device=device))
        f = f_new
        new_tok, new_q = prior_drafts(new_tok, new_q, ~has_p, f)
        win_tok, win_q = force_kept(new_tok, new_q, f)
        done = int(f.min())
        if callback is not None:
            callback(done, codes)
        if on_progress is not None and done > done_before:
            on_progress(done - done_before)
            done_before = done
    return codes
