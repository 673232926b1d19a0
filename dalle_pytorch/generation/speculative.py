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

from dataclasses import dataclass
from typing import Callable, Optional

import torch

from dalle_pytorch.generation.sampling import SamplingConfig, categorical, guided_logits, sampling_probs

__all__ = ["DRAFT_PRIORS", "DecodeStats", "Window", "verify", "speculative_codes"]

#: how a window position without a computed p is drafted: "above" (the default) copies the code one row up
#: (the code to its left on the first row), "left" the code to its left, "uniform" draws uniformly (the
#: paper's start); docs/benchmarks.md compares them
DRAFT_PRIORS = ("above", "left", "uniform")


@dataclass
class DecodeStats:
    """What a decode call did, for its caller to report (`generate_images(stats=...)`)."""

    forward_passes: int = 0  # cached steps after the prefill (plain decoding: one per code after the first)
    positions: bool = False  # also count drafts verified and accepted per image position (costs a little per step)
    codes: int = 0  # codes sampled (not primed or kept) in every row
    rows: int = 0
    accepted_drafts: int = 0  # drafts accepted by speculative steps
    #: per image position (I,) long: how often a draft was verified there, and how often it was accepted
    verified_at: Optional[torch.Tensor] = None
    accepted_at: Optional[torch.Tensor] = None

    @property
    def passes_per_row(self) -> float:
        """Forward passes per image: with plain decoding about the number of codes."""
        return self.forward_passes

    def acceptance_by_position(self) -> list:
        """The share of verified drafts accepted at each image position (None where none was verified)."""
        if self.verified_at is None:
            return []
        return [a / v if v else None for a, v in zip(self.accepted_at.tolist(), self.verified_at.tolist())]


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


