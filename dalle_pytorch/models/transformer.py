"""The cache-aware transformer: residual blocks of `Attention` and feed-forward branches, each behind
`PreShiftToken`, run over a whole sequence (training) or as cached steps of t tokens per row.

Dimensions: b batch, n sequence, c model dim, N = text_len + F*F positions, F image grid side.

Block i (of `depth`):  x = x + attn_branch(x);  x = x + ff_branch(x)
where a branch is LayerScale(PreNorm(fn)): scale * norm_out(fn(shift(norm(x)))) with
- LayerScale init 0.1 / 1e-5 / 1e-6 by layer index (https://arxiv.org/abs/2103.17239),
- norm_out only with sandwich_norm,
- shift = `PreShiftToken` (shift_tokens; shift.py): text tokens take half the channels from the
  previous token; image tokens a quarter from the token above and a quarter from the token to the left.
Reversible execution runs the same branches as a RevNet: y1 = x1 + f(x2), y2 = x2 + g(y1), with
activations recomputed (and dropout RNG replayed) in the backward pass.

Attention and feed-forward modules can be shared across depth (shared_attn_ids / shared_ff_ids);
each is stored once (`attns.{k}` / `ffs.{k}`), each depth keeps its own norms and scales.
"""
from __future__ import annotations

from itertools import cycle, islice

import torch
import torch.nn.functional as F
from torch import nn

