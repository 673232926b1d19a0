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
from dalle_pytorch.rotary import rotary_step_tables, rotary_table


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

    def step(self, x):
        """forward in eval mode with plain function calls (the one-token decode step)."""
        x, gates = F.linear(x, self.proj_in.weight, self.proj_in.bias).chunk(2, dim=-1)
        return F.linear(x * F.gelu(gates), self.proj_out.weight, self.proj_out.bias)


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
    """(N, 3, dim) 0/1 weights of (the token itself, the previous token, the token above) for every
    channel of a token at each position, so that one decoding step shifts with three
    multiply-adds and no position-dependent control flow (exact: weights are 0 or 1; channels
    that are never shifted have weights (1, 0, 0))."""
    c2, c4 = shift_channels(dim)
    f, n = fmap_size, text_len + fmap_size**2
    w = torch.zeros(n, 3, dim)
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


def shift_tokens_step(xn: torch.Tensor, ring: torch.Tensor, w_self: torch.Tensor, w_prev: torch.Tensor,
                      w_top: torch.Tensor, slot_prev: torch.Tensor, slot_top: torch.Tensor) -> torch.Tensor:
    """Token shift of one token, reading and updating the ring of the last F inputs.

    xn: (b, 1, c) normalised input; ring: (b, F, c); w_self, w_prev, w_top: (c,) this position's
    row of shift_step_tables; slot_prev, slot_top: (1,) ring slots of the previous token and of the
    token above (which is also where this token goes).  Shapes and control flow do not depend on
    the position.
    """
    prev = ring.index_select(1, slot_prev)
    top = ring.index_select(1, slot_top)
    out = torch.addcmul(torch.addcmul(xn * w_self, prev, w_prev), top, w_top)
    ring.index_copy_(1, slot_top, xn)
    return out


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
            # the same rotation over all dim_head channels, for the one-token step (no slicing)
            cos_d, sin_d, swap = rotary_step_tables(self.rot_cos, self.rot_sin, dim_head)
            self.register_buffer("rot_cos_step", cos_d, persistent=False)
            self.register_buffer("rot_sin_step", sin_d, persistent=False)
            self.register_buffer("rot_swap", swap, persistent=False)

    # -- helpers ----------------------------------------------------------------------------------

    @property
    def shift_cache_channels(self) -> int | None:
        """Channels a token-shift ring keeps per position: all of them (the step then needs no
        slicing or concatenation; the ring is only F rows long)."""
        return self.dim if self.shift_tokens else None

    def _rotary(self, n: int):
        return (self.rot_cos[:n], self.rot_sin[:n]) if self.rotary_emb else None

    def _rotary_step_at(self, pos: torch.Tensor):
        """(cos, sin, swap) of position `pos` for `apply_rotary_step`, or None."""
        if not self.rotary_emb:
            return None
        p = pos.view(1)
        return self.rot_cos_step.index_select(0, p), self.rot_sin_step.index_select(0, p), self.rot_swap

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

    def _branch_step(self, i: int, kind: str, x, pos, rotary, cache, shift, length, residual=None):
        """residual + branch(x) for one token (residual defaults to x): the same function as
        `_branch`, with fewer ops and module calls (a decode step is dominated by per-op overhead)."""
        block = self.layers[i]
        branch = block.attn if kind == "attn" else block.ff
        norm = branch.norm
        xn = F.layer_norm(x, norm.normalized_shape, norm.weight, norm.bias, norm.eps)
        if self.shift_tokens:
            ring = (cache.shift_attn if kind == "attn" else cache.shift_ff)[i].ring
            xn = shift_tokens_step(xn, ring, *shift)
        if kind == "attn":
            out = self.attns[self.attn_index[i]].step(xn, pos, rotary, cache.kv[i], length)
        else:
            out = self.ffs[self.ff_index[i]].step(xn)
        if branch.norm_out is not None:
            out = branch.norm_out(out)
        return torch.addcmul(x if residual is None else residual, out, branch.scale)

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
        rotary = self._rotary_step_at(pos)
        shift = None
        if self.shift_tokens:  # computed once per step, shared by every branch
            f = self.fmap_size
            p = pos.view(1)
            shift = (*self.shift_weights.index_select(0, p)[0].unbind(0), (p - 1) % f, p % f)
        if not self.reversible:
            for i in range(self.depth):
                x = self._branch_step(i, "attn", x, pos, rotary, cache, shift, length)
                x = self._branch_step(i, "ff", x, pos, rotary, cache, shift, length)
            return x
        x1, x2 = x, x
        for i in range(self.depth):  # x1 + f(x2), then x2 + g(x1)
            x1 = self._branch_step(i, "attn", x2, pos, rotary, cache, shift, length, residual=x1)
            x2 = self._branch_step(i, "ff", x1, pos, rotary, cache, shift, length, residual=x2)
        return (x1 + x2) / 2