class Window:
    """The speculative state of R rows: their codes, how many each has accepted, and K drafts after them.

    One speculative step is `feed` (the tokens to run and their per-row starts, as code indices), the
    model's cached step over them, then `accept` with the step's sampling distributions.  The decode
    loop (`speculative_codes`) and the server's scheduler (one Window per group, its own generator)
    both drive it.

    codes: (R, I) long, filled up to `filled` (primed codes before it); v: image codes; fmap_size: F.
    known, keep: masked completion's codes and mask (R, I), or None.
    """

    def __init__(self, codes: torch.Tensor, filled: int, *, window: int, v: int, fmap_size: int,
                 generator: Optional[torch.Generator] = None, known: Optional[torch.Tensor] = None,
                 keep: Optional[torch.Tensor] = None, prior: str = "above", stats: Optional[DecodeStats] = None):
        if prior not in DRAFT_PRIORS:
            raise ValueError(f"the draft prior must be one of {DRAFT_PRIORS}, got {prior!r}")
        self.codes, self.rows, self.total = codes, codes.shape[0], codes.shape[1]
        self.k, self.v, self.f_side, self.prior = window, v, fmap_size, prior
        self.t = min(window, self.total - 1)  # tokens per step
        self.generator, self.known, self.keep, self.stats = generator, known, keep, stats
        device = self.device = codes.device
        self.f = torch.full((self.rows,), filled, dtype=torch.long, device=device)
        self.offsets = torch.arange(self.k, device=device)
        self.arange_t = torch.arange(max(self.t, 1), device=device)
        self.row_index = torch.arange(self.rows, device=device)
        self.tokens = torch.zeros(self.rows, self.k, dtype=torch.long, device=device)  # the drafts of codes f .. f+K-1
        self.q = torch.zeros(self.rows, self.k, v, device=device)  # the distributions they were drawn from
        self._s = None
        if stats is not None and stats.positions:
            stats.verified_at = torch.zeros(self.total, dtype=torch.long, device=device)
            stats.accepted_at = torch.zeros(self.total, dtype=torch.long, device=device)

    @property
    def done(self) -> bool:
        return bool((self.f >= self.total).all())

    @property
    def filled(self) -> int:
        """Codes every row has accepted."""
        return int(self.f.min())

    def first(self, p: torch.Tensor) -> None:
        """Draw each row's next code from p (R, V) (the prefill's logits' distribution), as plain decoding,
        and draft the window after it."""
        f = int(self.f[0])
        code = categorical(p, self.generator)
        if self.keep is not None:
            code = torch.where(self.keep[:, f], self.known[:, f], code)
        self.codes[:, f] = code
        self.f += 1
        self._draft(torch.ones(self.rows, self.k, dtype=torch.bool, device=self.device))
        self._force_kept()

    def feed(self) -> tuple:
        """(tokens (R, t), start (R,)): the last accepted code and the first t - 1 drafts of each row, from
        the code index `start` (rows at the end start earlier, re-feeding accepted codes); the step's
        output at token j is the distribution of code start + 1 + j."""
        t, f = self.t, self.f
        s = torch.minimum(f, torch.full_like(f, self.total - t))
        index = s[:, None] - 1 + self.arange_t[:t]
        from_window = self.tokens.gather(1, (index - f[:, None]).clamp(0, self.k - 1))
        self._s = s
        return torch.where(index < f[:, None], self.codes.gather(1, index), from_window), s - 1

    def fed_positions(self) -> torch.Tensor:
        """(R, t) long: the code index each output of the last `feed` is the distribution of (start + 1 + j),
        the positions a guidance schedule's scales are read at."""
        return self._s[:, None] + self.arange_t[: self.t]

    def accept(self, p: torch.Tensor) -> int:
        """Verify the drafts with p (R, t, V), the step's sampling distributions at the fed tokens, and draft
        the next window.  Returns the codes newly accepted by every row (the increase of `filled`)."""
        t, f, s, rows = self.t, self.f, self._s, self.rows
        before = self.filled
        arange_t, row_index = self.arange_t[:t], self.row_index
        o = f - s  # window slot 0 (code f) is at p index o
        valid = (o[:, None] + arange_t) < t
        p_win = p[row_index[:, None], (o[:, None] + arange_t).clamp(max=t - 1)]  # (R, t, V)
        forced, _ = self._kept(f[:, None] + arange_t)
        n, resampled = verify(p_win, self.tokens[:, :t], self.q[:, :t], valid, forced, self.generator)
        room = valid.long().sum(dim=1)
        take = (arange_t[None, :] < n[:, None]) & valid
        target = f[:, None] + arange_t
        self.codes[row_index[:, None].expand(rows, t)[take], target[take]] = self.tokens[:, :t][take]
        rejected = (n < room) & (f + n < self.total)
        at = (f + n).clamp(max=self.total - 1)
        self.codes[row_index, at] = torch.where(rejected, resampled, self.codes[row_index, at])
        if self.stats is not None:
            self.stats.forward_passes += 1
            self.stats.accepted_drafts += int(n.sum())
            if self.stats.positions:
                verified = valid & (arange_t[None, :] <= n[:, None])
                self.stats.verified_at.index_add_(0, target[verified], torch.ones_like(target[verified]))
                self.stats.accepted_at.index_add_(0, target[take], torch.ones_like(target[take]))
        self.f = f = f + n + rejected.long()
        # the next window: slot j is code f + j; codes this step computed p for are re-drawn from it
        slot = f[:, None] + self.offsets - s[:, None]
        has_p = (slot < t) & (f[:, None] + self.offsets < self.total)
        p_next = p[row_index[:, None], slot.clamp(0, t - 1)]  # (R, K, V)
        self.tokens = torch.where(has_p, categorical(p_next, self.generator), torch.zeros_like(self.tokens))
        self.q = torch.where(has_p[..., None], p_next, torch.zeros_like(self.q))
        self._draft(~has_p)
        self._force_kept()
        return self.filled - before

    # -- drafts ---------------------------------------------------------------------------------------

    def _kept(self, index):  # (R, k) code indices -> (R, k) bool, known (R, k)
        if self.keep is None:
            return None, None
        safe = index.clamp(max=self.total - 1)
        return self.keep.gather(1, safe) & (index < self.total), self.known.gather(1, safe)

    def _force_kept(self) -> None:
        forced, known = self._kept(self.f[:, None] + self.offsets)
        if forced is not None:
            self.tokens = torch.where(forced, known, self.tokens)
            self.q = torch.where(forced[..., None], _one_hot(known, self.v), self.q)

    def _draft(self, fresh: torch.Tensor) -> None:
        """Draft the window slots `fresh` (R, K) bool from the prior (a few tensor ops whatever K)."""
        if not bool(fresh.any()):
            return
        rows, k, v, total, f = self.rows, self.k, self.v, self.total, self.f
        if self.prior == "uniform":
            gen = self.generator
            draw = torch.randint(0, v, (rows, k), generator=gen,
                                 device=gen.device if gen is not None else self.device).to(self.device)
            self.tokens = torch.where(fresh, draw, self.tokens)
            self.q = torch.where(fresh[..., None], torch.full_like(self.q, 1.0 / v), self.q)
            return
        # "left": a fresh slot copies the nearest slot before it that is not fresh, or the last accepted code
        last = torch.where(fresh, -1, self.offsets).cummax(dim=1).values  # (R, K): that slot, -1 for none
        accepted = self.codes.gather(1, (f - 1).clamp(0, total - 1)[:, None])  # (R, 1)
        draw = torch.where(last >= 0, self.tokens.gather(1, last.clamp(min=0)), accepted)
        if self.prior == "above":  # the code one row up: accepted for the first F slots, else a slot drafted before
            tokens = torch.where(fresh, draw, self.tokens)
            side = self.f_side
            for first in range(0, k, side):
                j = self.offsets[first : first + side]
                up = f[:, None] + j - side  # (R, m) the code index one row up
                if first == 0:
                    above = self.codes.gather(1, up.clamp(0, total - 1))
                else:
                    above = tokens.gather(1, (j - side).expand(rows, -1))
                chunk = torch.where(up >= 0, above, draw[:, first : first + side])
                tokens[:, first : first + side] = torch.where(fresh[:, first : first + side], chunk,
                                                              tokens[:, first : first + side])
            draw = tokens
        self.tokens = torch.where(fresh, draw, self.tokens)
        self.q = torch.where(fresh[..., None], _one_hot(self.tokens, v), self.q)


