"""The decode step's packed weights (dalle_pytorch.nn.packed): F.linear's function, batch-invariant, safe."""
import pytest
import torch
import torch.nn.functional as F

import dalle_pytorch.nn.packed as packed_module
from dalle_pytorch.nn.packed import (REFERENCE_BATCHES, ROWWISE_MARGIN, KernelChoices, PackedLinears, packed_kernel_runs,
                                     packing_available, rowwise_linear, time_pair)
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
    if not packed_kernel_runs(dtype):  # bf16 on a CPU without oneDNN's bf16 kernels: the row-wise product
        assert out.shape == ref.shape and out.dtype == dtype and len(packed) == 0
        assert torch.equal(out, rowwise_linear(x, w, b))
        return
    assert out.shape == ref.shape and out.dtype == dtype and len(packed) == 1
    if dtype == torch.bfloat16:  # F.linear runs oneDNN's kernel for bf16 too: the same bits
        assert torch.equal(out, ref)
    else:  # fp32: the rounding of another summation order
        assert torch.allclose(out, ref, rtol=0, atol=1e-5)


@pytest.mark.parametrize("choices", [None, "measured"])
def test_a_dtype_the_packed_kernel_does_not_run_takes_the_rowwise_kernel(monkeypatch, choices):
    """An AVX2-only CPU has no oneDNN bf16 kernels (packing a bf16 weight raises there): its products are
    row-wise, still batch-invariant, with and without measured choices, and nothing is timed or packed."""
    monkeypatch.setattr(packed_module, "packed_kernel_runs", lambda dtype: dtype == torch.float32)
    timed = []
    kernels = KernelChoices(timer=lambda *fns: timed.append(fns) or (1.0, 1.0)) if choices else None
    g = torch.Generator().manual_seed(3)
    w, b = torch.randn(40, 24, generator=g).bfloat16(), torch.randn(40, generator=g).bfloat16()
    x = torch.randn(6, 24, generator=g).bfloat16()
    packed = PackedLinears(6, kernels)
    with torch.inference_mode():
        out = packed.linear(x, w, b)
        assert torch.equal(out, rowwise_linear(x, w, b)) and len(packed) == 0 and not timed
        assert torch.equal(packed.linear(x[2:5], w, b), out[2:5])
        if kernels is not None:  # asked directly, the choices say row-wise without a timing
            assert kernels.packed(w, b) is False and not timed
            assert kernels.table()[0]["packed"] is False and kernels.table()[0]["packed_us"] == []
        packed.linear(x.float(), w.float(), b.float())  # float32 still packs
    assert len(packed) == 1


def test_packed_kernel_runs_fp32_and_tells_bf16_by_the_cpu():
    assert packed_kernel_runs(torch.float32) and not packed_kernel_runs(torch.float16)
    if packed_kernel_runs(torch.bfloat16):  # where it says so, a bf16 weight packs
        torch.ops.mkldnn._reorder_linear_weight(torch.ones(8, 8, dtype=torch.bfloat16), 1)
    else:
        with pytest.raises(RuntimeError):
            torch.ops.mkldnn._reorder_linear_weight(torch.ones(8, 8, dtype=torch.bfloat16), 1)


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
    """Packed steps (every weight, pack_weights=True; by default the shapes measured faster) draw the same
    codes for a seed as F.linear's steps and as the uncached forward."""
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
        packed, plain = codes(pack_weights=True), codes(pack_weights=False)
    finally:
        del model.setup_cache
    assert len(made[0].linears) == 4 * model.transformer.depth + 1 and made[2].linears is None
    assert torch.equal(packed, plain)
    assert torch.equal(packed, codes(use_cache=False))
    assert torch.equal(packed, codes())  # the default: the measured choice


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
    # every shape measures faster packed (this timer runs neither kernel: the reorders counted are the packs')
    monkeypatch.setattr(KernelChoices, "for_process", lambda: KernelChoices(timer=lambda packed, rowwise: (1.0, 2.0)))
    first = pipe.generate("a red circle on a blue background", num_images=3, batch_size=2, seed=0)
    made = len(reorders)
    second = pipe.generate("a red circle on a blue background", num_images=3, batch_size=2, seed=0)
    assert made == 4 * pipe.model.transformer.depth + 1 and len(reorders) == made  # none the second time
    assert list(pipe.packs) == [2] and torch.equal(first.images, second.images)
    monkeypatch.undo()
    fresh = pipe.generate("a red circle on a blue background", num_images=3, batch_size=2, seed=0, pack_weights=True)
    assert torch.equal(first.images, fresh.images)


