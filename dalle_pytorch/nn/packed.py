"""The decode step's weight products on the CPU: weights prepacked once for oneDNN's kernel, where faster.

A cached decode step multiplies a few rows (the batch) by every weight matrix of the model. For
such thin products PyTorch's default CPU path (`F.linear` -> the BLAS sgemm) can be far from the
machine's memory floor, and oneDNN's kernel over the same weights reordered once into its blocked
layout several times faster. `PackedLinears` keeps those reordered copies for one generation, made
lazily at each weight's first product, and runs the products through them.

But each oneDNN call costs a fixed overhead that small weights do not earn back, and which kernel
wins depends on the CPU as much as on the shape (docs/benchmarks.md). With `choices` (a
`KernelChoices`: the default of `DALLE.setup_cache`, `Pipeline` and the server) a short timing at
the first product of each weight shape picks, once per process, the packed kernel or
`rowwise_linear` (one batched product of single rows: no oneDNN call, no pack, but the weight read
once per row), the latter only where it wins at every reference batch. F.linear itself is
not a candidate: its rounding of a row depends on the row count and the row's position in the batch.

Properties the decode path relies on (tested in tests/nn/test_packed.py):
- the same function as `F.linear` up to float rounding, for float32 and bfloat16;
- batch-invariant: a row's result does not depend on the other rows of the batch or its place among
  them (the continuous batching server's rows belong to different requests and move up when others
  leave), with either kernel; a shape's kernel does not depend on the batch;
- no autograd: with gradients enabled, or inside torch.compile (whose graph multiplies with
  inductor's own kernels), the product is plain `F.linear`;
- a weight modified in place after it was packed (its version counter moves) is packed again
  (a weight made under torch.inference_mode has no version counter: it is packed once).

It is inference state, like the KV cache it lives beside (`InferenceCache.linears`): made per
generation by `DALLE.setup_cache` and dropped with it, or made once by its caller and handed to
every generation (`setup_cache(pack_weights=packs)`: the `Pipeline` keeps one, so its batches pack
the weights once); the model's parameters are never changed.  A pack is used only for the tensor it
was made from (the same base tensor, alive, at the same version): a weight replaced by a new tensor,
even at the same address, is packed again.  The measured choices are kept per process
(`KernelChoices.for_process`): one timing per weight shape, dtype and thread count.
"""
from __future__ import annotations

import threading
import time
import weakref
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["KernelChoices", "PackedLinears", "REFERENCE_BATCHES", "ROWWISE_MARGIN", "pack_weight", "packed_kernel_runs",
           "packed_linear", "packing_available", "rowwise_linear", "time_pair"]


