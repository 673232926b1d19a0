"""Quantized models (dalle_pytorch.quantize): which layers, cached == uncached, per-layer error against
fp32 (with controls), batch-invariant sampling, saved and loaded with their integer weights."""
import copy

import pytest
import torch
from torch import nn

from dalle_pytorch import load_checkpoint, quantize, save
from dalle_pytorch.errors import CheckpointError
from dalle_pytorch.models.quantize import quantization_of
from dalle_pytorch.nn.quantized import QuantizedLinear
from tests.helpers import random_text, tiny_dalle

MODES = [("int8", None), ("int4", 32)]


def _tiny(attn_type="full", **kw):
    # dim 64, image vocabulary 64 (the int4 kernel takes output rows in multiples of 16)
    return tiny_dalle(attn_type, dim=64, dim_head=32, **kw).eval()


@pytest.mark.parametrize("mode,group", MODES)
def test_every_linear_of_the_transformer_and_the_logits_is_quantized(mode, group):
    model = quantize(_tiny(shift_tokens=True, rotary_emb=True), mode, group)
    assert not any(isinstance(m, nn.Linear) for m in model.transformer.modules())
    assert isinstance(model.to_logits[1], QuantizedLinear)
    assert isinstance(model.image_emb, nn.Embedding) and all(isinstance(p, nn.Parameter) for p in model.vae.parameters())
    assert quantization_of(model) == ({"mode": "int8"} if mode == "int8" else {"mode": "int4", "group": 32})
    with pytest.raises(ValueError, match="already quantized"):
        quantize(model, mode)
    shared = quantize(_tiny(share_input_output_emb=True), mode, group)  # the embeddings' weight stays float
    assert isinstance(shared.to_logits[1], nn.Linear)


def test_quantize_errors():
    with pytest.raises(ValueError, match="quantize mode"):
        quantize(_tiny(), "int2")
    with pytest.raises(ValueError, match="int4's setting"):
        quantize(_tiny(), "int8", 64)
    with pytest.raises(ValueError, match="does not divide"):
        quantize(tiny_dalle(dim=96, dim_head=32), "int4", 64)
    assert quantization_of(quantize(tiny_dalle(dim=96, dim_head=32), "int4")) == {"mode": "int4", "group": 32}
    with pytest.raises(TypeError, match="takes a DALLE"):
        quantize(nn.Linear(4, 4), "int8")


@pytest.mark.parametrize("mode,group", MODES)
@pytest.mark.parametrize("attn_type", ["full", "conv_like", "axial_row"])
def test_cached_steps_equal_the_quantized_forward(mode, group, attn_type):
    """The quantized model's own cached steps reproduce its uncached forward (int8: the same integer sums;
    int4: up to the bf16 rounding of the kernel against the dequantized product where the kernel does not apply)."""
    model = quantize(_tiny(attn_type, shift_tokens=True), mode, group)
    text, codes = random_text(), torch.randint(0, 64, (2, 64))
    with torch.inference_mode():
        full = model(text, codes)
        cache = model.setup_cache(2)
        model.prefill(model.text_ids(text), None, cache)
        v = model.num_text_tokens
        err = max((model.decode_step(codes[:, t], torch.tensor(model.text_len + t), cache)
                   - full[:, model.text_len + t, v:]).abs().max().item() for t in range(model.image_seq_len - 1))
    assert err < (1e-4 if mode == "int8" else 3e-2)
    g = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    assert torch.equal(model.generate_images(text, generator=g(), return_codes=True),
                       model.generate_images(text, generator=g(), return_codes=True, use_cache=False))


