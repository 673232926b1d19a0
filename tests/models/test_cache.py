"""Cached inference is exact: every cached step equals the uncached forward, for every option."""
import copy
import io
import itertools

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from dalle_pytorch.generation.decode import compiled_modes, compiled_step
from dalle_pytorch.generation.sampling import top_k_filter, top_p_filter
from dalle_pytorch.nn.packed import packing_available
from tests.helpers import ATTN_TYPES, prefilled_caches, random_text, tiny_dalle

GRID = [
    c
    for c in itertools.product(ATTN_TYPES, [True, False], [True, False], [False, True], [False, True])
]


def _steps_vs_full(model, text, codes):
    """Max |cached step logits - full forward logits| over every position after the prefix."""
    model.eval()
    with torch.inference_mode():
        full = model(text, codes)
        cache = model.setup_cache(text.shape[0])
        last = model.prefill(model.text_ids(text), None, cache)
        errs = [(last - full[:, model.text_len - 1]).abs().max()]
        v = model.num_text_tokens
        for t in range(model.image_seq_len - 1):
            last = model.decode_step(codes[:, t], torch.tensor(model.text_len + t), cache)
            errs.append((last - full[:, model.text_len + t, v:]).abs().max())
    return max(errs)


@pytest.mark.parametrize("attn_type,shift_tokens,rotary_emb,reversible,stable", GRID)
def test_every_cached_step_equals_the_full_forward(attn_type, shift_tokens, rotary_emb, reversible, stable):
    model = tiny_dalle(attn_type, shift_tokens=shift_tokens, rotary_emb=rotary_emb, reversible=reversible, stable=stable)
    codes = torch.randint(0, 64, (2, 64))
    assert _steps_vs_full(model, random_text(), codes) < 1e-5


@pytest.mark.parametrize("attn_type", ATTN_TYPES)
def test_cache_with_optimize_for_inference_sandwich_and_shared_layers(attn_type):
    model = tiny_dalle(attn_type, optimize_for_inference=True, sandwich_norm=True, depth=4,
                       attn_types=(attn_type, "full"), shared_attn_ids=(0, 1, 0, 1), shared_ff_ids=(0, 0, 1, 1),
                       share_input_output_emb=True)
    assert _steps_vs_full(model, random_text(), torch.randint(0, 64, (2, 64))) < 1e-5


def test_cache_with_conv_options():
    for kw in ({"conv_kernel_size": 3, "conv_dilation": 2}, {"conv_variant": "centred"}):
        model = tiny_dalle("conv_like", **kw)
        assert _steps_vs_full(model, random_text(), torch.randint(0, 64, (2, 64))) < 1e-5


def test_prefill_with_priming_codes_then_steps():
    model = tiny_dalle("conv_like").eval()
    text, codes = random_text(), torch.randint(0, 64, (2, 64))
    with torch.inference_mode():
        full = model(text, codes)
        cache = model.setup_cache(2)
        last = model.prefill(model.text_ids(text), codes[:, :20], cache)
        assert (last - full[:, model.text_len + 19]).abs().max() < 1e-5
        last = model.decode_step(codes[:, 20], torch.tensor(model.text_len + 20), cache)
        assert (last - full[:, model.text_len + 20, model.num_text_tokens :]).abs().max() < 1e-5


@pytest.mark.parametrize("shift_tokens,rotary_emb", [(True, True), (False, False)])
def test_cached_text_steps_equal_full_forward(shift_tokens, rotary_emb):
    model = tiny_dalle(shift_tokens=shift_tokens, rotary_emb=rotary_emb).eval()
    text = random_text(batch=1)
    ids = model.text_ids(text)
    with torch.inference_mode():
        full = model(text)
        cache = model.setup_cache(1, model.text_len)
        last = model.prefill(ids[:, :2], None, cache)
        assert (last - full[:, 1]).abs().max() < 1e-5
        for pos in range(2, model.text_len - 1):
            last = model.decode_step(ids[:, pos], torch.tensor(pos), cache, image=False)
            assert (last - full[:, pos, : model.num_text_tokens]).abs().max() < 1e-5


