"""The decoder-only transformer: residual blocks, token shift, reversible execution, cached steps.

Dimensions: b batch, n sequence, c model dim, N = text_len + F*F positions, F image grid side.

Block i (of `depth`):  x = x + attn_branch(x);  x = x + ff_branch(x)
where a branch is LayerScale(PreNorm(fn)): scale * norm_out(fn(shift(norm(x)))) with
- LayerScale init 0.1 / 1e-5 / 1e-6 by layer index (https://arxiv.org/abs/2103.17239),
- norm_out only with sandwich_norm,
- shift = token shift (shift_tokens): text tokens take half the channels from the previous token;
  image tokens take a quarter from the token above and a quarter from the token to the left
  (zero on the first row / at a row start).
Reversible execution runs the same branches as a RevNet: y1 = x1 + f(x2), y2 = x2 + g(y1), with
activations recomputed (and dropout RNG replayed) in the backward pass.

Attention and feed-forward modules can be shared across depth (shared_attn_ids / shared_ff_ids);
each is stored once (`attns.{k}` / `ffs.{k}`), each depth keeps its own norms and scales.
"""
from __future__ import annotations

from itertools import cycle, islice
from math import ceil

import torch
import torch.nn.functional as F
from torch import nn

from dalle_pytorch.attention import Attention
from dalle_pytorch.patterns import PatternSpec, draw_random_blocks, pattern_mask
from dalle_pytorch.rotary import rotary_table


def layerscale_init(depth_index: int) -> float:
    """depth_index counts from 1, as in DALLE-pytorch."""
    if depth_index <= 18:
        return 0.1
    if depth_index <= 24:
        return 1e-5
    return 1e-6


class GEGLU(nn.Module):
    def forward(self, x):
        x, gates = x.chunk(2, dim=-1)
        return x * F.gelu(gates)


class FeedForward(nn.Module):
    """Linear(dim, dim*mult*2) -> GEGLU -> dropout -> Linear(dim*mult, dim)."""

    def __init__(self, dim: int, mult: int = 4, dropout: float = 0.0):
        super().__init__()
        self.proj_in = nn.Linear(dim, dim * mult * 2)
        self.act = GEGLU()
        self.dropout = nn.Dropout(dropout)
        self.proj_out = nn.Linear(dim * mult, dim)

    def forward(self, x):
        return self.proj_out(self.dropout(self.act(self.proj_in(x))))


class Branch(nn.Module):
    """The per-depth wrapper around a (possibly shared) fn: LayerScale(PreNorm(fn))."""

    def __init__(self, dim: int, depth_index: int, sandwich: bool):
        super().__init__()
        self.scale = nn.Parameter(torch.full((1, 1, dim), layerscale_init(depth_index)))
        self.norm = nn.LayerNorm(dim)
        self.norm_out = nn.LayerNorm(dim) if sandwich else None

    def post(self, y):
        if self.norm_out is not None:
            y = self.norm_out(y)
        return y * self.scale


class Block(nn.Module):
    def __init__(self, dim: int, depth_index: int, sandwich: bool):
        super().__init__()
        self.attn = Branch(dim, depth_index, sandwich)
        self.ff = Branch(dim, depth_index, sandwich)


# -- token shift -------------------------------------------------------------------------------


def shift_channels(dim: int) -> tuple[int, int]:
    """(c2, c4): channels shifted for text (first half) and per image direction (quarters),
    with torch.chunk's rounding."""
    return ceil(dim / 2), ceil(dim / 4)


def shift_tokens_full(x: torch.Tensor, text_len: int, fmap_size: int) -> torch.Tensor:
    """Token shift over positions 0..n-1.  x: (b, n, c) -> (b, n, c)."""
    b, n, c = x.shape
    c2, c4 = shift_channels(c)
    nt = min(n, text_len)
    text = x[:, :nt]
    text = torch.cat((F.pad(text[..., :c2], (0, 0, 1, -1)), text[..., c2:]), dim=-1)
    if n <= text_len:
        return text
    f = fmap_size
    img = F.pad(x[:, text_len:], (0, 0, 0, text_len + f * f - n)).view(b, f, f, c)
    top = F.pad(img[..., :c4], (0, 0, 0, 0, 1, -1))  # from the row above
    left = F.pad(img[..., c4 : 2 * c4], (0, 0, 1, -1))  # from the token to the left
    img = torch.cat((top, left, img[..., 2 * c4 :]), dim=-1).view(b, f * f, c)
    return torch.cat((text, img[:, : n - text_len]), dim=1)