from dalle_pytorch.models.config import DALLEConfig
from dalle_pytorch.nn.attention import Attention
from dalle_pytorch.nn.patterns import PatternSpec, draw_random_blocks, pattern_mask
from dalle_pytorch.nn.positions import StepPositions
from dalle_pytorch.nn.quantized import layer_product
from dalle_pytorch.nn.rotary import rotary_step_tables, rotary_table
from dalle_pytorch.nn.shift import PreShiftToken


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

    def step(self, x, linear=layer_product):
        """forward in eval mode with plain function calls (the one-token decode step); linear: the
        weight products' function (`InferenceCache.linear` in a decode step)."""
        x, gates = linear(x, self.proj_in).chunk(2, dim=-1)
        return linear(x * F.gelu(gates), self.proj_out)


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
    """`depth` blocks over N = text_len + F*F positions, configured by a `DALLEConfig`.

    forward: the whole sequence (training, uncached evaluation); step: t new tokens per row against
    an InferenceCache (decoding, prefill, per-row steps, speculative verification).
    """

    def __init__(self, config: DALLEConfig, *, text_len: int, fmap_size: int):
        super().__init__()
        c = config
        self.dim, self.depth, self.heads, self.dim_head = c.dim, c.depth, c.heads, c.dim_head
        self.text_len, self.fmap_size = text_len, fmap_size
        self.seq_len = text_len + fmap_size**2  # N
        self.reversible, self.stable = c.reversible, c.stable

        self.attn_types = c.layer_attn_types()
        depth = c.depth
        attn_ids = list(islice(cycle(c.shared_attn_ids if c.shared_attn_ids is not None else range(depth)), depth))
        ff_ids = list(islice(cycle(c.shared_ff_ids if c.shared_ff_ids is not None else range(depth)), depth))

        num_random = c.sparse_num_random_blocks
        if num_random is None:
            num_random = self.seq_len // c.sparse_block_size // 4
        kernel = "masked" if c.optimize_for_inference else c.attn_kernel
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
                    random_blocks = draw_random_blocks(self.seq_len, c.sparse_block_size, num_random, c.sparse_seed + ind)
                spec = PatternSpec(
                    attn_type, text_len, fmap_size, c.conv_kernel_size, c.conv_dilation, c.conv_variant,
                    c.sparse_block_size, c.sparse_num_local_blocks, random_blocks,
                )
                if spec not in masks:
                    masks[spec] = pattern_mask(spec)
                attn_slot[attn_id] = len(self.attns)
                attn_type_of[attn_id] = attn_type
                self.attns.append(
                    Attention(c.dim, heads=c.heads, dim_head=c.dim_head, dropout=c.attn_dropout, stable=c.stable,
                              spec=spec, kernel=kernel, pattern=masks[spec])
                )
            if ff_id not in ff_slot:
                ff_slot[ff_id] = len(self.ffs)
                self.ffs.append(FeedForward(c.dim, mult=c.ff_mult, dropout=c.ff_dropout))
            self.attn_index.append(attn_slot[attn_id])
            self.ff_index.append(ff_slot[ff_id])
        self.layers = nn.ModuleList([Block(c.dim, ind + 1, c.sandwich_norm) for ind in range(depth)])

        self.shift = PreShiftToken(c.dim, text_len, fmap_size) if c.shift_tokens else None
        self.register_buffer("positions", torch.arange(self.seq_len + 1), persistent=False)  # a step's offsets
        self.rotary_emb = c.rotary_emb
        if c.rotary_emb:
            angles = rotary_table(c.dim_head, text_len, fmap_size)  # (N, r)
            self.register_buffer("rot_cos", angles.cos(), persistent=False)
            self.register_buffer("rot_sin", angles.sin(), persistent=False)
            # the same rotation over all dim_head channels, for the one-token step (no slicing)
            cos_d, sin_d, swap = rotary_step_tables(self.rot_cos, self.rot_sin, c.dim_head)
            self.register_buffer("rot_cos_step", cos_d, persistent=False)
            self.register_buffer("rot_sin_step", sin_d, persistent=False)
            self.register_buffer("rot_swap", swap, persistent=False)

    @property
    def shift_tokens(self) -> bool:
        return self.shift is not None

    # -- helpers ----------------------------------------------------------------------------------

    @property
    def shift_cache_channels(self) -> int | None:
        """Channels a token-shift ring keeps per position: all of them (the step then needs no
        slicing or concatenation; the ring is only F rows long)."""
        return self.dim if self.shift_tokens else None

    def _rotary(self, n: int):
        return (self.rot_cos[:n], self.rot_sin[:n]) if self.rotary_emb else None

    def _rotary_step(self, pos: StepPositions):
        """(cos, sin, swap) of the step's positions for `apply_rotary_step` (cos, sin (1, dim_head) for
        one token at a shared start, else (1 or b, t, 1, 1, dim_head), broadcast over q/k/v and heads
        of (b, t, 3, h, d)), or None."""
        if not self.rotary_emb:
            return None
        cos, sin = self.rot_cos_step.index_select(0, pos.flat), self.rot_sin_step.index_select(0, pos.flat)
        if not (pos.shared and pos.tokens == 1):
            shape = (pos.table_rows, pos.tokens, 1, 1, -1)
            cos, sin = cos.view(shape), sin.view(shape)
        return cos, sin, self.rot_swap

    def _branch(self, i: int, kind: str, x, rotary=None, masked=None):
        """One branch over positions 0..n-1 (training, uncached evaluation)."""
        block = self.layers[i]
        branch = block.attn if kind == "attn" else block.ff
        xn = branch.norm(x)
        if self.shift is not None:
            xn = self.shift(xn)
        if kind == "attn":
            out = self.attns[self.attn_index[i]](xn, rotary, masked=masked)
        else:
            out = self.ffs[self.ff_index[i]](xn)
        return branch.post(out)

    def _branch_step(self, i: int, kind: str, x, pos, rotary, cache, shift, residual=None):
        """residual + branch(x) for a step's tokens (residual defaults to x): the same function as
        `_branch`, with fewer ops and module calls (a decode step is dominated by per-op overhead)."""
        block = self.layers[i]
        branch = block.attn if kind == "attn" else block.ff
        norm = branch.norm
        xn = F.layer_norm(x, norm.normalized_shape, norm.weight, norm.bias, norm.eps)
        if self.shift is not None:
            xn = self.shift.step(xn, (cache.shift_attn if kind == "attn" else cache.shift_ff)[i], shift)
        if kind == "attn":
            out = self.attns[self.attn_index[i]].step(xn, pos, rotary, cache.kv[i], cache.linear)
        else:
            out = self.ffs[self.ff_index[i]].step(xn, cache.linear)
        if branch.norm_out is not None:
            out = branch.norm_out(out)
        return torch.addcmul(x if residual is None else residual, out, branch.scale)

    # -- forward ----------------------------------------------------------------------------------

    def forward(self, x: torch.Tensor, masked: bool | None = None) -> torch.Tensor:
        """x: (b, n, c) embeddings of positions 0..n-1 -> (b, n, c) (training, uncached evaluation).

        masked: force (True) or forbid (False) dense masked attention for the sparse patterns; None =
        the model's setting.  Cached inference (prefill included) goes through `step`.
        """
        n = x.shape[1]
        if n > self.seq_len:
            raise ValueError(f"sequence of {n} positions is longer than the model's {self.seq_len}")
        rotary = self._rotary(n)

        def f(i):
            return lambda t: self._branch(i, "attn", t, rotary, masked)

        def g(i):
            return lambda t: self._branch(i, "ff", t)

        if not self.reversible:
            for i in range(self.depth):
                x = x + f(i)(x)
                x = x + g(i)(x)
            return x
        fs, gs = [f(i) for i in range(self.depth)], [g(i) for i in range(self.depth)]
        x2 = torch.cat((x, x), dim=-1)
        y = _ReversibleFunction.apply(x2, fs, gs) if torch.is_grad_enabled() else self._two_stream(x2, fs, gs)
        y1, y2 = y.chunk(2, dim=-1)
        return (y1 + y2) / 2

    @staticmethod
    def _two_stream(x, fs, gs):
        """The reversible recurrence with ordinary autograd (inference, and the reference in tests)."""
        x1, x2 = x.chunk(2, dim=-1)
        for f, g in zip(fs, gs):
            x1 = x1 + f(x2)
            x2 = x2 + g(x1)
        return torch.cat((x1, x2), dim=-1)

    def step(self, x: torch.Tensor, pos: StepPositions, cache) -> torch.Tensor:
        """The one cached step: t new tokens per row.  x: (b, t, c) embeddings at `pos` (start ..
        start + t - 1; `StepPositions.of`) -> (b, t, c).

        The start is one position shared by every row (decoding, prefill) or one per row (the
        server's rows, speculative windows).  Each row reads and writes only its own cache row, so its
        result does not depend on the other rows (up to the float rounding of batched products).
        pos.length: None attends over the whole preallocated cache (static shapes: compile, CUDA
        graphs); otherwise over that many positions.  Plain decoding is t = 1; a prefill is t = n from
        start 0; speculative verification is t = K.  The cache's `length` is not changed (the caller
        knows what it keeps).
        """
        if pos.tokens > self.seq_len:
            raise ValueError(f"a step of {pos.tokens} tokens is longer than the model's {self.seq_len} positions")
        rotary = self._rotary_step(pos)
        shift = None  # shared by every branch
        if self.shift is not None:
            shift = self.shift.step_tables(pos, cache.shift_attn[0].size)
        if not self.reversible:
            for i in range(self.depth):
                x = self._branch_step(i, "attn", x, pos, rotary, cache, shift)
                x = self._branch_step(i, "ff", x, pos, rotary, cache, shift)
            return x
        x1, x2 = x, x
        for i in range(self.depth):  # x1 + f(x2), then x2 + g(x1)
            x1 = self._branch_step(i, "attn", x2, pos, rotary, cache, shift, residual=x1)
            x2 = self._branch_step(i, "ff", x1, pos, rotary, cache, shift, residual=x2)
        return (x1 + x2) / 2