@pytest.mark.parametrize("mode,group", MODES)
def test_a_row_samples_the_same_codes_in_any_batch(mode, group):
    """Batch-invariant: a caption's codes do not depend on the other captions of its batch (the server)."""
    model = quantize(_tiny(), mode, group)
    text = random_text(batch=3)
    g = lambda: torch.Generator().manual_seed(4)  # noqa: E731
    together = model.generate_images(text, generator=g(), return_codes=True)
    alone = model.generate_images(text[:1], generator=g(), return_codes=True)
    # the same generator draws per position for the whole batch: compare logits of one step instead
    with torch.inference_mode():
        cache3, cache1 = model.setup_cache(3), model.setup_cache(1)
        l3 = model.prefill(model.text_ids(text), None, cache3)
        l1 = model.prefill(model.text_ids(text[:1]), None, cache1)
        s3 = model.decode_step(together[:, 0], torch.tensor(model.text_len), cache3)
        s1 = model.decode_step(together[:1, 0], torch.tensor(model.text_len), cache1)
    assert torch.equal(l3[:1], l1) and torch.equal(s3[:1], s1)
    assert alone.shape == (1, 64)


def _layer_errors(model, quantized, text, codes):
    """Per layer kind, the largest over its layers of (max |error| / max |fp32 output|, mean |error| / mean |fp32
    output|), the error being quantized layer(x) - fp32 layer(x) on the fp32 model's own activations x."""
    inputs = {}
    def keep(name):
        def hook(module, args, out):
            inputs.setdefault(name, (args[0], out))
        return hook

    hooks = [m.register_forward_hook(keep(name)) for name, m in model.named_modules() if isinstance(m, nn.Linear) and "vae" not in name]
    with torch.no_grad():
        model(text, codes)
    for h in hooks:
        h.remove()
    layers = dict(quantized.named_modules())
    errors = {}
    with torch.no_grad():
        for name, (x, ref) in inputs.items():
            kind = name.split(".")[-1] if "to_logits" not in name else "to_logits"
            err = (layers[name](x) - ref).abs()
            errors.setdefault(kind, []).append(((err.max() / ref.abs().max()).item(), (err.mean() / ref.abs().mean()).item()))
    return {k: (max(e[0] for e in v), max(e[1] for e in v)) for k, v in errors.items()}


# per layer kind, the mean relative error allowed (a 10% wrong int8 scale or int4 groups in the wrong order exceed
# it); the max relative error of any output, for the record, is bounded loosely
LAYER_TOLERANCE = {"int8": 0.06, "int4": 0.12}
MAX_TOLERANCE = {"int8": 0.15, "int4": 0.3}


@pytest.mark.parametrize("mode,group", [("int8", None), ("int4", 64)])
def test_logit_error_per_layer_kind_against_fp32(mode, group):
    """A model of the community width (dim 512) and two layers: every quantized layer's output against the fp32
    layer's on the same activations is within the tolerance, and the controls (a wrong scale, transposed
    groups) are not."""
    model = tiny_dalle("full", dim=512, heads=8, dim_head=64, depth=2, attn_types=("full", "axial_row")).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # trained weights' magnitudes vary by channel and by input span: make the scales matter
        for m in model.modules():
            if isinstance(m, nn.Linear) and m.in_features % 32 == 0:
                rows = torch.randn(m.out_features, 1, 1, generator=g).mul(0.5).exp()
                spans = torch.randn(1, m.in_features // 32, 1, generator=g).mul(0.3).exp()
                m.weight.copy_((m.weight.view(m.out_features, -1, 32) * rows * spans).view_as(m.weight))
    text, codes = random_text(), torch.randint(0, 64, (2, 64))
    quantized = quantize(copy.deepcopy(model), mode, group)
    errors = _layer_errors(model, quantized, text, codes)
    assert set(errors) == {"to_qkv", "to_out", "proj_in", "proj_out", "to_logits"}
    assert all(e[1] < LAYER_TOLERANCE[mode] and e[0] < MAX_TOLERANCE[mode] for e in errors.values()), errors
    broken = copy.deepcopy(quantized)
    with torch.no_grad():
        for m in broken.modules():
            if isinstance(m, QuantizedLinear):
                if mode == "int8":
                    m.scale.mul_(1.1)
                else:
                    m.scale.copy_(m.scale.flip(1))
                    m.zero.copy_(m.zero.flip(1))
    broken_errors = _layer_errors(model, broken, text, codes)
    assert all(e[1] > LAYER_TOLERANCE[mode] for e in broken_errors.values()), broken_errors


@pytest.mark.parametrize("mode,group", MODES)
def test_a_quantized_model_is_saved_and_loaded_with_its_integer_weights(tmp_path, mode, group):
    model = quantize(_tiny(), mode, group)
    path = tmp_path / "q.safetensors"
    save(model, path)
    loaded = load_checkpoint(path)
    assert quantization_of(loaded.model) == quantization_of(model)
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[k], v) and loaded.model.state_dict()[k].dtype == v.dtype
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    assert torch.equal(loaded.model.generate_images(random_text(), generator=g(), return_codes=True),
                       model.generate_images(random_text(), generator=g(), return_codes=True))
    half = copy.deepcopy(model).to(torch.bfloat16)  # a bf16 model: the scales keep their dtype through the file
    save(half, tmp_path / "h.safetensors")
    back = load_checkpoint(tmp_path / "h.safetensors").model
    assert back.image_emb.weight.dtype == torch.bfloat16 and back.to_logits[1].scale.dtype == model.to_logits[1].scale.dtype