def fill_shift_ring(ring: torch.Tensor, xn: torch.Tensor) -> None:
    """After a prefill of n positions, keep the last F rows.  ring: (b, F, C); xn: (b, n, c)."""
    f, cs = ring.shape[1], ring.shape[2]
    n = xn.shape[1]
    start = max(0, n - f)
    slots = torch.arange(start, n, device=xn.device) % f
    ring.index_copy_(1, slots, xn[:, start:n, :cs])


def shift_step_tables(text_len: int, fmap_size: int, dim: int) -> torch.Tensor:
    """(N, 3, C) 0/1 weights of (the token itself, the previous token, the token above) for the
    first C shifted channels of a token at each position, so that one decoding step shifts with
    three multiply-adds and no position-dependent control flow (exact: weights are 0 or 1)."""
    c2, c4 = shift_channels(dim)
    cs = max(c2, 2 * c4)
    f, n = fmap_size, text_len + fmap_size**2
    w = torch.zeros(n, 3, cs)
    w[:, 0] = 1.0
    for i in range(n):
        if i < text_len:
            w[i, 0, :c2] = 0.0
            w[i, 1, :c2] = float(i > 0)
        else:
            p = i - text_len
            w[i, 0, : 2 * c4] = 0.0
            w[i, 2, :c4] = float(p >= f)
            w[i, 1, c4 : 2 * c4] = float(p % f != 0)
    return w