def test_rowwise_products_are_f_linear_and_batch_invariant():
    """`rowwise_linear` (the other kernel a measured choice can take) is F.linear's function, and a row's
    product is the same in any batch and at any place in it (F.linear's is not, on the AMD EPYC of
    docs/benchmarks.md: rows 2..4 of 6 moved to 0..2 round differently)."""
    g = torch.Generator().manual_seed(6)
    w, b = torch.randn(40, 32, generator=g), torch.randn(40, generator=g)
    x = torch.randn(6, 1, 32, generator=g)
    with torch.inference_mode():
        full = rowwise_linear(x, w, b)
        assert full.shape == (6, 1, 40) and torch.allclose(full, F.linear(x, w, b), atol=1e-5)
        assert torch.allclose(rowwise_linear(x, w), F.linear(x, w), atol=1e-5)
        for start, count in [(2, 3), (0, 1), (5, 1), (1, 4)]:
            assert torch.equal(rowwise_linear(x[start:start + count], w, b), full[start:start + count])
        moved = torch.zeros_like(x)  # the rows 2..4 moved up to 0..2 (the server's rows, after others left)
        moved[:3] = x[2:5]
        assert torch.equal(rowwise_linear(moved, w, b)[:3], full[2:5])


def test_each_shape_takes_the_kernel_measured_faster_once_per_process():
    """With `KernelChoices`, a shape takes the row-wise kernel only where its timing found it ROWWISE_MARGIN
    faster than the packed one at every reference batch; each (shape, dtype, threads) is timed once per
    KernelChoices, whatever the weights, batch or PackedLinears asking; the products stay F.linear's and
    batch-invariant."""
    g = torch.Generator().manual_seed(4)
    big, big2, small = torch.randn(96, 32, generator=g), torch.randn(96, 32, generator=g), torch.randn(40, 32, generator=g)
    tie = torch.randn(24, 32, generator=g)
    b = torch.randn(96, generator=g)
    x = torch.randn(6, 1, 32, generator=g)
    calls = []
    # (packed, row-wise) seconds at each reference batch: 96 rows packed 3x faster; 40 rows row-wise 2x
    # faster at both; 24 row-wise faster at the first batch only (its cost grows with the rows)
    times = {96: [(1.0, 3.0)] * 2, 40: [(2.0, 1.0)] * 2, 24: [(2.0, 1.0), (1.0, 1.0 / (ROWWISE_MARGIN - 0.1))]}
    timed = []

    def timer(packed, rowwise):
        out = packed()
        assert torch.allclose(rowwise(), out, atol=1e-5)  # the two timed kernels compute the same product
        calls.append(out.shape[-1])
        timed.append(out.shape[0])
        return times[out.shape[-1]][calls.count(out.shape[-1]) - 1]

    choices = KernelChoices(timer=timer)
    packs = PackedLinears(6, choices)
    with torch.inference_mode():
        full = [packs.linear(x, big, b), packs.linear(x, big2, b), packs.linear(x, small), packs.linear(x, tie)]
        for out, ref in zip(full, [F.linear(x, big, b), F.linear(x, big2, b), F.linear(x, small), F.linear(x, tie)]):
            assert torch.allclose(out, ref, atol=1e-5)
        # three shapes timed, at each reference batch (not the caller's 6 rows); both 96 x 32 weights packed
        # and the 24 x 32 one; 40 x 32 not
        assert len(calls) == 3 * len(REFERENCE_BATCHES) and len(packs) == 3
        assert timed == list(REFERENCE_BATCHES) * 3
        assert torch.equal(full[2], rowwise_linear(x, small))
        for start, count in [(2, 1), (1, 4)]:  # batch-invariant either way
            assert torch.equal(packs.linear(x[start:start + count], big, b), full[0][start:start + count])
            assert torch.equal(packs.linear(x[start:start + count], small), full[2][start:start + count])
        # a later generation, or the server's batch of other rows: the same kernels, not timed again
        other = PackedLinears(16, choices)
        assert torch.equal(other.linear(x, big, b), full[0]) and torch.equal(other.linear(x, small), full[2])
        assert len(calls) == 3 * len(REFERENCE_BATCHES)
    rows = {r["shape"]: r["packed"] for r in choices.table()}
    assert rows == {(96, 32): True, (40, 32): False, (24, 32): True}
    assert KernelChoices.for_process() is KernelChoices.for_process()


def test_time_pair_times_both_kernels_without_drawing_random_numbers():
    w = torch.randn(64, 32)
    ran = {"packed": 0, "rowwise": 0}

    def kernel(name):
        def run():
            ran[name] += 1
            return w
        return run

    state = torch.random.get_rng_state()
    t_packed, t_rowwise = time_pair(kernel("packed"), kernel("rowwise"), rounds=2, calls=3)
    assert t_packed > 0 and t_rowwise > 0 and ran == {"packed": 8, "rowwise": 8}
    packs = PackedLinears(2, KernelChoices())  # the real timing: a constant input, the global RNG untouched
    with torch.inference_mode():
        assert torch.allclose(packs.linear(torch.ones(2, 32), w), F.linear(torch.ones(2, 32), w), atol=1e-5)
    assert torch.equal(torch.random.get_rng_state(), state)
