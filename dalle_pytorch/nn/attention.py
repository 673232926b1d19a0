"""Multi-head causal attention with one pattern per layer.

Dimensions: b batch, h heads, n sequence, d dim_head, N = text_len + F*F the full pattern length,
F the image grid side, K the conv_like kernel size, L the sparse-padded length.

Each layer holds the boolean pattern of patterns.py (one source of truth) and three ways to use it:
- a pattern kernel (axial: attention within rows/columns; conv_like: unfold of the local window;
  sparse: gather of the allowed key blocks) whose candidate keys are a superset of what the
  pattern allows, masked by entries gathered from the pattern itself; memory O(n * window);
- dense attention with the pattern mask (PyTorch's fused scaled_dot_product_attention);
- `step`: t new tokens per row against a preallocated KV cache, masked by the pattern's rows.
The parameters are the same in all three, so one set of weights serves every mode.

Which of the first two a full-sequence forward uses (KERNELS):
- 'auto' (default): the one measured faster for the pattern by benchmarks/attention.py (the numbers
  are in docs/benchmarks.md): the axial kernel for axial layers, dense masked attention for
  conv_like and sparse layers;
- 'pattern': always the pattern kernel (less memory for long sequences);
- 'masked': always dense masked attention.
optimize_for_inference=True means 'masked' (DALLE-pytorch's name for it).
"""
from __future__ import annotations

from math import ceil

import torch
import torch.nn.functional as F
from torch import nn

from dalle_pytorch.nn.patterns import (PatternSpec, conv_offsets, pattern_mask, random_blocks_from_tensor,
                                       random_blocks_to_tensor, sparse_block_allowed)
from dalle_pytorch.nn.positions import StepPositions
from dalle_pytorch.nn.quantized import layer_product
from dalle_pytorch.nn.rotary import apply_rotary, apply_rotary_step

#: How a layer's pattern runs in a full-sequence forward (see the module docstring).
KERNELS = ("auto", "pattern", "masked")


def stable_softmax(t: torch.Tensor, dim: int = -1, alpha: float = 32.0**2) -> torch.Tensor:
    """Softmax with the max subtracted at a reduced scale (DALLE-pytorch's `stable` option)."""
    t = t / alpha
    t = t - torch.amax(t, dim=dim, keepdim=True).detach()
    return (t * alpha).softmax(dim=dim)


def attend(q, k, v, mask: torch.Tensor | None, scale: float, stable: bool, causal: bool = False):
    """softmax(q k^T * scale, masked) v.  q: (..., i, d); k, v: (..., j, d); mask: bool (..., i, j)."""
    if not stable:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal and mask is None, scale=scale)
    dots = (q * scale) @ k.transpose(-1, -2)
    if causal and mask is None:
        i, j = dots.shape[-2:]
        mask = torch.ones(i, j, dtype=torch.bool, device=q.device).tril(j - i)
    if mask is not None:
        dots = dots.masked_fill(~mask, -torch.finfo(dots.dtype).max)
    return stable_softmax(dots) @ v


def attend_one(q, k, v, mask: torch.Tensor | None, scale: float) -> torch.Tensor:
    """One query per row as two reductions over the cached keys, accumulated in float32.

    q: (b, h, 1, d); k, v: (b, h, n, d) in any float dtype; mask: bool (1, n) or None -> (b, h, 1, d)
    float32.  Under torch.compile each reduction becomes one fused pass that reads a bf16 K or V
    once and converts in registers: on a CPU without AMX that reads a bf16 cache about twice as
    fast as scaled_dot_product_attention reads an fp32 one, while SDPA's bf16 kernel is slower
    than its fp32 one (docs/benchmarks.md).  Eagerly it would materialise k * q: compiled use only.
    """
    s = (k.float() * q.float()).sum(-1, keepdim=True) * scale  # (b, h, n, 1)
    if mask is not None:
        s = s.masked_fill(~mask.view(1, 1, -1, 1), float("-inf"))
    return (v.float() * s.softmax(dim=2)).sum(2, keepdim=True)