def shift_tokens_step(xn: torch.Tensor, ring: torch.Tensor, weights: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
    """Token shift of one token, reading and updating the ring of the last F inputs.

    xn: (b, 1, c) normalised input; ring: (b, F, C); weights: (3, C) this position's row of
    shift_step_tables; slots: (2,) ring slots of the previous token and of the token above (which
    is also where this token goes).  Shapes and control flow do not depend on the position.
    """
    cs = ring.shape[2]
    prev_top = ring.index_select(1, slots)  # (b, 2, C)
    lo = xn[..., :cs] * weights[0] + prev_top[:, :1] * weights[1] + prev_top[:, 1:] * weights[2]
    ring.index_copy_(1, slots[1:], xn[..., :cs])
    return torch.cat((lo, xn[..., cs:]), dim=-1) if xn.shape[-1] > cs else lo


# -- reversible execution --------------------------------------------------------------------------


class _RngReplay:
    """Records the RNG state before a call so the backward pass can recompute it identically."""

    def __init__(self):
        self.cpu = None
        self.cuda = None

    def record(self, x):
        self.cpu = torch.get_rng_state()
        self.cuda = torch.cuda.get_rng_state(x.device) if x.is_cuda else None

    def replay(self, x):
        devices = [x.device] if x.is_cuda else []
        ctx = torch.random.fork_rng(devices=devices)
        ctx.__enter__()
        torch.set_rng_state(self.cpu)
        if self.cuda is not None:
            torch.cuda.set_rng_state(self.cuda, x.device)
        return ctx


class _ReversibleFunction(torch.autograd.Function):
    """Runs (f_i, g_i) pairs without storing activations; backward reconstructs inputs from outputs."""

    @staticmethod
    def forward(ctx, x, fs, gs):
        x1, x2 = x.chunk(2, dim=-1)
        rngs = []
        with torch.no_grad():
            for f, g in zip(fs, gs):
                rf, rg = _RngReplay(), _RngReplay()
                rf.record(x2)
                x1 = x1 + f(x2)
                rg.record(x1)
                x2 = x2 + g(x1)
                rngs.append((rf, rg))
        y = torch.cat((x1, x2), dim=-1)
        ctx.fs, ctx.gs, ctx.rngs = fs, gs, rngs
        ctx.save_for_backward(y.detach())
        return y

    @staticmethod
    def backward(ctx, dy):
        (y,) = ctx.saved_tensors
        y1, y2 = y.chunk(2, dim=-1)
        dy1, dy2 = dy.chunk(2, dim=-1)
        for f, g, (rf, rg) in reversed(list(zip(ctx.fs, ctx.gs, ctx.rngs))):
            with torch.enable_grad():
                y1 = y1.detach().requires_grad_()
                fork = rg.replay(y1)
                try:
                    gy1 = g(y1)
                finally:
                    fork.__exit__(None, None, None)
                torch.autograd.backward(gy1, dy2)
            with torch.no_grad():
                x2 = y2 - gy1
                dx1 = dy1 + y1.grad
            with torch.enable_grad():
                x2 = x2.detach().requires_grad_()
                fork = rf.replay(x2)
                try:
                    fx2 = f(x2)
                finally:
                    fork.__exit__(None, None, None)
                torch.autograd.backward(fx2, dx1)
            with torch.no_grad():
                x1 = y1 - fx2
                dx2 = dy2 + x2.grad
            y1, y2, dy1, dy2 = x1.detach(), x2.detach(), dx1, dx2
        return torch.cat((dy1, dy2), dim=-1), None, None


# -- the transformer ---------------------------------------------------------------------------------


class Transformer(nn.Module):
    def __init__(
        self,
        *,
        dim: int,
        depth: int,
        text_len: int,
        fmap_size: int,
        heads: int = 8,
        dim_head: int = 64,
        ff_mult: int = 4,
        reversible: bool = False,
        attn_dropout: float = 0.0,
        ff_dropout: float = 0.0,
        attn_types=None,
        stable: bool = False,
        sandwich_norm: bool = False,
        shift_tokens: bool = True,
        rotary_emb: bool = True,
        shared_attn_ids=None,
        shared_ff_ids=None,
        optimize_for_inference: bool = False,
        attn_kernel: str = "auto",
        conv_kernel_size: int = 5,
        conv_dilation: int = 1,
        conv_variant: str = "up_left",
        sparse_block_size: int = 16,
        sparse_num_local_blocks: int = 4,
        sparse_num_random_blocks: int | None = None,
        sparse_seed: int = 0,
    ):
        super().__init__()
        self.dim, self.depth, self.heads, self.dim_head = dim, depth, heads, dim_head
        self.text_len, self.fmap_size = text_len, fmap_size
        self.seq_len = text_len + fmap_size**2  # N
        self.reversible, self.shift_tokens, self.stable = reversible, shift_tokens, stable

        attn_types = tuple(attn_types) if attn_types is not None else ("full",)
        if isinstance(attn_types, str):
            attn_types = (attn_types,)
        self.attn_types = tuple(islice(cycle(attn_types), depth))
        attn_ids = list(islice(cycle(shared_attn_ids if shared_attn_ids is not None else range(depth)), depth))
        ff_ids = list(islice(cycle(shared_ff_ids if shared_ff_ids is not None else range(depth)), depth))

        num_random = sparse_num_random_blocks
        if num_random is None:
            num_random = self.seq_len // sparse_block_size // 4
        masks = {}  # one mask tensor per distinct pattern, shared by the layers that use it
        self.attns, self.ffs = nn.ModuleList(), nn.ModuleList()
        attn_slot, ff_slot, attn_type_of = {}, {}, {}
        self.attn_index, self.ff_index = [], []
        for ind, (attn_type, attn_id, ff_id) in enumerate(zip(self.attn_types, attn_ids, ff_ids)):
            if attn_id in attn_slot:
                if attn_type_of[attn_id] != attn_type:
                    raise ValueError(
                        f"attn_types do not match shared_attn_ids: layer {ind} is '{attn_type}' but shares "
                        f"attention id {attn_id!r} with a '{attn_type_of[attn_id]}' layer"
                    )
            else:
                random_blocks = ()
                if attn_type == "sparse":
                    random_blocks = draw_random_blocks(self.seq_len, sparse_block_size, num_random, sparse_seed + ind)
                spec = PatternSpec(
                    attn_type, text_len, fmap_size, conv_kernel_size, conv_dilation, conv_variant,
                    sparse_block_size, sparse_num_local_blocks, random_blocks,
                )
                if spec not in masks:
                    masks[spec] = pattern_mask(spec)
                attn_slot[attn_id] = len(self.attns)
                attn_type_of[attn_id] = attn_type
                self.attns.append(
                    Attention(dim, heads=heads, dim_head=dim_head, dropout=attn_dropout, stable=stable,
                              spec=spec, kernel="masked" if optimize_for_inference else attn_kernel,
                              pattern=masks[spec])
                )
            if ff_id not in ff_slot:
                ff_slot[ff_id] = len(self.ffs)
                self.ffs.append(FeedForward(dim, mult=ff_mult, dropout=ff_dropout))
            self.attn_index.append(attn_slot[attn_id])
            self.ff_index.append(ff_slot[ff_id])
        self.layers = nn.ModuleList([Block(dim, ind + 1, sandwich_norm) for ind in range(depth)])

        if shift_tokens:
            self.register_buffer("shift_weights", shift_step_tables(text_len, fmap_size, dim), persistent=False)
        self.rotary_emb = rotary_emb
        if rotary_emb:
            angles = rotary_table(dim_head, text_len, fmap_size)  # (N, r)
            self.register_buffer("rot_cos", angles.cos(), persistent=False)
            self.register_buffer("rot_sin", angles.sin(), persistent=False)

    # -- helpers ----------------------------------------------------------------------------------

    @property
    def shift_cache_channels(self) -> int | None:
        if not self.shift_tokens:
            return None
        c2, c4 = shift_channels(self.dim)
        return max(c2, 2 * c4)

    def _rotary(self, n: int):
        return (self.rot_cos[:n], self.rot_sin[:n]) if self.rotary_emb else None

    def _rotary_at(self, pos: torch.Tensor):
        if not self.rotary_emb:
            return None
        return self.rot_cos.index_select(0, pos.view(1)), self.rot_sin.index_select(0, pos.view(1))

    def _branch(self, i: int, kind: str, x, rotary=None, cache=None, masked=None):
        """One branch over positions 0..n-1 (training / uncached / prefill)."""
        block = self.layers[i]
        branch = block.attn if kind == "attn" else block.ff
        xn = branch.norm(x)
        if self.shift_tokens:
            if cache is not None:
                ring = (cache.shift_attn if kind == "attn" else cache.shift_ff)[i].ring
                fill_shift_ring(ring, xn)
            xn = shift_tokens_full(xn, self.text_len, self.fmap_size)
        if kind == "attn":
            out = self.attns[self.attn_index[i]](xn, rotary, None if cache is None else cache.kv[i], masked=masked)
        else:
            out = self.ffs[self.ff_index[i]](xn)
        return branch.post(out)

    def _branch_step(self, i: int, kind: str, x, pos, rotary, cache, shift, length):
        block = self.layers[i]
        branch = block.attn if kind == "attn" else block.ff
        xn = branch.norm(x)
        if self.shift_tokens:
            ring = (cache.shift_attn if kind == "attn" else cache.shift_ff)[i].ring
            xn = shift_tokens_step(xn, ring, *shift)
        if kind == "attn":
            out = self.attns[self.attn_index[i]].step(xn, pos, rotary, cache.kv[i], length)
        else:
            out = self.ffs[self.ff_index[i]](xn)
        return branch.post(out)

    # -- forward ----------------------------------------------------------------------------------

    def forward(self, x: torch.Tensor, cache=None, masked: bool | None = None) -> torch.Tensor:
        """x: (b, n, c) embeddings of positions 0..n-1 -> (b, n, c).

        cache: an InferenceCache to prefill with these n positions.  masked: force (True) or
        forbid (False) dense masked attention for the sparse patterns; None = the model's setting.
        """
        n = x.shape[1]
        if n > self.seq_len:
            raise ValueError(f"sequence of {n} positions is longer than the model's {self.seq_len}")
        rotary = self._rotary(n)

        def f(i):
            return lambda t: self._branch(i, "attn", t, rotary, cache, masked)

        def g(i):
            return lambda t: self._branch(i, "ff", t, cache=cache)

        if not self.reversible:
            for i in range(self.depth):
                x = x + f(i)(x)
                x = x + g(i)(x)
        else:
            fs, gs = [f(i) for i in range(self.depth)], [g(i) for i in range(self.depth)]
            x2 = torch.cat((x, x), dim=-1)
            if torch.is_grad_enabled() and cache is None:
                y = _ReversibleFunction.apply(x2, fs, gs)
            else:
                y = self._two_stream(x2, fs, gs)
            y1, y2 = y.chunk(2, dim=-1)
            x = (y1 + y2) / 2
        if cache is not None:
            cache.length = n
        return x

    @staticmethod
    def _two_stream(x, fs, gs):
        """The reversible recurrence with ordinary autograd (inference, and the reference in tests)."""
        x1, x2 = x.chunk(2, dim=-1)
        for f, g in zip(fs, gs):
            x1 = x1 + f(x2)
            x2 = x2 + g(x1)
        return torch.cat((x1, x2), dim=-1)

    def step(self, x: torch.Tensor, pos: torch.Tensor, cache, length: int | None = None) -> torch.Tensor:
        """One new token.  x: (b, 1, c) embedding at position `pos` (0-d long tensor) -> (b, 1, c).

        length: None attends over the whole preallocated cache (static shapes, for compile);
        pos + 1 attends over the filled prefix only (eager decoding).
        """
        rotary = self._rotary_at(pos)
        shift = None
        if self.shift_tokens:  # computed once per step, shared by every branch
            f = self.fmap_size
            shift = (self.shift_weights.index_select(0, pos.view(1))[0], torch.stack(((pos - 1) % f, pos % f)))
        if not self.reversible:
            for i in range(self.depth):
                x = x + self._branch_step(i, "attn", x, pos, rotary, cache, shift, length)
                x = x + self._branch_step(i, "ff", x, pos, rotary, cache, shift, length)
            return x
        x1, x2 = x, x
        for i in range(self.depth):
            x1 = x1 + self._branch_step(i, "attn", x2, pos, rotary, cache, shift, length)
            x2 = x2 + self._branch_step(i, "ff", x1, pos, rotary, cache, shift, length)
        return (x1 + x2) / 2