def test_a_file_whose_scales_or_record_are_wrong_is_refused(tmp_path):
    from safetensors.torch import load_file, save_file
    from safetensors import safe_open

    model = quantize(_tiny(), "int8")
    path = tmp_path / "q.safetensors"
    save(model, path)
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    tensors = load_file(path)
    key = next(k for k in tensors if k.endswith("to_qkv.scale"))
    bad = dict(tensors, **{key: tensors[key][:-1]})  # a scale per channel, one missing
    save_file(bad, tmp_path / "bad.safetensors", metadata=meta)
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "bad.safetensors")
    qkey = next(k for k in tensors if k.endswith("to_qkv.qweight"))
    wrong = dict(tensors, **{qkey: tensors[qkey].float()})  # integer weights stored as floats
    save_file(wrong, tmp_path / "wrong.safetensors", metadata=meta)
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "wrong.safetensors")


@pytest.mark.slow
def test_a_compiled_quantized_step_samples_the_eager_codes():
    """Compile-friendly: the quantized products trace without a graph break, and the compiled steps sample
    the eager codes, for both modes."""
    from torch._dynamo.utils import counters

    from dalle_pytorch.nn.quantized import QuantizedLinear

    dequantized = []
    original = QuantizedLinear.dequantized
    for mode, group in MODES:
        model = quantize(_tiny(), mode, group)
        g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
        eager = model.generate_images(random_text(), generator=g(), return_codes=True)
        torch._dynamo.reset()
        counters.clear()
        dequantized.clear()
        QuantizedLinear.dequantized = lambda self, *a, **k: dequantized.append(self) or original(self, *a, **k)
        try:
            assert torch.equal(eager, model.generate_images(random_text(), generator=g(), return_codes=True, compile=True))
        finally:
            QuantizedLinear.dequantized = original
        assert not counters["graph_break"], dict(counters["graph_break"])
        # int4: the compiled graph multiplies with the int4 kernel (its layout kept on the layer), not a dequantized weight
        assert not dequantized, mode
        if mode == "int4":
            assert all(layer._layouts for layer in model.modules() if isinstance(layer, QuantizedLinear))


def test_int4_weights_are_packed_once_by_the_prefill_for_every_step():
    """The prefill packs the transformer's int4 weights in the cache's PackedLinears; the steps reuse them (and
    add only the logits' image rows), with the same logits as products packed afresh."""
    model = quantize(_tiny(), "int4", 32)
    text, codes = random_text(), torch.randint(0, 64, (2, 3))
    with torch.inference_mode():
        cache = model.setup_cache(2)
        model.prefill(model.text_ids(text), None, cache)
        assert len(cache.linears) == 4 * model.transformer.depth
        for t in range(3):
            last = model.decode_step(codes[:, t], torch.tensor(model.text_len + t), cache)
        assert len(cache.linears) == 4 * model.transformer.depth + 1
        fresh = model.setup_cache(2, pack_weights=False)
        model.prefill(model.text_ids(text), None, fresh)
        for t in range(3):
            again = model.decode_step(codes[:, t], torch.tensor(model.text_len + t), fresh)
    assert torch.equal(last, again)