def sampling_distribution(model, sampling: SamplingConfig, rows: int, guided: bool) -> Callable:
    """probs(logits, positions=None): logits (R or 2R, ..., V) -> the final sampling distribution (R, ..., V):
    guidance combined, top-k, top-p and temperature applied (`sampling.sampling_probs`).

    positions (R, ...) long: the image code position of each distribution, where a guidance schedule
    other than "constant" reads its scale (`SamplingConfig.scale_at`; at scale 1 the conditional logits
    are taken as they are).  A window keeps the null rows in every step: after an interval's end they
    are fed with scale 1 (the rows are not saved yet, unlike plain decoding's loop)."""
    scales = None
    if guided and sampling.cond_schedule != "constant":
        total = model.image_seq_len
        scales = torch.tensor([sampling.scale_at(t, total) for t in range(total)], dtype=torch.float32)

    def probs(logits, positions=None):
        if guided and scales is None:
            logits = guided_logits(logits, rows, sampling.cond_scale)
        elif guided:
            if positions is None:
                raise ValueError(f"cond_schedule {sampling.cond_schedule} needs the code positions of the logits")
            scale = scales.to(logits.device)[positions][..., None]  # (R, ..., 1)
            cond, null = logits[:rows].float(), logits[rows:].float()
            logits = torch.where(scale == 1.0, cond, null + (cond - null) * scale)
        return sampling_probs(logits, sampling, vocab_size=model.total_tokens)
    return probs


@torch.inference_mode()
def speculative_codes(model, codes: torch.Tensor, filled: int, last: torch.Tensor, cache, sampling: SamplingConfig,
                      *, window: int, rows: int, guided: bool, generator: Optional[torch.Generator],
                      known: Optional[torch.Tensor] = None, keep: Optional[torch.Tensor] = None,
                      prior: str = "above", stats: Optional[DecodeStats] = None,
                      callback: Optional[Callable[[int, torch.Tensor], None]] = None,
                      on_progress: Optional[Callable[[int], None]] = None,
                      step: Optional[Callable] = None) -> torch.Tensor:
    """Fill `codes` (R, I) from position `filled` (codes before it are given: primed) by speculative
    steps of `window` drafts; `last` (R or 2R, V) are the image logits of position `filled` (the
    prefill's); `cache` holds every row's prefix (allocated with rewind >= window).

    known, keep: masked completion's codes and mask (R, I).  callback(filled, codes): after each step,
    `filled` the codes every row has accepted (codes past it may already be accepted in some rows,
    never drafts).  on_progress(n): codes newly filled in every row.  step(tokens, start, cache, length):
    the verify step (default the model's eager `step`; `decode.compiled_step("window", ...)` compiled).
    Returns `codes`.
    """
    probs = sampling_distribution(model, sampling, rows, guided)
    win = Window(codes, filled, window=window, v=model.num_image_tokens, fmap_size=model.fmap_size,
                 generator=generator, known=known, keep=keep, prior=prior, stats=stats)
    win.first(probs(last, torch.full((rows,), filled, dtype=torch.long, device=codes.device)))
    if callback is not None:
        callback(win.filled, codes)
    if on_progress is not None:
        on_progress(1)
    if win.t < 1:
        return codes
    while not win.done:
        tokens, start = win.feed()
        start = start + model.text_len
        if guided:
            tokens, start = torch.cat((tokens, tokens)), torch.cat((start, start))
        length = int(start.max()) + win.t
        logits = model.step(tokens, start, cache, length=length) if step is None else step(tokens, start, cache, length)
        gained = win.accept(probs(logits, win.fed_positions()))
        if callback is not None:
            callback(win.filled, codes)
        if on_progress is not None and gained:
            on_progress(gained)
    return codes