GEN_CASES = {
    "plain": {},
    "guidance": {"cond_scale": 3.0},
    "priming": {"img": torch.rand(2, 3, 32, 32), "num_init_img_tokens": 20},
    "num_images": {"num_images": 3},
    "null_text": {"cond_scale": 2.0, "null_text": torch.tensor([[7, 8, 0, 0, 0, 0]])},
    "everything": {"cond_scale": 2.0, "num_images": 2, "img": torch.rand(1, 3, 32, 32), "top_p": 0.9,
                   "temperature": 0.7},
}


@pytest.mark.parametrize("case", GEN_CASES)
@pytest.mark.parametrize("attn_type", ["full", "sparse", "axial_col"])
def test_same_seed_same_codes_with_and_without_cache(case, attn_type):
    model = tiny_dalle(attn_type)
    kw = GEN_CASES[case]
    out = []
    for use_cache in (True, False):
        g = torch.Generator().manual_seed(7)
        out.append(model.generate_images(random_text(), use_cache=use_cache, generator=g, return_codes=True, **kw))
    assert out[0].shape == (2 * kw.get("num_images", 1), 64)
    assert torch.equal(out[0], out[1])
    if "img" in kw:
        n = kw.get("num_init_img_tokens", int(0.4375 * 64))
        prime = model.vae.get_codebook_indices(kw["img"])[:, :n].expand(2, -1)
        assert torch.equal(out[0][:, :n], prime.repeat_interleave(kw.get("num_images", 1), dim=0))


def test_seed_reproduces_and_differs():
    model = tiny_dalle()
    codes = model.generate_images(random_text(), generator=torch.Generator().manual_seed(1), return_codes=True)
    assert codes.unique().numel() > 10, "an untrained model samples many different codes"
    run = lambda s: model.generate_images(random_text(), generator=torch.Generator().manual_seed(s), return_codes=True)  # noqa: E731
    assert torch.equal(run(1), run(1))
    assert not torch.equal(run(1), run(2))


def test_batched_guidance_equals_two_pass_definition():
    """One batch of conditional + null rows == two separate uncached passes combined."""
    model = tiny_dalle("conv_like").eval()
    text, scale = random_text(), 2.5
    null = torch.zeros_like(text)
    g = torch.Generator().manual_seed(3)
    codes = model.generate_images(text, cond_scale=scale, generator=g, return_codes=True, filter_thres=0.0)
    # replay: same noise, two-pass logits
    g = torch.Generator().manual_seed(3)
    ref = torch.zeros_like(codes)
    with torch.inference_mode():
        for t in range(64):
            cond = model(text, ref[:, :t])[:, -1, model.num_text_tokens :]
            unc = model(null, ref[:, :t])[:, -1, model.num_text_tokens :]
            logits = unc + (cond - unc) * scale
            u = torch.rand(logits.shape, generator=g).clamp(1e-20, 1.0)
            gumbel = -torch.log(-torch.log(u))
            assert torch.isfinite(gumbel).all()
            ref[:, t] = (logits + gumbel).argmax(-1)
    assert torch.equal(codes, ref)


def _count_prefill_rows(model) -> list:
    """Make `model.prefill` record the rows of every call in the returned list."""
    rows = []
    original = model.prefill

    def spy(ids, codes, cache):
        rows.append(ids.shape[0])
        return original(ids, codes, cache)

    model.prefill = spy
    return rows


def test_num_images_computes_the_prefix_once_per_caption():
    model = tiny_dalle()
    rows = _count_prefill_rows(model)
    out = model.generate_images(random_text(), num_images=4, cond_scale=2.0, return_codes=True)
    assert out.shape == (8, 64)
    assert rows == [3], "2 captions + 1 null caption (both empty), not 16 rows"


