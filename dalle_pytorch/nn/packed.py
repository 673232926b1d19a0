"""The decode step's weight products on the CPU: weights prepacked once for oneDNN's kernel.

A cached decode step multiplies a few rows (the batch) by every weight matrix of the model. For
such thin products PyTorch's default CPU path (`F.linear` -> the BLAS sgemm) is far from the
machine's memory floor, and oneDNN's kernel over the same weights reordered once into its blocked
layout is several times faster at small batches (measured in docs/benchmarks.md). `PackedLinears`
keeps those reordered copies for one generation, made lazily at each weight's first product, and
runs the products through them.

Properties the decode path relies on (tested in tests/nn/test_packed.py):
- the same function as `F.linear` up to float rounding, for float32 and bfloat16;
- batch-invariant: a row's result does not depend on the other rows of the batch (the continuous
  batching server's rows belong to different requests);
- no autograd: with gradients enabled, or inside torch.compile (whose graph multiplies with
  inductor's own kernels), the product is plain `F.linear`;
- a weight modified in place after it was packed (its version counter moves) is packed again
  (a weight made under torch.inference_mode has no version counter: it is packed once).

It is inference state, like the KV cache it lives beside (`InferenceCache.linears`): made per
generation by `DALLE.setup_cache` and dropped with it, or made once by its caller and handed to
every generation (`setup_cache(pack_weights=packs)`: the `Pipeline` keeps one, so its batches pack
the weights once); the model's parameters are never changed.  A pack is used only for the tensor it
was made from (the same base tensor, alive, at the same version): a weight replaced by a new tensor,
even at the same address, is packed again.
"""
from __future__ import annotations

import weakref
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["PackedLinears", "packing_available"]


def packing_available(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether `PackedLinears` can run products of this device and dtype: the CPU, float32 or
    bfloat16, and a PyTorch built with oneDNN that has the (inductor's) packed-linear operators."""
    return (torch.device(device).type == "cpu" and dtype in (torch.float32, torch.bfloat16)
            and torch.backends.mkldnn.is_available()
            and hasattr(torch.ops.mkldnn, "_reorder_linear_weight") and hasattr(torch.ops.mkldnn, "_linear_pointwise"))


class PackedLinears:
    """`linear(x, weight, bias)` == `F.linear(x, weight, bias)`, through weights packed for `batch` rows.

    batch: the rows the products will have (oneDNN picks its blocking for it; any row count works).
    Holds one packed copy of every weight it has multiplied (as much memory again as those weights)
    until it is dropped.
    """

    def __init__(self, batch: int) -> None:
        if int(batch) < 1:
            raise ValueError(f"batch must be a positive integer, got {batch}")
        self.batch = int(batch)
        # weight -> (its version when packed, packed, a weak reference to the tensor the weight views)
        self._packs: dict[tuple, tuple[int, Tensor, weakref.ref]] = {}
        self._floats = True  # False: float products are plain F.linear (`quantized_only`)

    def quantized_only(self) -> "PackedLinears":
        """The same packs for quantized layers' kernels (`pack`), and plain F.linear for float weights: a
        prefill's products (whose float products are F.linear's, see DALLE.prefill; a quantized layer's
        kernel is the same with or without a pack, so its pack is reused)."""
        view = PackedLinears(self.batch)
        view._packs, view._floats = self._packs, False
        return view

    def linear(self, x: Tensor, weight: Tensor, bias: Optional[Tensor] = None) -> Tensor:
        if (not self._floats or torch.is_grad_enabled() or torch.compiler.is_compiling() or x.dtype != weight.dtype
                or (bias is not None and bias.dtype != x.dtype) or x.device.type != "cpu" or weight.dim() != 2):
            return F.linear(x, weight, bias)
        # a view (the logit rows of DALLE.decode_step) is the same weight as long as it starts at the
        # same address with the same shape and strides; its version counter moves with every in-place change
        key = (weight.data_ptr(), tuple(weight.shape), weight.stride(), weight.dtype)
        packed = self._get(key, weight, lambda: torch.ops.mkldnn._reorder_linear_weight(weight.contiguous(), self.batch))
        return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")

    def pack(self, weight: Tensor, rows: Optional[slice], make):
        """The kernel layout `make()` builds for output `rows` (None: all) of `weight`, made once and kept
        (a quantized layer's kernel packs, see quantized.py); made again if `weight` changed or is another tensor."""
        span = None if rows is None else (rows.start, rows.stop, rows.step)
        return self._get((weight.data_ptr(), tuple(weight.shape), weight.dtype, span), weight, make)

    def _get(self, key: tuple, weight: Tensor, make):
        # (a weight made under inference_mode has no version counter: it is packed once)
        current = -1 if weight.is_inference() else weight._version
        base = weight if weight._base is None else weight._base
        version, packed, owner = self._packs.get(key, (None, None, None))
        if version != current or owner() is not base:
            packed = make()
            self._packs[key] = (current, packed, weakref.ref(base))
        return packed

    def __len__(self) -> int:
        return len(self._packs)

    def nbytes(self) -> int:
        """Bytes of the packed copies (about those of the weights packed so far)."""
        parts = [p for _, pack, _ in self._packs.values() for p in (pack if isinstance(pack, tuple) else (pack,))]
        return sum(p.numel() * p.element_size() for p in parts)