class Attention(nn.Module):
    """Causal self-attention for one pattern.  Parameters: to_qkv (no bias), to_out."""

    def __init__(self, dim: int, *, heads: int, dim_head: int, dropout: float, stable: bool,
                 spec: PatternSpec, kernel: str = "auto", pattern: torch.Tensor | None = None):
        super().__init__()
        if kernel not in KERNELS:
            raise ValueError(f"attention kernel must be one of {KERNELS}, got {kernel!r}")
        self.heads, self.dim_head, self.scale = heads, dim_head, dim_head**-0.5
        self.stable, self.spec = stable, spec
        auto_masked = spec.attn_type in ("conv_like", "sparse")
        self.masked = kernel == "masked" or (kernel == "auto" and auto_masked)  # the default for forward
        inner = heads * dim_head
        self.to_qkv = nn.Linear(dim, inner * 3, bias=False)
        self.to_out = nn.Linear(inner, dim)
        self.dropout = nn.Dropout(dropout)
        if spec.attn_type == "sparse":
            # the random part of the pattern is data: stored with the model, restored on load
            self.register_buffer("random_blocks", random_blocks_to_tensor(spec.random_blocks))
            self.register_load_state_dict_post_hook(lambda module, keys: module._build_tables())
        self._pattern_given = pattern
        self._build_tables()

    # -- static tables derived from the pattern -------------------------------------------------

    def _build_tables(self):
        if self.to_qkv.weight.is_meta:
            return  # built on the meta device to check a checkpoint's shapes: the tables hold no parameters
        spec = self.spec
        if spec.attn_type == "sparse":
            rows = random_blocks_from_tensor(self.random_blocks.cpu())
            if rows != spec.random_blocks:
                spec = PatternSpec(**{**spec.__dict__, "random_blocks": rows})
                self.spec = spec
                self._pattern_given = None
        device = self.to_qkv.weight.device
        pattern = self._pattern_given if self._pattern_given is not None else pattern_mask(spec)
        self.register_buffer("pattern", pattern.to(device), persistent=False)  # (N, N)
        tl, f, t = spec.text_len, spec.fmap_size, spec.attn_type
        text = torch.arange(tl)
        if t in ("axial_row", "axial_col"):
            grid = torch.arange(f * f).view(f, f)
            groups = grid if t == "axial_row" else grid.t()  # (F groups, F members) of grid indices
            qpos = tl + groups  # (F, F)
            kpos = torch.cat((text.expand(f, tl), tl + groups), dim=-1)  # (F, tl + F)
            self.register_buffer("group_index", groups.reshape(-1), persistent=False)
            self.register_buffer("kernel_mask", pattern[qpos[..., None], kpos[:, None, :]].to(device), persistent=False)
        elif t == "conv_like":
            offsets, p = conv_offsets(spec)
            r = torch.arange(f * f) // f
            c = torch.arange(f * f) % f
            off = torch.tensor(offsets)
            kr = r[:, None, None] + off[None, :, None]  # (FF, K, 1)
            kc = c[:, None, None] + off[None, None, :]  # (FF, 1, K)
            valid = ((kr >= 0) & (kr < f) & (kc >= 0) & (kc < f)).flatten(1)  # (FF, K*K)
            kidx = (kr.clamp(0, f - 1) * f + kc.clamp(0, f - 1)).flatten(1)
            qpos = tl + torch.arange(f * f)
            img_mask = pattern[qpos[:, None], tl + kidx] & valid
            self.register_buffer("kernel_mask", torch.cat((pattern[qpos][:, :tl], img_mask), dim=-1).to(device), persistent=False)
            pad_lo = -offsets[0]
            pad_hi = max(offsets[-1], 0)
            self.unfold_padding = (pad_lo, pad_hi, pad_lo, pad_hi)  # left, right, top, bottom
        elif t == "sparse":
            bs = spec.block_size
            n = spec.seq_len
            nb = ceil(n / bs)
            full = pattern_mask(spec, nb * bs)
            allowed = sparse_block_allowed(spec, nb)
            kmax = int(allowed.sum(-1).max())
            index = torch.zeros(nb, kmax, dtype=torch.long)
            valid = torch.zeros(nb, kmax, dtype=torch.bool)
            for i in range(nb):
                cols = allowed[i].nonzero().flatten()
                index[i, : len(cols)] = cols
                valid[i, : len(cols)] = True
            qpos = torch.arange(nb * bs).view(nb, bs)
            kpos = (index[..., None] * bs + torch.arange(bs)).flatten(1)  # (nb, kmax*bs)
            kvalid = valid[..., None].expand(nb, kmax, bs).flatten(1)
            mask = full[qpos[..., None], kpos[:, None, :]] & kvalid[:, None, :]
            self.register_buffer("block_index", index.to(device), persistent=False)
            self.register_buffer("kernel_mask", mask.to(device), persistent=False)

    # -- projections ------------------------------------------------------------------------------

    def _qkv(self, x, rotary):
        b, n, _ = x.shape
        qkv = self.to_qkv(x).view(b, n, 3, self.heads, self.dim_head)
        if rotary is not None:  # q, k and v rotated in one go (DALLE-pytorch rotates v too)
            cos, sin = rotary
            qkv = apply_rotary(cos[:, None, None, :], sin[:, None, None, :], qkv)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # 3 x (b, h, n, d)
        return q, k, v

    def _out(self, out):
        b, h, n, d = out.shape
        out = self.to_out(out.transpose(1, 2).reshape(b, n, h * d))
        return self.dropout(out) if self.training else out

    # -- full-sequence forward (training, uncached evaluation, prefill) ----------------------------

    def forward(self, x: torch.Tensor, rotary=None, masked: bool | None = None) -> torch.Tensor:
        """x: (b, n, dim) at positions 0..n-1 (training, uncached evaluation); rotary: (cos, sin) each
        (n, r) or None.  masked: True = dense masked attention, False = the pattern kernel, None = the
        layer's kernel policy.  Returns (b, n, dim).
        """
        q, k, v = self._qkv(x, rotary)
        masked = self.masked if masked is None else masked
        t = self.spec.attn_type
        if t == "full":
            out = attend(q, k, v, None, self.scale, self.stable, causal=True)
        elif masked:
            n = x.shape[1]
            out = attend(q, k, v, self.pattern[:n, :n], self.scale, self.stable)
        elif t in ("axial_row", "axial_col"):
            out = self._axial(q, k, v)
        elif t == "conv_like":
            out = self._conv(q, k, v)
        else:
            out = self._sparse(q, k, v)
        return self._out(out)

    def _split_text(self, q, k, v):
        """Text queries (causal over text) and the image part padded to the full F x F grid."""
        tl, f = self.spec.text_len, self.spec.fmap_size
        n = q.shape[-2]
        nt = min(n, tl)
        out_text = attend(q[..., :nt, :], k[..., :nt, :], v[..., :nt, :], None, self.scale, self.stable, causal=True)
        pad = tl + f * f - n
        img = [F.pad(t[..., tl:, :], (0, 0, 0, pad)) for t in (q, k, v)]  # (b, h, FF, d)
        return out_text, img, n - tl

    def _axial(self, q, k, v):
        tl, f = self.spec.text_len, self.spec.fmap_size
        out_text, (qi, ki, vi), ni = self._split_text(q, k, v)
        if ni <= 0:
            return out_text
        b, h, _, d = qi.shape
        qi, ki, vi = (t.index_select(2, self.group_index).view(b, h, f, f, d) for t in (qi, ki, vi))  # (b, h, group, member, d)
        kt = k[..., :tl, :].unsqueeze(2).expand(b, h, f, tl, d)
        vt = v[..., :tl, :].unsqueeze(2).expand(b, h, f, tl, d)
        out = attend(qi, torch.cat((kt, ki), dim=-2), torch.cat((vt, vi), dim=-2), self.kernel_mask, self.scale, self.stable)
        out = out.reshape(b, h, f * f, d)
        out = torch.empty_like(out).index_copy_(2, self.group_index, out)  # back to raster order
        return torch.cat((out_text, out[..., :ni, :]), dim=-2)

    def _conv(self, q, k, v):
        tl, f, kk = self.spec.text_len, self.spec.fmap_size, self.spec.kernel_size
        out_text, (qi, ki, vi), ni = self._split_text(q, k, v)
        if ni <= 0:
            return out_text
        b, h, _, d = qi.shape

        def unfold(t):  # (b, h, FF, d) -> (b, h, FF, K*K, d)
            t = t.transpose(-1, -2).reshape(b * h, d, f, f)
            t = F.pad(t, self.unfold_padding)
            t = F.unfold(t, kk, dilation=self.spec.dilation)  # (bh, d*K*K, FF)
            return t.view(b, h, d, kk * kk, f * f).permute(0, 1, 4, 3, 2)

        ku, vu = unfold(ki), unfold(vi)
        kt, vt = k[..., :tl, :], v[..., :tl, :]
        qs = qi * self.scale
        dots = torch.cat((qs @ kt.transpose(-1, -2), torch.einsum("bhid,bhijd->bhij", qs, ku)), dim=-1)
        dots = dots.masked_fill(~self.kernel_mask, -torch.finfo(dots.dtype).max)
        attn = stable_softmax(dots) if self.stable else dots.softmax(dim=-1)
        out = attn[..., :tl] @ vt + torch.einsum("bhij,bhijd->bhid", attn[..., tl:], vu)
        return torch.cat((out_text, out[..., :ni, :]), dim=-2)

    def _sparse(self, q, k, v):
        bs = self.spec.block_size
        b, h, n, d = q.shape
        nb, kmax = self.block_index.shape
        pad = nb * bs - n
        q, k, v = (F.pad(t, (0, 0, 0, pad)).view(b, h, nb, bs, d) for t in (q, k, v))
        kb = k[:, :, self.block_index].reshape(b, h, nb, kmax * bs, d)
        vb = v[:, :, self.block_index].reshape(b, h, nb, kmax * bs, d)
        out = attend(q, kb, vb, self.kernel_mask, self.scale, self.stable)
        return out.reshape(b, h, nb * bs, d)[..., :n, :]

    # -- the cached step ---------------------------------------------------------------------------

    def step(self, x: torch.Tensor, pos: StepPositions, rotary, kv, linear=layer_product) -> torch.Tensor:
        """t new tokens per row against the preallocated KV cache.  x: (b, t, dim) at `pos`; kv: this
        layer's KVCache; rotary: (cos, sin, swap) of the positions (`rotary.rotary_step_tables`) or None;
        linear: the weight products' function `(x, layer)` (`InferenceCache.linear` in a step; by default
        `layer_product`: the layer's own product).

        Writes the tokens' keys and values at their positions, then each token attends with the
        pattern's row for its own position, which also hides every slot after it: the step's later
        tokens, unwritten slots, and stale keys of an undone step or of an earlier occupant of the
        cache row.  pos.length=None attends over the whole cache (shapes never depend on the
        positions: compile, CUDA graphs); otherwise over the first `pos.length` slots only, which skips
        the work on empty ones (and, for one token of full attention at a shared start, the mask).
        Returns (b, t, dim).
        """
        b, t = x.shape[0], x.shape[1]
        qkv = linear(x, self.to_qkv).view(b, t, 3, self.heads, self.dim_head)
        if rotary is not None:
            cos, sin, swap = rotary
            qkv = apply_rotary_step(cos, sin, swap, qkv)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # 3 x (b, h, t, d)
        kv.write(pos, k, v)
        n = kv.max_len if pos.length is None else pos.length
        # narrow, not [:n]: a slice clamps n to the size, and that comparison becomes a compile guard
        # (torch.compile with dynamic shapes would recompile when n reaches the cache's length)
        if pos.length is not None and self.spec.attn_type == "full" and pos.shared and t == 1:
            mask = None  # every filled position is visible
        else:
            mask = self.pattern.index_select(0, pos.flat).narrow(1, 0, n)  # (rows * t, n)
            if not (pos.shared and t == 1):
                mask = mask.view(pos.table_rows, 1, t, n)  # broadcast over heads (and rows when shared)
        keys, values = kv.k.narrow(2, 0, n), kv.v.narrow(2, 0, n)
        if (t == 1 and kv.k.dtype in (torch.bfloat16, torch.float16) and not self.stable and pos.shared
                and torch.compiler.is_compiling()):
            out = attend_one(q, keys, values, mask, self.scale).to(x.dtype)  # fused reads of the reduced-precision cache
        else:
            cast = kv.k.dtype != q.dtype  # a cache in another dtype (DALLE.setup_cache's kv_dtype): attend in its dtype
            out = attend(q.to(kv.k.dtype) if cast else q, keys, values, mask, self.scale, self.stable)
            out = out.to(x.dtype) if cast else out
        return linear(out.transpose(1, 2).reshape(b, t, -1), self.to_out)