@pytest.mark.parametrize("num_images", [1, 3])
def test_each_distinct_null_row_is_prefilled_once(num_images):
    """With guidance the null rows of different captions are prefilled once per distinct row (the empty
    caption, a shared negative prompt, with the same priming codes), and sampling is unchanged: the cached
    codes equal the uncached ones, which run every row through the full forward."""
    model = tiny_dalle().eval()
    rows = _count_prefill_rows(model)
    text = random_text(batch=4, seed=3)
    negative = random_text(batch=4, seed=4)
    img = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    cases = [  # (null_text, img, distinct null rows)
        (None, None, 1),
        (negative[:1], None, 1),  # one negative prompt for every caption
        (torch.cat((negative[:2], negative[:2])), None, 2),
        (negative, None, 4),  # all differ: nothing to share
        (None, img, 1),  # the same priming codes behind every empty caption
    ]
    for null_text, prime, distinct in cases:
        rows.clear()
        kw = dict(cond_scale=3.0, null_text=null_text, num_images=num_images, return_codes=True,
                  img=prime, num_init_img_tokens=None if prime is None else 5)
        cached = model.generate_images(text, generator=torch.Generator().manual_seed(1), **kw)
        assert rows == [4 + distinct], (null_text is None, prime is None, rows)
        uncached = model.generate_images(text, generator=torch.Generator().manual_seed(1), use_cache=False, **kw)
        assert torch.equal(cached, uncached)


def test_generation_restores_training_mode_and_returns_images():
    model = tiny_dalle()
    model.train()
    images = model.generate_images(random_text(), num_images=2)
    assert model.training
    assert images.shape == (4, 3, 32, 32) and images.min() >= 0 and images.max() <= 1


def test_clip_reranking_returns_scores():
    from dalle_pytorch import CLIP

    clip = CLIP(dim_text=32, dim_image=32, dim_latent=16, num_text_tokens=50, text_enc_depth=1, text_seq_len=6,
                text_heads=2, visual_enc_depth=1, visual_heads=2, visual_image_size=32, visual_patch_size=8)
    images, scores = tiny_dalle().generate_images(random_text(), clip=clip, num_images=2)
    assert images.shape == (4, 3, 32, 32) and scores.shape == (4,)


def test_generate_texts_cached_equals_uncached():
    class Tok:
        def encode(self, s):
            return [int(w) for w in s.split()]

        def decode(self, t, pad_tokens=frozenset()):
            return " ".join(str(int(i)) for i in t if int(i) != 0)

    model = tiny_dalle()
    out = [model.generate_texts(Tok(), "3 4", use_cache=c, generator=torch.Generator().manual_seed(0)) for c in (True, False)]
    assert torch.equal(out[0][0], out[1][0]) and out[0][1] == out[1][1]
    assert out[0][0].shape == (1, 6) and out[0][0][0, :2].tolist() == [3, 4]
    assert out[0][0].max() < 50, "pad ids come back as 0"


BAD_ARGS = {
    "filter_thres >= 1": {"filter_thres": 1.0},
    "filter_thres < 0": {"filter_thres": -0.1},
    "top_p 0": {"top_p": 0.0},
    "temperature 0": {"temperature": 0.0},
    "negative cond_scale": {"cond_scale": -1.0},
    "num_images 0": {"num_images": 0},
    "priming too long": {"img": torch.rand(2, 3, 32, 32), "num_init_img_tokens": 64},
    "priming without img": {"num_init_img_tokens": 3},
    "wrong img size": {"img": torch.rand(2, 3, 16, 16)},
    "null_text without guidance": {"null_text": torch.zeros(1, 6, dtype=torch.long)},
    "bad null_text": {"cond_scale": 2.0, "null_text": torch.zeros(1, 5, dtype=torch.long)},
}


@pytest.mark.parametrize("case", BAD_ARGS)
def test_bad_generation_arguments_raise(case):
    with pytest.raises(ValueError):
        tiny_dalle().generate_images(random_text(), **BAD_ARGS[case])


def test_cond_scale_zero_is_unconditional():
    model = tiny_dalle()
    a = model.generate_images(random_text(), cond_scale=0.0, generator=torch.Generator().manual_seed(0), return_codes=True)
    b = model.generate_images(torch.zeros(2, 6, dtype=torch.long), generator=torch.Generator().manual_seed(0), return_codes=True)
    assert torch.equal(a, b)


def test_filters():
    logits = torch.tensor([[0.0, 1.0, 2.0, 3.0]])
    assert torch.isinf(top_k_filter(logits, 0.5)[0, :2]).all() and torch.isfinite(top_k_filter(logits, 0.5)[0, 2:]).all()
    p = top_p_filter(torch.log(torch.tensor([[0.1, 0.2, 0.3, 0.4]])), 0.6)
    assert torch.isfinite(p[0, 2:]).all() and torch.isinf(p[0, :2]).all()


