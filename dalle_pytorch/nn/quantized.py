"""Quantized weight products: int8 and int4 layers for decoding with fewer bytes per step.

A cached decode step at small batch streams every weight once, so its time is the weights' bytes
over the memory bandwidth.  `QuantizedLinear` stores a Linear's weight in fewer bytes:

- "int8": symmetric int8 weights, one scale per output channel, and the activations quantized the
  same way per token at each product (W8A8, "dynamic"): the product is then an integer matrix
  product, summed in int32 (exact), scaled by the weight's channel scale and the token's scale.
  Chosen over weight-only int8 because the integer product (`torch._int_mm`, which reads the int8
  weight as stored) is both the faster kernel on the CPU and exact: no summation order can change
  an integer sum, so a row's result never depends on the batch it is in (docs/benchmarks.md has
  the kernels' timings; oneDNN's prepacked u8 x s8 product streams as fast but costs several times
  more per call, which a decode step's 65 small products pay).  That kernel is fast only on CPUs with
  VNNI (its int8 dot products); elsewhere (an AVX2-only CPU) `torch._int_mm` is a reference loop,
  2-25x slower than float32, and the same integer sums are computed as float32 products of the
  integer values through the packed float kernel, in chunks of input channels small enough for
  every sum to be exact (`int_mm_pays`): the same bits, a little slower than float32 (docs/benchmarks.md).
- "int4": asymmetric 4-bit weights in groups of `group` input channels (a scale and a zero point
  per output channel and group, kept in bfloat16), multiplied by bfloat16 activations through
  PyTorch's CPU int4 kernel (`_weight_int4pack_mm_for_cpu`); elsewhere the weight is dequantized
  for a plain product.

The model stores the portable form (int8 values, or two 4-bit values per byte, low nibble first,
and the scales); the int4 kernel's own layout (its tiles) is inference state, made in a
`PackedLinears` beside the KV cache (by the prefill) and reused by every step, or made afresh for a
product without one (`forward`); a compiled step, which cannot make it inside its graph, reads the
layout the layer keeps (`keep_kernel_layout`, made before compiled steps by
`DALLE.keep_kernel_layouts`).  Either way the same kernel computes the product, so the bits are the same.

`layer_product(x, layer, rows, packs)` is the one weight product of a cached step: a Linear
(through its packed weight where there is one) or a QuantizedLinear, optionally only some of its
output rows (the logits of one vocabulary).
"""
from __future__ import annotations

import functools
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from dalle_pytorch.nn.packed import PackedLinears, pack_weight, packed_linear, packing_available

__all__ = ["QUANTIZE_MODES", "INT4_GROUPS", "QuantizedLinear", "layer_product", "int_mm_exact", "int_mm_pays"]

QUANTIZE_MODES = ("int8", "int4")
INT4_GROUPS = (32, 64, 128)
_Q8 = 127  # int8 range used: symmetric [-127, 127]


def _token_scales(x: Tensor) -> tuple[Tensor, Tensor]:
    """Per-token (last-dimension) symmetric int8 quantization of activations: (int8 values in [-127, 127],
    fp32 scales (rows, 1))."""
    xf = x.float()
    scale = torch.linalg.vector_norm(xf, float("inf"), dim=-1, keepdim=True).clamp_min_(1e-12).div_(_Q8)
    return torch.div(xf, scale).round_().to(torch.int8), scale


#: int4's range search: each group's [min, max] shrunk by these factors, the one of least squared error kept
_INT4_SHRINK = (1.0, 0.95, 0.9, 0.85, 0.8, 0.75)


#: int4's least-squares refits of each group's scale and zero to its codes (each kept only where it lowers the error)
_INT4_REFITS = 4


