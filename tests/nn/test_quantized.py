"""Quantized weight products (dalle_pytorch.nn.quantized): the function they stand for, exact integer sums,
batch-invariant, packed once, and an error a wrong scale or a transposed group would not pass."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dalle_pytorch.nn.packed import PackedLinears
from dalle_pytorch.nn.quantized import QuantizedLinear, int_mm_exact, int_mm_pays, layer_product

# relative error of a product (max |y - y_fp32| / max |y_fp32|) for Gaussian weights and activations:
# int8 (per-channel weights, per-token activations) is well under 2%, int4 (grouped) under 15%
TOLERANCE = {"int8": 0.02, "int4": 0.15}


def _linear(n=64, k=128, seed=0, bias=True):
    torch.manual_seed(seed)
    layer = nn.Linear(k, n, bias=bias)
    layer.weight.data = torch.randn(n, k) / k**0.5
    return layer


def _rel(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.mark.parametrize("mode,group", [("int8", 64), ("int4", 32), ("int4", 64), ("int4", 128)])
def test_the_product_is_the_linear_within_its_quantization_error(mode, group):
    lin = _linear()
    q = QuantizedLinear.from_linear(lin, mode, group)
    x = torch.randn(5, 3, 128)
    with torch.no_grad():
        ref, got = lin(x), q(x)
        assert got.shape == ref.shape and got.dtype == ref.dtype
        assert _rel(got, ref) < TOLERANCE[mode]
        # the stored values stand for the weight: dequantized weight close to the original
        assert _rel(q.dequantized(), lin.weight) < (0.01 if mode == "int8" else 0.1)


def test_int8_sums_exactly():
    """The int8 product is the integer product of the quantized values (summed exactly), scaled."""
    lin = _linear(bias=False)
    q = QuantizedLinear.from_linear(lin, "int8")
    x = torch.randn(7, 128)
    xs = x.abs().amax(-1, keepdim=True) / 127
    xq = torch.round(x / xs)
    acc = (xq.double() @ q.codes().double().t())  # exact in float64
    expected = acc.float() * (xs * q.scale)
    assert torch.equal(q(x), expected)


def test_a_wrong_scale_or_a_transposed_group_is_caught():
    """The controls: the same tolerance fails for a scale off by 10% (int8) and for two int4 groups swapped."""
    lin = _linear()
    x = torch.randn(16, 128)
    with torch.no_grad():
        ref = lin(x)
        q8 = QuantizedLinear.from_linear(lin, "int8")
        q8.scale.mul_(1.1)
        assert _rel(q8(x), ref) > TOLERANCE["int8"]
        q4 = QuantizedLinear.from_linear(lin, "int4", 32)
        q4.scale.copy_(q4.scale[:, [1, 0, 2, 3]])
        q4.zero.copy_(q4.zero[:, [1, 0, 2, 3]])
        assert _rel(q4(x), ref) > TOLERANCE["int4"]


@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_a_row_does_not_depend_on_its_batch_and_packs_are_reused(mode):
    """Batch-invariant (the server's rows belong to different requests), with and without packs; the
    kernel layout is made once per weight (and rows) and reused; packed and unpacked give the same bits."""
    lin = _linear()
    q = QuantizedLinear.from_linear(lin, mode, 32)
    x = torch.randn(9, 128)
    packs = PackedLinears(4)
    with torch.no_grad():
        whole = layer_product(x, q, packs=packs)
        made = len(packs)
        rows = torch.cat([layer_product(x[i : i + 1], q, packs=packs) for i in range(9)])
        # int8's integer kernel reads the weight as stored (without VNNI its float copy is packed)
        reads_as_stored = mode == "int8" and int_mm_pays()
        assert len(packs) == made == (0 if reads_as_stored else 1)
        assert torch.equal(whole, rows)
        assert torch.equal(whole, q(x))  # no packs: the same kernel, made for this product
        top = layer_product(x, q, slice(16, 48), packs)
        assert len(packs) == (0 if reads_as_stored else 2) and torch.equal(top, whole[:, 16:48])


def test_int8_kernel_check_and_fallback_agree(monkeypatch):
    """torch._int_mm is used only where it sums exactly (checked once); the float product of the integer
    values, the fallback, gives the same bits while the sums stay below 2**24."""
    import dalle_pytorch.nn.quantized as quantized

    lin = _linear()
    q = QuantizedLinear.from_linear(lin, "int8")
    x = torch.randn(3, 128)
    with torch.no_grad():
        fast = q(x)
        monkeypatch.setattr(quantized, "int_mm_exact", lambda: False)
        assert torch.equal(q(x), fast)
    assert int_mm_exact() in (True, False)


@pytest.mark.parametrize("inputs", [128, 2304])
def test_int8_sums_in_float_are_the_integer_kernels_bits(monkeypatch, inputs):
    """Without VNNI, int8 products are float32 products of the integer values, in chunks of 1024 input
    channels (each sum exact) added in float64: the bits of torch._int_mm's int32 sums, packed or not,
    batch-invariant, on extreme values too (every product 127 * 127: the largest sums)."""
    import dalle_pytorch.nn.quantized as quantized

    lin = nn.Linear(inputs, 48)
    q = QuantizedLinear.from_linear(lin, "int8")
    q.qweight.fill_(127)
    q.qweight[1::2] = -127
    x = torch.cat((torch.full((1, inputs), 3.0), torch.randn(6, inputs)))
    with torch.no_grad():
        # the integer kernel's exact sums, as a float64 reference where torch._int_mm is not exact
        xq, xs = quantized._token_scales(x)
        ref = (xq.double() @ q.qweight.double().t()).float().mul_(xs * q.scale) + q.bias
        monkeypatch.setattr(quantized, "int_mm_pays", lambda: False)
        packs = PackedLinears(7)
        out = layer_product(x, q, packs=packs)
        assert len(packs) == 1 and torch.equal(out, ref) and torch.equal(q(x), ref)
        assert torch.equal(torch.cat([layer_product(x[i:i + 1], q, packs=packs) for i in range(7)]), ref)
        assert len(packs) == 1  # the float copy of the codes is made once
        if int_mm_exact():
            monkeypatch.setattr(quantized, "int_mm_pays", lambda: True)
            assert torch.equal(layer_product(x, q, packs=PackedLinears(7)), ref)


def test_int4_refits_lower_the_error_group_by_group(monkeypatch):
    """The least-squares refits of each group's scale and zero never make a group worse than the best
    shrunk range, and lower the squared error overall (weights with outliers, as trained ones have)."""
    import dalle_pytorch.nn.quantized as quantized

    g = torch.Generator().manual_seed(5)
    groups = torch.randn(64, 4, 32, generator=g) * torch.rand(64, 4, 1, generator=g)
    groups[:, :, 0] *= 4  # one outlier per group

    def error(q, scale, zero):
        return ((q.float() * scale.float()[..., None] + zero.float()[..., None] - groups) ** 2).sum(-1)

    refitted = error(*quantized._int4_groups(groups))
    monkeypatch.setattr(quantized, "_INT4_REFITS", 0)
    plain = error(*quantized._int4_groups(groups))
    assert (refitted <= plain).all() and refitted.sum() < 0.97 * plain.sum()


def test_dtypes_buffers_and_errors():
    lin = _linear()
    q = QuantizedLinear.from_linear(lin, "int8")
    q4 = QuantizedLinear.from_linear(lin, "int4", 64)
    assert q.qweight.dtype == torch.int8 and q.scale.dtype == torch.float32
    assert q4.qweight.shape == (64, 64) and q4.qweight.dtype == torch.uint8 and q4.scale.shape == (64, 2)
    assert set(q.state_dict()) == {"qweight", "scale", "bias"} and set(q4.state_dict()) == {"qweight", "scale", "zero", "bias"}
    q.to(torch.bfloat16)  # a model cast to bf16: the bias follows, the scales keep their dtype
    assert q.bias.dtype == torch.bfloat16 and q.scale.dtype == torch.float32
    with torch.no_grad():
        assert q(torch.randn(2, 128, dtype=torch.bfloat16)).dtype == torch.bfloat16
    with pytest.raises(RuntimeError, match="for inference"):
        q4(torch.randn(2, 128, requires_grad=True))
    with pytest.raises(ValueError, match="quantize mode"):
        QuantizedLinear(8, 8, mode="int3")
    with pytest.raises(ValueError, match="group"):
        QuantizedLinear(128, 8, mode="int4", group=48)
    with pytest.raises(ValueError, match="divisible"):
        QuantizedLinear(96, 8, mode="int4", group=64)


def test_dequantized_fallback_is_the_kernel_function(monkeypatch):
    """Where the int4 kernel does not apply (another device, compile),
    the product is the dequantized weight's: the same function up to bf16 rounding."""
    import dalle_pytorch.nn.quantized as quantized

    lin = _linear(n=40)  # the kernel takes rows in multiples of 16: 40 are padded to 48
    q = QuantizedLinear.from_linear(lin, "int4", 32)
    x = torch.randn(4, 128)
    with torch.no_grad():
        kernel = q(x)
        monkeypatch.setattr(quantized, "_int4_available", lambda device: False)
        plain = q(x)
        assert _rel(plain, kernel) < 0.01
        assert torch.allclose(plain, F.linear(x.bfloat16(), q.dequantized(dtype=torch.bfloat16)).float() + q.bias)