def test_top_k_filter_threshold_is_the_kth_largest_value():
    """The unsorted top-k threshold equals the k-th value of a full sort, ties included (so seeded
    samples are the ones the sorted top-k gave)."""
    g = torch.Generator().manual_seed(0)
    for v, thres in ((512, 0.5), (1024, 0.9), (37, 0.0), (8, 0.99)):
        logits = torch.randint(-20, 20, (16, v), generator=g).float()  # many ties
        k = max(int((1 - thres) * v), 1)
        kth = logits.sort(dim=-1, descending=True).values[:, k - 1 : k]
        expected = logits.masked_fill(logits < kth, float("-inf"))
        assert torch.equal(top_k_filter(logits, thres), expected)


def test_gumbel_sampling_follows_the_softmax():
    from dalle_pytorch.generation.sampling import gumbel_sample

    logits = torch.tensor([[0.0, 1.0, 2.0]]).expand(20000, 3)
    draws = gumbel_sample(logits, temperature=1.0, generator=torch.Generator().manual_seed(0))
    freq = torch.bincount(draws, minlength=3).float() / draws.numel()
    assert torch.allclose(freq, torch.softmax(torch.tensor([0.0, 1.0, 2.0]), -1), atol=0.015)
    cold = gumbel_sample(logits, temperature=0.05, generator=torch.Generator().manual_seed(0))
    assert (cold == 2).float().mean() > 0.99, "low temperature approaches argmax"


@pytest.mark.slow
def test_compiled_decode_step_matches_eager():
    """Both compiled forms (dynamic prefix length, static full length) sample the same codes as eager."""
    model = tiny_dalle("conv_like")
    run_on = lambda m, **kw: m.generate_images(random_text(), generator=torch.Generator().manual_seed(0), return_codes=True, **kw)  # noqa: E731
    run = lambda **kw: run_on(model, **kw)  # noqa: E731
    eager = run()
    torch._dynamo.reset()
    with torch._dynamo.config.patch(error_on_recompile=True):  # one graph for every position, the last included
        assert torch.equal(eager, run(compile=True))
    assert torch.equal(eager, run(compile="static"))
    # one compiled step per mode, reused (other tests of this process may have made the "window" one)
    assert {"prefix", "static"} <= compiled_modes()
    assert compiled_step("prefix", "cpu") is compiled_step("prefix", "cpu")
    assert torch.equal(eager, run(compile="prefix", cond_scale=1.0))
    # the compiled steps are a per-process cache outside the model: a copy or a pickled model carries none
    twin = copy.deepcopy(model)
    assert set(vars(twin)) == set(vars(model)) and torch.equal(eager, run_on(twin))
    buf = io.BytesIO()
    torch.save(model, buf)
    buf.seek(0)
    assert torch.equal(eager, run_on(torch.load(buf, weights_only=False)))


@pytest.mark.slow
def test_compiled_bf16_step_attends_like_eager():
    """The compiled step over a bf16 cache (fused reductions, attend_one) gives eager bf16's logits."""
    model = tiny_dalle("axial_row").to(torch.bfloat16).eval()
    text, codes = random_text(), torch.randint(0, 64, (2, 64))
    compiled = compiled_step("prefix", torch.device("cpu"))
    step = lambda token, pos, cache, length: compiled(model, token, pos, cache, length)  # noqa: E731
    with torch.inference_mode():
        caches = prefilled_caches(model, text)
        for t in range(12):
            pos = model.text_len + t
            a = model.decode_step(codes[:, t], torch.tensor(pos), caches[0], length=pos + 1).float()
            b = step(codes[:, t], torch.tensor(pos), caches[1], length=pos + 1).float()
            assert (a - b).abs().max() <= 0.02 * a.abs().max()


def test_compile_argument_errors():
    model = tiny_dalle("full")
    with pytest.raises(ValueError, match="compile must be"):
        model.generate_images(random_text(), compile="fast")
    with pytest.raises(ValueError, match="needs use_cache=True"):
        model.generate_images(random_text(), compile=True, use_cache=False)