def _int4_groups(groups: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(out, groups, group) fp32 -> (codes uint8 in [0, 15], scale bf16, zero bf16): asymmetric, the
    range of each group chosen among shrunk [min, max] ranges by least squared error (clipping a few
    outliers buys finer steps for the rest), then the scale and zero refitted to the chosen codes by least
    squares (the line through the (code, weight) pairs) and the codes rounded again, a few times, each
    step kept only where it lowers the group's error (9% less squared error on the demo model's weights);
    the codes are computed with the scale and zero as stored."""
    low, high = groups.amin(-1), groups.amax(-1)
    best = None

    def consider(scale, zero):
        """The codes of (scale, zero); `best` keeps them per group where their error is lower."""
        s, z = scale.float()[..., None], zero.float()[..., None]
        q = torch.round((groups - z) / s).clamp(0, 15)
        err = ((q * s + z - groups) ** 2).sum(-1)
        if best is None:
            return [err, q, scale, zero], q
        keep = err < best[0]
        return [torch.where(keep, err, best[0]), torch.where(keep[..., None], q, best[1]),
                torch.where(keep, scale, best[2]), torch.where(keep, zero, best[3])], q

    for shrink in _INT4_SHRINK:
        mid, half = (low + high) / 2, (high - low) / 2 * shrink
        best, _ = consider(((2 * half) / 15).clamp_min(1e-8).to(torch.bfloat16),
                           (mid - half).to(torch.bfloat16))  # zero: the value of code 0
    q = best[1]
    for _ in range(_INT4_REFITS):
        q_mean, w_mean = q.mean(-1, keepdim=True), groups.mean(-1, keepdim=True)
        var = ((q - q_mean) ** 2).sum(-1)
        slope = ((q - q_mean) * (groups - w_mean)).sum(-1) / var.clamp_min(1e-12)
        scale = torch.where(var > 0, slope, best[2].float()).clamp_min(1e-8)
        zero = w_mean[..., 0] - scale * q_mean[..., 0]
        best, q = consider(scale.to(torch.bfloat16), zero.to(torch.bfloat16))  # the next refit starts from q
    return best[1].to(torch.uint8), best[2], best[3]


@functools.lru_cache(maxsize=None)
def int_mm_exact() -> bool:
    """Whether this CPU's `torch._int_mm` sums exactly (checked once per process on the extreme values: x86
    int8 kernels without VNNI may saturate 16-bit pair sums); if not, int8 products multiply the integer
    values in float32 (exact while a sum stays below 2**24)."""
    try:
        w = torch.full((16, 64), _Q8, dtype=torch.int8)
        w[1::2] = -_Q8
        xq = torch.full((17, 64), _Q8, dtype=torch.int8)
        xq[1::2] = -_Q8
        return torch.equal(torch._int_mm(xq, w.t()).double(), xq.double() @ w.double().t())
    except RuntimeError:
        return False


@functools.lru_cache(maxsize=None)
def int_mm_pays() -> bool:
    """Whether int8 products take `torch._int_mm`: on CPUs with VNNI (the int8 dot-product instructions its
    fast kernel needs; where PyTorch cannot tell, assumed), not on an AVX2-only CPU, where it is a reference
    loop (docs/benchmarks.md) and the integer sums are computed in float instead (`_integer_sums_in_float`)."""
    check = getattr(torch.cpu, "_is_vnni_supported", None)
    return check is None or bool(check())


#: input channels per float32 product of int8 values: 127 * 127 * 1024 < 2**24, so every partial sum is an
#: exactly represented integer, whatever the kernel's order of summation
_EXACT_CHANNELS = 1024


def _integer_sums_in_float(q: Tensor, codes: Tensor, make_pack, packs: Optional[PackedLinears]) -> Tensor:
    """q (rows, in) int8 @ codes (out, in).T int8 as float32, exact: float32 products of the integer values,
    _EXACT_CHANNELS input channels at a time (each an exact integer sum), added in float64 (exact) and
    rounded once, as `_int_mm`'s int32 sums are.  On the CPU with `packs`, through the packed float kernel
    over float copies of the codes made once (`make_pack`, kept by `packs`)."""
    qf = q.float()
    spans = [(s, min(s + _EXACT_CHANNELS, q.shape[1])) for s in range(0, q.shape[1], _EXACT_CHANNELS)]
    if packs is not None and packing_available(q.device, torch.float32):
        weights = make_pack(lambda: tuple(pack_weight(codes[:, a:b].float(), packs.batch) for a, b in spans))
        parts = [packed_linear(qf[:, a:b].contiguous(), w) for (a, b), w in zip(spans, weights)]
    else:
        parts = [F.linear(qf[:, a:b], codes[:, a:b].float()) for a, b in spans]
    return parts[0] if len(parts) == 1 else torch.stack(parts).double().sum(0).float()


def _all(rows: slice | None) -> slice:
    """The output rows a product selects: `rows`, or all of them."""
    return slice(None) if rows is None else rows


def _span(rows: slice | None) -> Optional[tuple]:
    """A hashable key of an output-rows selection."""
    return None if rows is None else (rows.start, rows.stop, rows.step)


def _int4_available(device: torch.device) -> bool:
    return device.type == "cpu" and hasattr(torch.ops.aten, "_weight_int4pack_mm_for_cpu")


class QuantizedLinear(nn.Module):
    """A Linear whose weight is int8 (per output channel) or int4 (grouped); see the module docstring.

    Buffers (saved with the model): int8: `qweight` int8 (out, in), `scale` fp32 (out,); int4:
    `qweight` uint8 (out, in / 2), `scale` and `zero` bfloat16 (out, in / group); `bias` (out,) in the
    Linear's dtype, or absent.  For inference only: no gradient flows through a quantized product.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, mode: str = "int8",
                 group: int = 64, dtype: torch.dtype = torch.float32, device=None) -> None:
        super().__init__()
        if mode not in QUANTIZE_MODES:
            raise ValueError(f"quantize mode must be one of {', '.join(QUANTIZE_MODES)}, got {mode!r}")
        if mode == "int4" and group not in INT4_GROUPS:
            raise ValueError(f"int4 group must be one of {', '.join(map(str, INT4_GROUPS))}, got {group!r}")
        if mode == "int4" and in_features % group:
            raise ValueError(f"int4 needs in_features ({in_features}) divisible by the group ({group})")
        self.in_features, self.out_features, self.mode, self.group = in_features, out_features, mode, group
        if mode == "int8":
            self.register_buffer("qweight", torch.zeros(out_features, in_features, dtype=torch.int8, device=device))
            self.register_buffer("scale", torch.ones(out_features, dtype=torch.float32, device=device))
        else:
            groups = in_features // group
            self.register_buffer("qweight", torch.zeros(out_features, in_features // 2, dtype=torch.uint8, device=device))
            self.register_buffer("scale", torch.ones(out_features, groups, dtype=torch.bfloat16, device=device))
            self.register_buffer("zero", torch.zeros(out_features, groups, dtype=torch.bfloat16, device=device))
        self.register_buffer("bias", torch.zeros(out_features, dtype=dtype, device=device) if bias else None)
        # int4: the kernel's layout of some output rows, kept for compiled steps (`keep_kernel_layout`; not saved)
        self._layouts: dict = {}

    @classmethod
    @torch.no_grad()
    def from_linear(cls, linear: nn.Linear, mode: str, group: int = 64) -> "QuantizedLinear":
        w = linear.weight.detach()
        layer = cls(linear.in_features, linear.out_features, linear.bias is not None, mode, group,
                    dtype=w.dtype, device=w.device)
        w = w.float()
        if mode == "int8":
            scale = w.abs().amax(1).clamp_min(1e-12) / _Q8
            layer.qweight.copy_(torch.round(w / scale[:, None]).clamp(-_Q8, _Q8).to(torch.int8))
            layer.scale.copy_(scale)
        else:
            q, scale, zero = _int4_groups(w.view(w.shape[0], -1, group))
            q = q.view(w.shape)
            layer.qweight.copy_(q[:, 0::2] | (q[:, 1::2] << 4))
            layer.scale.copy_(scale)
            layer.zero.copy_(zero)
        if linear.bias is not None:
            layer.bias.copy_(linear.bias.detach())
        return layer

    def keep_kernel_layout(self, rows: slice | None = None) -> None:
        """int4 on the CPU: make the kernel's layout of output `rows` now and keep it on the layer, so that a
        compiled step (which cannot make it inside its graph) multiplies with the int4 kernel instead of a
        dequantized weight; dropped when the layer moves or loads weights. int8 needs none."""
        if self.mode == "int4" and _int4_available(self.qweight.device):
            with torch.inference_mode():
                self._layouts[_span(rows)] = self._kernel_pack(rows)

    def _load_from_state_dict(self, *args, **kwargs):
        self._layouts = {}
        super()._load_from_state_dict(*args, **kwargs)

    def _apply(self, fn, recurse=True):
        self._layouts = {}
        # model.to(dtype) converts floating buffers: the scales keep their own dtype (moves still move them)
        pinned = {name: getattr(self, name).dtype for name in ("scale", "zero") if getattr(self, name, None) is not None}
        super()._apply(fn, recurse)
        for name, dtype in pinned.items():
            if getattr(self, name).dtype != dtype:
                setattr(self, name, getattr(self, name).to(dtype))
        return self

    def extra_repr(self) -> str:
        group = f", group={self.group}" if self.mode == "int4" else ""
        return f"in_features={self.in_features}, out_features={self.out_features}, mode={self.mode}{group}, bias={self.bias is not None}"

    # -- the weights, whole or some output rows -----------------------------------------------------

    def codes(self, rows: slice | None = None) -> Tensor:
        """The integer weight values (out', in): int8 in [-127, 127], or int4 codes in [0, 15] (as int32)."""
        q = self.qweight[_all(rows)]
        if self.mode == "int8":
            return q
        return torch.stack((q & 15, q >> 4), dim=-1).view(q.shape[0], -1).to(torch.int32)

    def dequantized(self, rows: slice | None = None, dtype: torch.dtype = torch.float32) -> Tensor:
        """The weight the quantized values stand for (out', in)."""
        q = self.codes(rows).float()
        scale = self.scale[_all(rows)]
        if self.mode == "int8":
            return (q * scale[:, None]).to(dtype)
        zero = self.zero[_all(rows)]
        q = q.view(q.shape[0], -1, self.group)
        return (q * scale.float()[..., None] + zero.float()[..., None]).view(q.shape[0], -1).to(dtype)

    def _int4_tables(self, rows: slice | None) -> Tensor:
        """The int4 kernel's scales and zeros (in / group, out', 2), bf16; its zero is the value of code 8."""
        scale, zero = self.scale[_all(rows)], self.zero[_all(rows)]
        return torch.stack((scale, (zero.float() + 8 * scale.float()).to(torch.bfloat16)), -1).transpose(0, 1).contiguous()

    def _kernel_pack(self, rows: slice | None):
        """The int4 kernel's layout of output `rows` (int8 needs none: its kernel reads the weight as stored)."""
        # the kernel takes output rows in multiples of 16: pad with zero rows (their outputs are dropped)
        codes, tables = self.codes(rows), self._int4_tables(rows)
        pad = -codes.shape[0] % 16
        if pad:
            codes = torch.cat((codes, codes.new_zeros(pad, codes.shape[1])))
            tables = torch.cat((tables, tables.new_zeros(tables.shape[0], pad, 2)), 1)
        return torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes.contiguous(), 1), tables

    # -- the product --------------------------------------------------------------------------------

    def product(self, x: Tensor, rows: slice | None = None, packs: Optional[PackedLinears] = None) -> Tensor:
        """x @ W[rows].T + bias[rows] with the quantized weight; the kernel's layout from `packs` (made
        there once) or made for this product."""
        if x.requires_grad and torch.is_grad_enabled():
            raise RuntimeError("a quantized layer is for inference: no gradient flows through it "
                               "(train the float model, quantize it after)")
        bias = None if self.bias is None else self.bias[_all(rows)]
        lead, k = x.shape[:-1], x.shape[-1]
        x2 = x.reshape(-1, k)
        compiling = torch.compiler.is_compiling()
        if self.mode == "int8":
            q, xs = _token_scales(x2)
            codes = self.codes(rows)
            # (a compiled step does not run the checks, a graph break: the eager prefill before it has)
            if x.device.type == "cpu" and (compiling or (int_mm_pays() and int_mm_exact())):
                acc = torch._int_mm(q, codes.t()).float()  # an exact int32 sum, whatever the kernel's order
            else:  # no fast (or exact) integer kernel: the integer values multiplied in float, as exactly
                acc = _integer_sums_in_float(q, codes, lambda make: packs.pack(self.qweight, rows, make), packs)
            out = acc.mul_(xs * self.scale[_all(rows)])  # fp32: the bias is added in fp32 too
        elif _int4_available(x.device) and (not compiling or _span(rows) in self._layouts):
            if compiling:  # the layout kept by keep_kernel_layout (a graph input)
                packed, tables = self._layouts[_span(rows)]
            else:
                packed, tables = (self._kernel_pack(rows) if packs is None
                                  else packs.pack(self.qweight, rows, lambda: self._kernel_pack(rows)))
            out = torch.ops.aten._weight_int4pack_mm_for_cpu(x2.to(torch.bfloat16).contiguous(), packed, self.group, tables)
            out = out[:, : len(range(*_all(rows).indices(self.out_features)))].to(x.dtype)
        else:
            out = F.linear(x2.to(torch.bfloat16), self.dequantized(rows, torch.bfloat16)).to(x.dtype)
        if bias is not None:
            out = out + bias.to(out.dtype)
        return out.to(x.dtype).view(*lead, out.shape[-1])

    def forward(self, x: Tensor) -> Tensor:
        return self.product(x)


def layer_product(x: Tensor, layer: nn.Module, rows: slice | None = None,
                  packs: Optional[PackedLinears] = None) -> Tensor:
    """layer(x) restricted to output `rows`, for a Linear or a QuantizedLinear: the one weight product of
    a cached step (through `packs` where given)."""
    if isinstance(layer, QuantizedLinear):
        return layer.product(x, rows, packs)
    weight = layer.weight if rows is None else layer.weight[rows]
    bias = layer.bias if rows is None or layer.bias is None else layer.bias[rows]
    if packs is None:
        return F.linear(x, weight, bias)
    return packs.linear(x, weight, bias)