def packing_available(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether `PackedLinears` can run products of this device and dtype: the CPU, float32 or
    bfloat16, and a PyTorch built with oneDNN that has the (inductor's) packed-linear operators."""
    return (torch.device(device).type == "cpu" and dtype in (torch.float32, torch.bfloat16)
            and torch.backends.mkldnn.is_available()
            and hasattr(torch.ops.mkldnn, "_reorder_linear_weight") and hasattr(torch.ops.mkldnn, "_linear_pointwise"))


def packed_kernel_runs(dtype: torch.dtype) -> bool:
    """Whether oneDNN's packed kernel runs `dtype` on this CPU: float32 everywhere; bfloat16 only where
    oneDNN has bf16 kernels (AVX-512 BW/VL/DQ or AVX-NE-CONVERT: not on an AVX2-only CPU, where packing a
    bf16 weight raises).  Where it does not, `PackedLinears` multiplies with `rowwise_linear`, which is
    batch-invariant too."""
    if dtype == torch.float32:
        return True
    check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    return dtype == torch.bfloat16 and check is not None and bool(check())


def pack_weight(weight: Tensor, batch: int) -> Tensor:
    """`weight` (out, in) reordered into oneDNN's blocked layout for products of `batch` rows."""
    return torch.ops.mkldnn._reorder_linear_weight(weight.contiguous(), batch)


def packed_linear(x: Tensor, packed: Tensor, bias: Optional[Tensor] = None) -> Tensor:
    """F.linear(x, weight, bias) through `pack_weight(weight, ...)`."""
    return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")


#: a shape leaves the packed kernel (today's, the fixed choice of `pack_weights=True`) for the row-wise
#: one only where that is at least this much faster at every batch of REFERENCE_BATCHES: a near tie keeps
#: the packed kernel, so a choice that timing noise could flip between processes is rare
ROWWISE_MARGIN = 1.25
#: the batches (rows) both kernels are timed at: fixed, not the caller's, so that every generation and
#: server of a process, whatever its batch, multiplies a weight with the same kernel (a row's rounding
#: then does not depend on the batch).  The row-wise kernel reads the weight once per row, so it wins
#: only at small batches, for small weights (docs/benchmarks.md)
REFERENCE_BATCHES = (1, 8)


def rowwise_linear(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None) -> Tensor:
    """F.linear(x, weight, bias) as one batched product of single rows (x's rows each times the weight):
    each row's rounding is that of a one-row product, whatever the other rows and its place among them
    (F.linear's BLAS picks its blocking, and with it a row's rounding, by the row count and the row's
    position).  Cheaper than a oneDNN call for small weights at small batches."""
    rows = x.reshape(-1, 1, x.shape[-1])
    n, (o, i) = rows.shape[0], weight.shape
    wt = weight.t().expand(n, i, o)
    out = torch.bmm(rows, wt) if bias is None else torch.baddbmm(bias.expand(n, 1, o), rows, wt)
    return out.reshape(*x.shape[:-1], o)


def time_pair(first: Callable[[], Tensor], second: Callable[[], Tensor], rounds: int = 5,
              calls: int = 3) -> tuple[float, float]:
    """Best seconds per call of `first()` and of `second()`, timed in alternating rounds after a warm-up."""
    for fn in (first, second, first, second):
        fn()
    best = [float("inf"), float("inf")]
    for _ in range(rounds):
        for i, fn in enumerate((first, second)):
            start = time.perf_counter()
            for _ in range(calls):
                fn()
            best[i] = min(best[i], (time.perf_counter() - start) / calls)
    return best[0], best[1]


def _packed_product(x: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Callable[[], Tensor]:
    """x's product through `weight` packed for x's rows (packed at the first call, kept by the closure)."""
    pack = []

    def run() -> Tensor:
        if not pack:
            pack.append(pack_weight(weight, x.shape[0]))
        return packed_linear(x, pack[0], bias)
    return run


class KernelChoices:
    """Which batch-invariant kernel the products of each weight shape take: oneDNN's packed kernel, or
    `rowwise_linear` where a timing at first use found it `ROWWISE_MARGIN` faster at every batch of
    `REFERENCE_BATCHES`.

    Keyed by (weight shape, dtype, torch threads), not by batch: every generation and the server of a
    process multiply a weight with the same kernel, so a lone server request decodes bit for bit as
    `Pipeline.generate` does.  Each key is timed once, on constant inputs (no random numbers drawn).
    timer(packed, rowwise) -> (seconds, seconds), called once per reference batch: `time_pair` unless
    given (tests give their own).  Thread-safe.
    """

    _process: Optional["KernelChoices"] = None
    _process_lock = threading.Lock()

    def __init__(self, timer: Optional[Callable] = None) -> None:
        self.timer = timer or time_pair
        self._chosen: dict[tuple, tuple[bool, list]] = {}
        self._lock = threading.Lock()

    @classmethod
    def for_process(cls) -> "KernelChoices":
        """The choices this process shares (made at first use, not at import)."""
        with cls._process_lock:
            if cls._process is None:
                cls._process = cls()
            return cls._process

    def packed(self, weight: Tensor, bias: Optional[Tensor] = None) -> bool:
        """Whether `weight`'s products take the packed kernel (timed now if its key is new; the timing's
        packs are made for each reference batch, so the caller's batch plays no part, and then dropped)."""
        key = (tuple(weight.shape), weight.dtype, torch.get_num_threads())
        with self._lock:
            if key in self._chosen:
                return self._chosen[key][0]
            times = []
            if not packed_kernel_runs(weight.dtype):  # nothing to time: the row-wise kernel
                self._chosen[key] = (False, times)
                return False
            for batch in REFERENCE_BATCHES:
                x = torch.full((batch, weight.shape[1]), 0.5, dtype=weight.dtype, device=weight.device)
                times.append(self.timer(_packed_product(x, weight, bias), lambda: rowwise_linear(x, weight, bias)))
            use = not all(t_packed >= ROWWISE_MARGIN * t_rowwise for t_packed, t_rowwise in times)
            self._chosen[key] = (use, times)
            return use

    def table(self) -> list[dict]:
        """What was measured: one dict per key (shape, dtype, threads, packed_us and rowwise_us: per
        reference batch, packed: the choice)."""
        with self._lock:
            return [{"shape": k[0], "dtype": str(k[1]).replace("torch.", ""), "threads": k[2],
                     "packed_us": [1e6 * t[0] for t in v[1]], "rowwise_us": [1e6 * t[1] for t in v[1]],
                     "packed": v[0]}
                    for k, v in self._chosen.items()]


class PackedLinears:
    """`linear(x, weight, bias)` == `F.linear(x, weight, bias)`, through weights packed for `batch` rows.

    batch: the rows the products will have (oneDNN picks its blocking for it; any row count works).
    choices: None packs every float weight; a `KernelChoices` only those of the shapes it finds faster
    packed (the others' products are `rowwise_linear`'s).  Weights of a dtype the packed kernel does not
    run on this CPU (`packed_kernel_runs`: bf16 without AVX-512) take `rowwise_linear` either way.  Holds
    one packed copy of every weight it packed (as much memory again as those weights) until it is dropped.
    """

    @classmethod
    def measured(cls, batch: int) -> "PackedLinears":
        """The default decode kernels: each weight shape's as this process measured it (`KernelChoices`)."""
        return cls(batch, KernelChoices.for_process())

    def __init__(self, batch: int, choices: Optional[KernelChoices] = None) -> None:
        if int(batch) < 1:
            raise ValueError(f"batch must be a positive integer, got {batch}")
        self.batch = int(batch)
        self.choices = choices
        self._use: dict[tuple, bool] = {}  # (shape, dtype) -> packed kernel, fixed for this object's life
        # weight -> (its version when packed, packed, a weak reference to the tensor the weight views)
        self._packs: dict[tuple, tuple[int, Tensor, weakref.ref]] = {}
        self._floats = True  # False: float products are plain F.linear (`quantized_only`)

    def quantized_only(self) -> "PackedLinears":
        """The same packs for quantized layers' kernels (`pack`), and plain F.linear for float weights: a
        prefill's products (whose float products are F.linear's, see DALLE.prefill; a quantized layer's
        kernel is the same with or without a pack, so its pack is reused)."""
        view = PackedLinears(self.batch, self.choices)
        view._packs, view._use, view._floats = self._packs, self._use, False
        return view

    def linear(self, x: Tensor, weight: Tensor, bias: Optional[Tensor] = None) -> Tensor:
        if (not self._floats or torch.is_grad_enabled() or torch.compiler.is_compiling() or x.dtype != weight.dtype
                or (bias is not None and bias.dtype != x.dtype) or x.device.type != "cpu" or weight.dim() != 2):
            return F.linear(x, weight, bias)
        # a view (the logit rows of DALLE.decode_step) is the same weight as long as it starts at the
        # same address with the same shape and strides; its version counter moves with every in-place change
        key = (weight.data_ptr(), tuple(weight.shape), weight.stride(), weight.dtype)
        kind = (tuple(weight.shape), weight.dtype)
        if kind not in self._use:  # a dict lookup per product: the choices' lock is taken once per shape
            self._use[kind] = packed_kernel_runs(weight.dtype) and (self.choices is None or self.choices.packed(weight, bias))
        if not self._use[kind]:
            return rowwise_linear(x, weight, bias)
        return packed_linear(x, self._get(key, weight, lambda: pack_weight(weight, self.batch)), bias)

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
