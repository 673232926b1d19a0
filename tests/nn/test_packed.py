"""The decode step's packed weights (dalle_pytorch.nn.packed): F.linear's function, batch-invariant, safe."""
import pytest
import torch
import torch.nn.functional as F

from dalle_pytorch.nn.packed import PackedLinears, packing_available
from tests.helpers import random_text, tiny_dalle

pytestmark = pytest.mark.skipif(not packing_available(torch.device("cpu"), torch.float32),
                                reason="this PyTorch has no oneDNN packed-linear operators")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(1, 48), (4, 1, 48), (7, 48)])
def test_packed_products_equal_f_linear(dtype, bias, shape):
    g = torch.Generator().manual_seed(0)
    w = torch.randn(96, 48, generator=g).to(dtype)
    b = torch.randn(96, generator=g).to(dtype) if bias else None
    x = torch.randn(*shape, generator=g).to(dtype)
    packed = PackedLinears(4)
    with torch.inference_mode():
        out = packed.linear(x, w, b)
        ref = F.linear(x, w, b)
    assert out.shape == ref.shape and out.dtype == dtype and len(packed) == 1
    if dtype == torch.bfloat16:  # F.linear runs oneDNN's kernel for bf16 too: the same bits
        assert torch.equal(out, ref)
    else:  # fp32: the rounding of another summation order
        assert torch.allclose(out, ref, rtol=0, atol=1e-5)


def test_a_row_does_not_depend_on_the_other_rows():
    """The server's rows belong to different requests: each row's product is the same in any batch."""
    g = torch.Generator().manual_seed(1)
    w, b = torch.randn(192, 64, generator=g), torch.randn(192, generator=g)
    x = torch.randn(33, 1, 64, generator=g)
    packed = PackedLinears(33)
    with torch.inference_mode():
        full = packed.linear(x, w, b)
        for start, count in [(0, 1), (5, 3), (0, 4), (11, 17), (32, 1)]:
            assert torch.equal(packed.linear(x[start:start + count], w, b), full[start:start + count])


def test_views_in_place_changes_and_gradients():
    g = torch.Generator().manual_seed(2)
    w, b = torch.randn(64, 16, generator=g), torch.randn(64, generator=g)
    x = torch.randn(3, 16, generator=g)
    packed = PackedLinears(3)
    with torch.inference_mode():
        # two row ranges of one matrix (DALLE.decode_step's text and image logit rows) are two weights
        top, bottom = packed.linear(x, w[:40], b[:40]), packed.linear(x, w[40:], b[40:])
        assert len(packed) == 2
        assert torch.allclose(torch.cat((top, bottom), -1), F.linear(x, w, b), atol=1e-5)
        again = packed.linear(x, w[:40], b[:40])
        assert len(packed) == 2 and torch.equal(again, top)  # the same view reuses its pack
    w.mul_(2)  # an in-place change (an optimizer step, load_state_dict) moves the version counter
    with torch.inference_mode():
        assert torch.allclose(packed.linear(x, w[:40], b[:40]), F.linear(x, w[:40], b[:40]), atol=1e-5)
        assert len(packed) == 2 and packed.nbytes() >= w.numel() * 4
    # with gradients (training, a user's own loop) the product is F.linear, differentiable, nothing packed
    fresh = PackedLinears(3)
    wg = w.clone().requires_grad_()
    fresh.linear(x, wg, b).sum().backward()
    assert len(fresh) == 0 and wg.grad is not None
    with pytest.raises(ValueError, match="positive"):
        PackedLinears(0)
    with torch.inference_mode():  # weights made under inference_mode (no version counter) work too
        wi = w.clone()
        assert torch.allclose(PackedLinears(3).linear(x, wi, b), F.linear(x, wi, b), atol=1e-5)


def test_generation_with_packed_weights_draws_the_codes_of_plain_products():
    """The cache packs by default on the CPU; the same seed draws the same codes as F.linear's steps
    and as the uncached forward."""
    model = tiny_dalle().eval()
    text = random_text(batch=3)
    assert model.setup_cache(3).linears is not None and model.setup_cache(3, pack_weights=False).linears is None

    def codes(**kw):
        return model.generate_images(text, return_codes=True, num_images=2, generator=torch.Generator().manual_seed(5),
                                     **kw)

    made = []  # the caches the calls allocate (the generation cache first, then the prefix cache)
    original = model.setup_cache
    model.setup_cache = lambda *a, **kw: made.append(original(*a, **kw)) or made[-1]
    try:
        packed, plain = codes(), codes(pack_weights=False)
    finally:
        del model.setup_cache
    assert len(made[0].linears) == 4 * model.transformer.depth + 1 and made[2].linears is None
    assert torch.equal(packed, plain)
    assert torch.equal(packed, codes(use_cache=False))


def test_a_pack_is_only_used_for_the_tensor_it_was_made_from():
    """A pack held across generations must not outlive its weight: a new tensor, even one allocated where the
    old one lay with the same shape and version, is packed again."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 16, generator=g)
    packed = PackedLinears(2)
    with torch.inference_mode():
        for _ in range(20):  # freed and reallocated tensors often reuse an address
            w = torch.randn(32, 16, generator=g)
            assert torch.allclose(packed.linear(x, w), F.linear(x, w), atol=1e-5)
            del w


def test_a_pipeline_packs_the_weights_once_for_all_its_batches(monkeypatch):
    """Pipeline.generate hands every batch the same packs: the second call reorders no weight, and the images
    are those of packs made afresh."""
    from tests.helpers import tiny_pipeline

    pipe = tiny_pipeline()
    reorders = []
    mkldnn = torch.ops.mkldnn

    class Spy:  # torch.ops namespaces take no attribute assignment: stand in for the namespace
        def __getattr__(self, name):
            if name == "_reorder_linear_weight":
                return lambda *a: reorders.append(a[1]) or mkldnn._reorder_linear_weight(*a)
            return getattr(mkldnn, name)

    monkeypatch.setattr(torch.ops, "mkldnn", Spy(), raising=False)
    first = pipe.generate("a red circle on a blue background", num_images=3, batch_size=2, seed=0)
    made = len(reorders)
    second = pipe.generate("a red circle on a blue background", num_images=3, batch_size=2, seed=0)
    assert made == 4 * pipe.model.transformer.depth + 1 and len(reorders) == made  # none the second time
    assert list(pipe.packs) == [2] and torch.equal(first.images, second.images)
    monkeypatch.undo()
    fresh = pipe.generate("a red circle on a blue background", num_images=3, batch_size=2, seed=0, pack_weights=True)
    assert torch.equal(first.images, fresh.images)
