"""Speculative Jacobi decoding samples exactly the plain distribution: checked against the exact
distribution of a model small enough to enumerate, with a control that shows the test catches a
wrong acceptance rule; its cache stays clean; it takes fewer forward passes than codes."""
import itertools
import math

import pytest
import torch

from dalle_pytorch import DALLE, DiscreteVAE
from dalle_pytorch.generation import speculative
from dalle_pytorch.generation.sampling import SamplingConfig, guided_logits, sampling_probs
from dalle_pytorch.generation.speculative import DecodeStats
from tests.helpers import ATTN_TYPES, random_text, tiny_dalle

SETTINGS = dict(cond_scale=2.0, filter_thres=0.3, temperature=0.8)  # guidance, top-k (over the 4 + ... vocab), temperature


def _enumerable(seed=0):
    """A DALLE over a 2 x 2 grid of 4 codes: 256 possible images; weights scaled up for peaked conditionals."""
    torch.manual_seed(seed)
    vae = DiscreteVAE(image_size=8, num_layers=2, num_tokens=4, codebook_dim=8, hidden_dim=8)
    model = DALLE(dim=32, vae=vae, num_text_tokens=10, text_seq_len=3, depth=2, heads=2, dim_head=16,
                  attn_types=("full", "axial_row")).eval()
    with torch.no_grad():
        model.to_logits[1].weight.mul_(6.0)
    return model


def _exact(model, text, sampling):
    """The probability of each of the 256 images under `sampling` (guidance, filters, temperature), by
    teacher forcing every image through the same sampling transform."""
    images = torch.tensor(list(itertools.product(range(4), repeat=4)))  # (256, 4)
    n = images.shape[0]
    with torch.inference_mode():
        cond = model(text.expand(n, -1), images)
        null = model(torch.zeros_like(text).expand(n, -1), images)
        tl, v = model.text_seq_len, model.num_text_tokens
        logits = torch.cat((cond, null))[:, tl:, v:]  # (2n, 4, 4): image positions, image codes
        p = sampling_probs(guided_logits(logits, n, sampling.cond_scale), sampling, vocab_size=model.total_tokens)
    return p.gather(-1, images[..., None])[..., 0].prod(dim=1), images


def _histogram(codes):
    index = (codes * torch.tensor([64, 16, 4, 1])).sum(dim=1)
    return torch.bincount(index, minlength=256).double()


def _chi2_and_threshold(counts, probs):
    """Pearson's chi-square of `counts` against `probs` (bins with expected < 5 pooled) and its 0.1%
    critical value (Wilson-Hilferty)."""
    expected = counts.sum() * probs.double()
    big = expected >= 5
    obs = torch.cat((counts[big], counts[~big].sum()[None]))
    exp = torch.cat((expected[big], expected[~big].sum()[None]))
    keep = exp > 0
    chi2 = float(((obs[keep] - exp[keep]) ** 2 / exp[keep]).sum())
    df = int(keep.sum()) - 1
    z = 3.09  # one-sided 0.1%
    return chi2, df * (1 - 2 / (9 * df) + z * math.sqrt(2 / (9 * df))) ** 3


def _sample(model, text, n, seed, **kwargs):
    return model.generate_images(text, num_images=n, return_codes=True, generator=torch.Generator().manual_seed(seed),
                                 **SETTINGS, **kwargs)


@pytest.fixture(scope="module")
def demo():
    from dalle_pytorch.checkpoint import load_checkpoint
    from dalle_pytorch.pipeline import demo_path

    return load_checkpoint(demo_path())


@pytest.fixture(scope="module")
def enumerable():
    model = _enumerable()
    text = torch.tensor([[3, 5, 0]])
    probs, _ = _exact(model, text, SamplingConfig(**SETTINGS))
    assert abs(float(probs.sum()) - 1) < 1e-4 and float(probs.max()) > 0.05  # a distribution, and a peaked one
    return model, text, probs


@pytest.mark.parametrize("window", [None, 2, 4])
def test_plain_and_speculative_samples_follow_the_exact_distribution(enumerable, window):
    model, text, probs = enumerable
    codes = _sample(model, text, 20000, seed=1, speculative=window)
    chi2, threshold = _chi2_and_threshold(_histogram(codes), probs)
    assert chi2 < threshold, (chi2, threshold)


@pytest.mark.parametrize("rule", ["always", "argmax"])
def test_the_distribution_test_catches_a_wrong_acceptance_rule(enumerable, monkeypatch, rule):
    """The control: accepting every draft, or accepting a draft when it is p's argmax, changes the
    distribution, and the same chi-square test rejects it."""
    model, text, probs = enumerable
    right = speculative.verify

    def wrong(p, drafts, q, valid, forced=None, generator=None):
        n, code = right(p, drafts, q, valid, forced, generator)  # the same random numbers are drawn
        ok = torch.ones_like(drafts, dtype=torch.bool) if rule == "always" else p.argmax(-1) == drafts
        ok = ok & valid
        return ok.long().cumprod(dim=1).sum(dim=1), code

    monkeypatch.setattr(speculative, "verify", wrong)
    codes = _sample(model, text, 20000, seed=1, speculative=4)
    chi2, threshold = _chi2_and_threshold(_histogram(codes), probs)
    assert chi2 > threshold, (chi2, threshold)


