"""A request's side of the scheduler: its validation, the groups it is split into, and each group's
feed.  The loop that admits, steps and finishes groups is `scheduler.py`.

A request of n images with batch size B is ceil(n / B) groups; group k has its own
`torch.Generator().manual_seed(seed + k)`, exactly as `generate.py` samples batch k.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch

from dalle_pytorch.errors import GenerationError
from dalle_pytorch.generation.canvas import CanvasState, check_canvas
from dalle_pytorch.generation.sampling import SamplingConfig
from dalle_pytorch.generation.speculative import Window
from dalle_pytorch.pipeline.text_to_image import Pipeline, batch_seeds
from dalle_pytorch.serve.batch import Sequence
from dalle_pytorch.serve.requests import ImageRequest, Ticket
from dalle_pytorch.serve.variations import check_variation, start_groups

__all__ = ["Group", "check_canvas_request", "split_groups", "start_canvas", "validate_request"]


@dataclass(eq=False)
class Group:
    """One generator's batch of a request: m images (2m rows when guided)."""

    ticket: Ticket
    index: int  # k: seed + k
    seed: int
    m: int
    generator: torch.Generator
    codes: torch.Tensor  # (m, I)
    filled: int = 0
    last: Optional[torch.Tensor] = None  # (rows, V) logits of the next code ((rows, K, V) of a speculative window)
    seq: Optional[Sequence] = None
    window: Optional[Window] = None  # the speculative state (--speculative K)
    passes: int = 0  # the cached forward passes the group's rows took part in
    images: Optional[torch.Tensor] = None  # (m, c, H, W) once finished
    known: Optional[torch.Tensor] = None  # (m, I) a variation's codes, kept where `keep` (m, I) is True
    keep: Optional[torch.Tensor] = None  # (masked completion; None: nothing kept after the filled prefix)
    canvas: Optional[CanvasState] = None  # a canvas request's state (its own window cache, not the batch's rows)

    @property
    def total(self) -> int:
        """Codes per image: image_seq_len, or H * W on a canvas."""
        return self.codes.shape[1]

    @property
    def grid(self) -> Optional[tuple]:
        """A canvas's (H, W) codes (for decoding and previews); None on the trained grid."""
        return None if self.canvas is None else self.canvas.canvas

    @property
    def copies(self) -> int:
        """Rows per image: 2 when guided (the caption's row, then the null caption's), else 1."""
        return 2 if self.ticket.guided else 1

    @property
    def rows(self) -> int:
        return self.m * self.copies

    def keep_forced(self) -> bool:
        """Set the kept code at `filled` (a variation's, nothing drawn) and advance; whether there was one."""
        if self.keep is None or not bool(self.keep[0, self.filled]):
            return False
        self.codes[:, self.filled] = self.known[:, self.filled]
        self.filled += 1
        return True

    def feed(self) -> torch.Tensor:
        """The last drawn codes, one per row (rows,), for a plain step."""
        return torch.cat((self.codes[:, self.filled - 1],) * self.copies)

    def feed_window(self, text_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        """A speculative step's tokens (rows, K) and each row's first sequence position (rows,)."""
        fed, first = self.window.feed()
        return torch.cat((fed,) * self.copies), torch.cat((first + text_len,) * self.copies)


def validate_request(pipe: Pipeline, request: ImageRequest, max_rows: int, max_images: int,
                     max_canvas_codes: int = 0) -> torch.Tensor:
    """The request's caption rows (u, T), or GenerationError with the one-line reason.  max_canvas_codes:
    the most codes (H * W) a canvas request may ask for (0: no canvases)."""
    if not isinstance(request.prompt, str) or (not request.prompt.strip() and request.variation is None):
        raise GenerationError("prompt is empty: give a caption")
    if request.variation is not None:
        check_variation(pipe.model, request.variation)
    if request.canvas is not None:
        check_canvas_request(pipe, request, max_canvas_codes)
    if isinstance(request.n, bool) or not isinstance(request.n, int) or not 1 <= request.n <= max_images:
        raise GenerationError(f"n must be an integer from 1 to {max_images}, got {request.n!r}")
    if request.seed is not None and (isinstance(request.seed, bool) or not isinstance(request.seed, int)):
        raise GenerationError(f"seed must be an integer, got {request.seed!r}")
    if not isinstance(request.sampling, SamplingConfig):
        raise GenerationError("sampling must be a SamplingConfig")
    guided = request.sampling.guided
    rows = request.batch_size * (2 if guided else 1) if isinstance(request.batch_size, int) else -1
    if isinstance(request.batch_size, bool) or not 1 <= rows <= max_rows:
        raise GenerationError(f"batch_size must be an integer from 1 to {max_rows // (2 if guided else 1)}"
                              f"{' (guidance doubles the rows)' if guided else ''}, got {request.batch_size!r}")
    if request.seed is not None:
        batch_seeds(request.seed, request.n, request.batch_size)  # seed + k must stay a torch seed
    if not isinstance(request.preview_every, int) or request.preview_every < 0:
        raise GenerationError(f"preview_every must be an integer >= 0, got {request.preview_every!r}")
    if request.timeout is not None and not (isinstance(request.timeout, (int, float)) and request.timeout > 0):
        raise GenerationError(f"timeout must be > 0 seconds, got {request.timeout!r}")
    if request.negative_prompt is not None and not guided:
        raise GenerationError("negative_prompt only has an effect with guidance: set cond_scale != 1 (e.g. 3)")
    captions = [request.prompt]
    if guided:
        captions.append(request.negative_prompt if request.negative_prompt is not None else "")
    return pipe.tokenize(captions)  # GenerationError: a caption longer than the model's text_seq_len


def check_canvas_request(pipe: Pipeline, request: ImageRequest, max_canvas_codes: int) -> None:
    """GenerationError in one line unless the request's canvas is (H, W) codes, each side at least the trained
    grid's, H * W at most max_canvas_codes, and not a variation's."""
    f = pipe.model.fmap_size
    if max_canvas_codes < f * f:
        raise GenerationError("this server samples the trained grid only: canvas is off (dalle-serve --max_canvas_codes)")
    try:
        h, w = check_canvas(tuple(request.canvas) if isinstance(request.canvas, list) else request.canvas, f)
    except ValueError as e:
        raise GenerationError(str(e)) from None
    if h * w > max_canvas_codes:
        raise GenerationError(f"canvas {h}x{w} is {h * w} codes; this server samples at most {max_canvas_codes} "
                              "codes per image (dalle-serve --max_canvas_codes)")
    if request.variation is not None:
        raise GenerationError("variation_of varies an image of the trained grid: it does not combine with canvas")


def start_canvas(group: Group, model, text: torch.Tensor, packs=None) -> None:
    """Give a canvas group its state: the caption's rows (then the null caption's) prefilled into its own
    cache, its codes the state's (m, H * W) view, `last` the logits of its first code.  packs: the running
    batch's packed weights, shared (batch-invariant products: the codes a lone `Pipeline.generate` samples)."""
    rows = torch.zeros(group.m, dtype=torch.long, device=text.device)
    if group.ticket.guided:
        rows = torch.cat((rows, torch.ones(group.m, dtype=torch.long, device=text.device)))
    group.canvas = CanvasState(model, model.text_ids(text)[rows], group.ticket.request.canvas, rows=group.m,
                               pack_weights=False if packs is None else packs)
    group.codes = group.canvas.flat
    group.last = group.canvas.logits()


def split_groups(ticket: Ticket, image_seq_len: int, device: torch.device) -> list[Group]:
    """The ceil(n / B) groups of a submitted request, group k seeded with seed + k; a variation's start with
    its kept codes (`variations.start_groups`)."""
    request, groups = ticket.request, []
    total = image_seq_len if request.canvas is None else request.canvas[0] * request.canvas[1]
    for k in range(math.ceil(request.n / request.batch_size)):
        m = min(request.batch_size, request.n - k * request.batch_size)
        groups.append(Group(ticket, k, ticket.seed + k, m, torch.Generator().manual_seed(ticket.seed + k),
                            torch.zeros(m, total, dtype=torch.long, device=device)))
    if request.variation is not None:
        start_groups(ticket, groups, device)
    return groups