@pytest.mark.parametrize("attn_type", ATTN_TYPES)
def test_prefix_length_step_equals_full_length_step(attn_type):
    """Eager decoding attends over the filled prefix only; the static-shape step over the whole cache."""
    model = tiny_dalle(attn_type).eval()
    text, codes = random_text(), torch.randint(0, 64, (2, 64))
    with torch.inference_mode():
        caches = prefilled_caches(model, text)
        for t in range(20):
            pos = model.text_len + t
            a = model.decode_step(codes[:, t], torch.tensor(pos), caches[0])
            b = model.decode_step(codes[:, t], torch.tensor(pos), caches[1], length=pos + 1)
            assert (a - b).abs().max() < 1e-5


def test_single_query_reductions_equal_sdpa():
    """attend_one (the compiled step's attention over a reduced-precision cache) is attention."""
    from dalle_pytorch.nn.attention import attend, attend_one

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(3, 2, n, 16, generator=g) for n in (1, 40, 40))
    mask = torch.rand(1, 40, generator=g) > 0.3
    mask[0, 0] = True
    for m in (None, mask):
        ref = attend(q, k, v, m, 0.25, stable=False)
        assert (attend_one(q, k, v, m, 0.25) - ref).abs().max() < 1e-5
        half = attend_one(q.bfloat16(), k.bfloat16(), v.bfloat16(), m, 0.25)
        assert half.dtype == torch.float32 and (half - ref).abs().max() < 0.05


def test_kv_dtype_cache_and_errors():
    """A bf16 model with an fp32 KV cache (or the reverse) decodes; bad kv_dtype values raise."""
    model = tiny_dalle().to(torch.bfloat16)
    cache = model.setup_cache(2, kv_dtype=torch.float32)
    assert cache.kv[0].k.dtype == torch.float32 and cache.shift_attn[0].ring.dtype == torch.bfloat16
    for kv_dtype in (None, torch.float32):
        codes = model.generate_images(random_text(), kv_dtype=kv_dtype, return_codes=True, num_images=2, cond_scale=2.0)
        assert codes.shape == (4, 64)
    with pytest.raises(ValueError, match="kv_dtype must be"):
        model.generate_images(random_text(), kv_dtype=torch.int8)
    with pytest.raises(ValueError, match="needs use_cache=True"):
        model.generate_images(random_text(), kv_dtype=torch.float32, use_cache=False)


class _CountOps(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.calls = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.calls += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("kwargs, limit", [
    ({}, 97),  # full attention, token shift, rotary (the defaults)
    ({"shift_tokens": False, "rotary_emb": False}, 63),
    ({"attn_types": ("axial_row", "full")}, 100),
])
def test_decode_step_operator_count(kwargs, limit):
    """An eager decode step costs mostly per-operator overhead (docs/benchmarks.md), so the number of
    operators it calls is pinned: 23 per step plus 37 per layer for the defaults, today's counts.
    An added operator should be a decision, not an accident. The first step also packs each weight
    once (one reorder each, `packed.PackedLinears`); later steps reuse the packs. (pack_weights=True: every
    weight packed; by default a measured choice may give small weights the row-wise kernel instead.)"""
    model = tiny_dalle(**kwargs).eval()
    with torch.inference_mode():
        cache = model.setup_cache(2, pack_weights=True)
        model.prefill(model.text_ids(random_text()), None, cache)
        calls = []
        for _ in range(2):
            pos = cache.length
            counter = _CountOps()
            with counter:
                model.decode_step(torch.tensor([1, 2]), torch.tensor(pos), cache, length=pos + 1)
            cache.length += 1
            calls.append(counter.calls)
    assert 0 < calls[1] <= limit, f"{calls[1]} operators per decode step (limit {limit})"
    packs = 0 if cache.linears is None else len(cache.linears)
    assert calls[0] == calls[1] + packs  # each weight packed at its first product, never again
    if packing_available(torch.device("cpu"), torch.float32):
        assert packs == 4 * model.transformer.depth + 1  # qkv, out, ff in, ff out per layer; the logit rows