def test_fewer_forward_passes_than_codes_and_the_same_seed_the_same_codes(demo):
    """On a trained model (the demo: flat backgrounds, peaked conditionals) most drafts are accepted."""
    model = demo.model
    text = demo.tokenizer.tokenize(["a red circle on a blue background"], model.text_seq_len)
    plain, spec = DecodeStats(), DecodeStats(positions=True)
    _sample(model, text, 1, seed=0, stats=plain)
    a = _sample(model, text, 1, seed=0, speculative=8, stats=spec)
    assert plain.forward_passes == model.image_seq_len - 1
    assert spec.forward_passes < plain.forward_passes / 2.5, (spec.forward_passes, plain.forward_passes)
    assert spec.codes == plain.codes == 64 and spec.accepted_drafts > 0
    assert torch.equal(a, _sample(model, text, 1, seed=0, speculative=8))
    rates = spec.acceptance_by_position()
    assert len(rates) == 64 and any(r is not None for r in rates)


@pytest.mark.parametrize("case", [dict(attn_type=a) for a in ATTN_TYPES] + [
    dict(attn_type="axial_row", reversible=True), dict(attn_type="conv_like", stable=True, sandwich_norm=True)],
    ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
def test_after_accepts_and_rejects_the_cache_equals_a_plain_run_over_the_accepted_codes(case):
    """Cache hygiene: the filled part of the cache after speculative decoding equals the cache of plain
    cached steps over the same codes, for every layer type (shift and rotary on) and the reversible,
    stable and sandwich options."""
    case = dict(case)
    model = tiny_dalle(case.pop("attn_type"), **case).eval()
    text = random_text()
    caches = {}
    real_step = model.step

    def spy(tokens, start, cache, **kwargs):
        caches["spec"] = cache
        return real_step(tokens, start, cache, **kwargs)

    model.step = spy
    codes = model.generate_images(text, return_codes=True, generator=torch.Generator().manual_seed(3), speculative=5)
    del model.step
    with torch.inference_mode():
        cache = model.setup_cache(2)
        model.prefill(model.text_ids(text), None, cache)
        for t in range(model.image_seq_len - 1):
            model.decode_step(codes[:, t], torch.tensor(model.text_len + t), cache, length=model.text_len + t + 1)
    spec = caches["spec"]
    n = model.text_len + model.image_seq_len - 1
    for a, b in zip(spec.kv, cache.kv):
        assert (a.k[:, :, :n] - b.k[:, :, :n]).abs().max() < 1e-5
        assert (a.v[:, :, :n] - b.v[:, :, :n]).abs().max() < 1e-5
    last = n - 1
    for a, b in zip(spec.shift_attn + spec.shift_ff, cache.shift_attn + cache.shift_ff):
        for pos in range(last - model.fmap_size + 1, last + 1):  # the rows a next step would read
            assert (a.ring[:, pos % a.size] - b.ring[:, pos % b.size]).abs().max() < 1e-5


def test_masked_completion_and_priming_keep_their_codes():
    model = tiny_dalle("conv_like")
    img = torch.rand(1, 3, 32, 32)
    known = model.vae.get_codebook_indices(img)
    mask = torch.zeros(8, 8)
    mask[:, :3] = 1  # keep the left three columns
    codes = model.generate_images(random_text(), img=img, mask=mask, return_codes=True, speculative=4,
                                  generator=torch.Generator().manual_seed(0))
    keep = mask.flatten().bool()
    assert torch.equal(codes[:, keep], known.expand(2, -1)[:, keep])
    primed = model.generate_images(random_text(), img=img, num_init_img_tokens=20, return_codes=True, speculative=4)
    assert torch.equal(primed[:, :20], known.expand(2, -1)[:, :20])


def test_a_bf16_model_decodes_speculatively():
    """Reduced precision composes: p and q are float32 whatever the model's dtype."""
    model = tiny_dalle("axial_col").to(torch.bfloat16)
    stats = DecodeStats()
    codes = model.generate_images(random_text(), return_codes=True, speculative=4, cond_scale=2.0, stats=stats,
                                  generator=torch.Generator().manual_seed(0))
    assert codes.shape == (2, 64) and int(codes.max()) < 64 and 0 < stats.forward_passes < 63


def test_speculative_argument_errors():
    model = tiny_dalle()
    for bad in (0, -2, 2.5, True, "4"):
        with pytest.raises(ValueError, match="speculative must be"):
            model.generate_images(random_text(), speculative=bad)
    with pytest.raises(ValueError, match="needs use_cache=True"):
        model.generate_images(random_text(), speculative=4, use_cache=False)


def test_auto_is_on_for_small_batches_and_off_for_large_ones(demo):
    from dalle_pytorch.generation.decode import AUTO_MAX_ROWS

    model = demo.model
    text = demo.tokenizer.tokenize(["a red circle on a blue background"], model.text_seq_len)
    small, large = DecodeStats(), DecodeStats()
    _sample(model, text, 1, seed=0, speculative="auto", stats=small)  # guided: 2 rows
    _sample(model, text, AUTO_MAX_ROWS, seed=0, speculative="auto", stats=large)  # 2 x AUTO_MAX_ROWS rows
    assert small.forward_passes < model.image_seq_len - 1 and small.accepted_drafts > 0
    assert large.forward_passes == model.image_seq_len - 1 and large.accepted_drafts == 0


@pytest.mark.slow
def test_compiled_verify_steps_sample_the_eager_codes():
    """compile composes: the K-token step compiled once (dynamic shapes: one graph for every length) gives the
    eager step's codes for the same seed."""
    model = tiny_dalle("conv_like")

    def run(**kw):
        return model.generate_images(random_text(), return_codes=True, speculative=4,
                                     generator=torch.Generator().manual_seed(0), **kw)

    eager = run()
    with torch._dynamo.config.patch(error_on_recompile=True):
        assert torch.equal(eager, run(compile=True))
