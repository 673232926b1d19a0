"""Inference state for cached generation: preallocated, written in place, never concatenated.

Dimensions: B cache rows (batch), H heads, S max_len (positions the cache holds), D dim_head,
F image grid side, C model dim (the channels a token-shift ring keeps), t tokens of a step.

Every write is positional: a step at positions p .. p + t - 1 (`StepPositions`) writes exactly
those slots, and attention masks every slot past a query's own position, so slots written by a
step that is later undone (rejected drafts) are never read before they are written again.

One `InferenceCache` per generate call holds, for every depth index of the transformer:
- a `KVCache`: keys and values (B, H, S + 1, D: one spare slot, see `KVCache`) of that layer's attention, rotary already applied;
- for token-shift models, two `ShiftCache`s (attention branch, feed-forward branch; see shift.py):
  a ring of the last F normalised inputs (B, F, C), i.e. exactly the row above and the token to
  the left that the shift of the next token reads;
and, on the CPU, the step's weights packed for oneDNN's kernel (`linears`, see packed.py): every
weight product of a decode step goes through `InferenceCache.linear`.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from dalle_pytorch.nn.packed import PackedLinears
from dalle_pytorch.nn.positions import StepPositions
from dalle_pytorch.nn.quantized import layer_product
from dalle_pytorch.nn.shift import ShiftCache


@dataclass
class KVCache:
    """Keys and values of one attention layer for positions 0..max_len-1.

    The buffers hold one spare slot that is never written or read: (B, H, max_len + 1, D).  A
    decode step attends over `k.narrow(2, 0, n)` with n <= max_len, so that view is always a
    strict prefix, the same kind of strided view at every step; torch.compile with dynamic shapes
    then needs one graph for every length (without the spare slot the last step, n == S, is a
    contiguous tensor and triggers a recompile).
    """

    k: torch.Tensor  # (B, H, S + 1, D)
    v: torch.Tensor  # (B, H, S + 1, D)

    @property
    def max_len(self) -> int:
        return self.k.shape[2] - 1

    def write(self, pos: StepPositions, k: torch.Tensor, v: torch.Tensor) -> None:
        """Store a step's keys and values at its positions (cast to the cache's dtype).  k, v: (B, H, t, D).

        A shared start with a known length copies into the slots' view (`write_offset`: no index
        checks, measured in docs/benchmarks.md); a shared start without one (static shapes) index-copies
        at the position tensor; one start per row scatters, each row at its own positions.
        """
        offset = pos.write_offset()
        if offset is not None:
            t = k.shape[2]  # copy_ casts to the cache's dtype
            self.k.narrow(2, offset, t).copy_(k)
            self.v.narrow(2, offset, t).copy_(v)
            return
        if k.dtype != self.k.dtype:
            k, v = k.to(self.k.dtype), v.to(self.v.dtype)
        if pos.shared:
            self.k.index_copy_(2, pos.flat, k)
            self.v.index_copy_(2, pos.flat, v)
        else:
            b, h, t, d = k.shape
            index = pos.index.view(b, 1, t, 1).expand(b, h, t, d)  # row i writes its slots of every head
            self.k.scatter_(2, index, k)
            self.v.scatter_(2, index, v)


@dataclass
class InferenceCache:
    """All per-layer state of one cached generation.  Build it with `DALLE.setup_cache`."""

    kv: list  # [KVCache] per depth index
    shift_attn: list  # [ShiftCache | None] per depth index
    shift_ff: list  # [ShiftCache | None] per depth index
    length: int = 0  # positions filled so far (0..length-1)
    max_len: int = field(default=0)
    linears: PackedLinears | None = None  # the step's packed weights (CPU), or None: plain F.linear

    def linear(self, x: torch.Tensor, layer: nn.Module, rows: slice | None = None) -> torch.Tensor:
        """A step's product by `layer` (a Linear or a QuantizedLinear), its output `rows` only if given:
        through the packed weights when there are any."""
        return layer_product(x, layer, rows, self.linears)

    @classmethod
    def allocate(cls, *, depth: int, batch: int, heads: int, dim_head: int, max_len: int,
                 shift_channels: int | None, fmap_size: int, device, dtype,
                 kv_dtype: torch.dtype | None = None, pack_weights: bool | PackedLinears = False,
                 rewind: int = 0) -> "InferenceCache":
        """dtype: the shift rings' (the model's activations); kv_dtype: the keys' and values'
        (default dtype); pack_weights: give the steps packed weights (`PackedLinears`, for `batch` rows, or
        the PackedLinears given, whose packs outlive this cache);
        rewind: how far before the end of a step the next one may start (the rings' extra slots)."""
        if int(rewind) != rewind or rewind < 0:
            raise ValueError(f"rewind must be an integer >= 0, got {rewind!r}")
        def zeros(*shape, dtype=dtype):
            return torch.zeros(*shape, device=device, dtype=dtype)

        kd = kv_dtype or dtype
        kv = [KVCache(zeros(batch, heads, max_len + 1, dim_head, dtype=kd), zeros(batch, heads, max_len + 1, dim_head, dtype=kd))
              for _ in range(depth)]  # + 1: the spare slot (see KVCache)
        if shift_channels:
            ring = fmap_size + int(rewind)
            sa = [ShiftCache(zeros(batch, ring, shift_channels)) for _ in range(depth)]
            sf = [ShiftCache(zeros(batch, ring, shift_channels)) for _ in range(depth)]
        else:
            sa, sf = [None] * depth, [None] * depth
        if isinstance(pack_weights, PackedLinears):
            linears = pack_weights
        else:
            linears = PackedLinears(batch) if pack_weights else None
        return cls(kv=kv, shift_attn=sa, shift_ff=sf, length=0, max_len=max_len, linears=linears)

    @property
    def batch(self) -> int:
        return self.kv[0].k.shape[0]

    def tensors(self):
        for kv in self.kv:
            yield kv.k
            yield kv.v
        for s in self.shift_attn + self.shift_ff:
            if s is not None:
                yield s.ring

    def reset(self) -> None:
        """Forget every position (the buffers are kept and zeroed)."""
        for t in self.tensors():
            t.zero_()
        self.length = 0

    def copy_rows_from(self, other: "InferenceCache", index: torch.Tensor) -> None:
        """Fill this cache's rows from `other`'s rows `index` (B,) for the positions `other` holds.

        This is how a prefix computed once per caption is shared by all images of that caption
        (and how a null-text prefix is shared by all null rows): compute on the unique rows,
        then copy into the full batch.
        """
        n = other.length
        for dst, src in zip(self.kv, other.kv):
            dst.k[:, :, :n].copy_(src.k[index, :, :n])
            dst.v[:, :, :n].copy_(src.v[index, :, :n])
        for dst_list, src_list in ((self.shift_attn, other.shift_attn), (self.shift_ff, other.shift_ff)):
            for dst, src in zip(dst_list, src_list):
                if dst is None:
                    continue
                if dst.size == src.size:
                    dst.ring.copy_(src.ring[index])
                else:  # rings of another length: the last positions both hold, each at its own slot
                    keep = torch.arange(max(0, n - min(dst.size, src.size)), n, device=dst.ring.device)
                    dst.ring.index_copy_(1, keep % dst.size, src.ring[index].index_select(1, keep % src.size))
        self.length = n

    def narrow_rows(self, start: int, count: int) -> "InferenceCache":
        """Rows start..start+count-1 as a cache of views: steps on it write into this cache's buffers.

        The views keep the buffers' layout (rows are the outermost dimension), so a step on the
        first rows computes exactly what it computes on a cache of just those rows.
        """
        def rows(t):
            return t.narrow(0, start, count)

        return InferenceCache(
            kv=[KVCache(rows(kv.k), rows(kv.v)) for kv in self.kv],
            shift_attn=[None if s is None else ShiftCache(rows(s.ring)) for s in self.shift_attn],
            shift_ff=[None if s is None else ShiftCache(rows(s.ring)) for s in self.shift_ff],
            length=self.length, max_len=self.max_len, linears=self.linears,
        )

    def move_rows(self, src: torch.Tensor, dst: torch.Tensor, length: int | None = None) -> None:
        """Copy rows `src` (k,) onto rows `dst` (k,) of this cache (compaction when rows leave a
        running batch); the ranges may overlap (the source rows are read first).  length: copy only
        key/value positions 0..length-1 (the filled part); None: all of them.  Rings are copied whole."""
        for kv in self.kv:
            for t in (kv.k, kv.v):
                part = t if length is None else t.narrow(2, 0, length)
                part.index_copy_(0, dst, part.index_select(0, src))
        for s in self.shift_attn + self.shift_ff:
            if s is not None:
                s.ring.index_copy_(0, dst, s.ring.index_select(0, src))

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors())
