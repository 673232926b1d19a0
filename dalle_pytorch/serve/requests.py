"""What the scheduler's callers hand in and get back: requests, tickets, events, results and the
refusals (`QueueFull`, `ShuttingDown`, `RequestFailed`).  Plain data; the loop is `scheduler.py`."""
from __future__ import annotations

import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Callable, NamedTuple, Optional

import torch

from dalle_pytorch.generation.sampling import SamplingConfig

__all__ = ["Event", "ImageRequest", "ImageResult", "QueueFull", "Refusal", "RequestFailed", "ShuttingDown", "Ticket",
           "Variation"]


class QueueFull(Exception):
    """The waiting queue is full; try again after `retry_after` seconds."""

    def __init__(self, message: str, retry_after: int):
        super().__init__(message)
        self.retry_after = retry_after


class ShuttingDown(Exception):
    """The scheduler no longer accepts requests."""


class RequestFailed(Exception):
    """An accepted request ended without images: timed out, cancelled, or failed.  `kind` says which."""

    def __init__(self, message: str, kind: str = "failed"):
        super().__init__(message)
        self.kind = kind


class Refusal(NamedTuple):
    """A request the server answers with an error instead of images: the HTTP status, the one-line reason and
    headers (Retry-After); each endpoint writes it in its own error shape."""

    status: int
    detail: str
    headers: Optional[dict] = None


@dataclass(frozen=True)
class Variation:
    """Variations of an earlier image: its codes (I integers, from an answer), the share resampled and which
    (`pipeline.variations`: "suffix", the last codes in raster order, or "random" positions drawn from the seed)."""

    codes: tuple
    strength: float
    mode: str = "suffix"


@dataclass(frozen=True)
class ImageRequest:
    """One caption's images; validated by `Scheduler.submit` with the CLI's one-line reasons."""

    prompt: str
    n: int = 4  # images
    seed: Optional[int] = None  # group k uses seed + k; None: a fresh seed (returned)
    sampling: SamplingConfig = SamplingConfig(filter_thres=0.9)
    negative_prompt: Optional[str] = None  # the null caption of guidance (needs cond_scale != 1)
    batch_size: int = 4  # images per generator, as generate.py's --batch_size
    preview_every: int = 0  # codes between preview events of a group (0: no previews)
    timeout: Optional[float] = None  # seconds from submission (None: the scheduler's default)
    variation: Optional[Variation] = None  # variations of an earlier image's codes (the prompt may then be empty)
    canvas: Optional[tuple] = None  # (H, W) codes: a canvas larger than the trained grid (generation.canvas)


@dataclass
class Event:
    """What a request's `on_event` receives: queued (position), started, progress (done, total),
    preview (group, first_image, filled, total, images (m, c, H, W)), done (result), error (message, kind)."""

    kind: str
    data: dict


@dataclass
class ImageResult:
    images: torch.Tensor  # (n, c, H, W) float32 on CPU, in [0, 1]
    seeds: list[int]  # each image's group seed
    settings: dict  # generation_settings + seed
    timings: dict  # queued_s, run_s, total_s (and forward_passes per group with speculative decoding)
    codes: Optional[torch.Tensor] = None  # (n, I) long on CPU: each image's codes (what a variation posts back)


@dataclass(eq=False)
class Ticket:
    """A submitted request: its future, its events, its state (owned by the loop thread)."""

    id: int
    request: ImageRequest
    seed: int
    text: torch.Tensor  # (u, T): the caption, then the null caption when guided
    settings: dict
    on_event: Optional[Callable[[Event], None]]
    deadline: float
    submitted: float = field(default_factory=time.perf_counter)
    future: Future = field(default_factory=Future)
    groups: list = field(default_factory=list)
    pending: deque = field(default_factory=deque)  # groups not admitted yet
    started: Optional[float] = None
    first_code: Optional[float] = None  # when its first image code was sampled (time to first code)
    closed: bool = False
    position: Optional[int] = None  # last queue position sent
    percent: int = -1  # last progress percent sent
    cancel_reason: Optional[str] = None  # set by another thread; acted on by the loop

    @property
    def guided(self) -> bool:
        return self.request.sampling.guided

    def result(self, timeout: Optional[float] = None) -> ImageResult:
        """Wait for the images; raises RequestFailed if the request ended without them."""
        return self.future.result(timeout)
