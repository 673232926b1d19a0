"""DALLE: shapes, losses and gradients for every layer option; sparse == masked; bad inputs."""
import itertools

import pytest
import torch

from dalle_pytorch import DALLE
from dalle_pytorch.models.dalle_pytorch_keys import native_state_dict
from dalle_pytorch.models.transformer import Transformer, layerscale_init
from dalle_pytorch.nn.positions import StepPositions
from dalle_pytorch.nn.shift import PreShiftToken, shift_tokens_full, shift_tokens_step
from tests.helpers import ATTN_TYPES, random_text, tiny_dalle, tiny_vae

GRID = list(itertools.product(ATTN_TYPES, [True, False], [True, False], [False, True]))


@pytest.mark.parametrize("attn_type,shift_tokens,rotary_emb,reversible", GRID)
def test_forward_loss_backward(attn_type, shift_tokens, rotary_emb, reversible):
    model = tiny_dalle(attn_type, shift_tokens=shift_tokens, rotary_emb=rotary_emb, reversible=reversible)
    text = random_text()
    codes = torch.randint(0, 64, (2, 64))
    logits = model(text, codes)
    assert logits.shape == (2, 6 + 64, model.total_tokens)
    loss = model(text, codes, return_loss=True)
    assert torch.isfinite(loss)
    loss.backward()
    grads = [p.grad for n, p in model.named_parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert model.transformer.attns[0].to_qkv.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.vae.parameters()), "the VAE is frozen"


def test_raw_images_are_encoded_by_the_vae():
    model = tiny_dalle()
    images = torch.rand(2, 3, 32, 32)
    codes = model.vae.get_codebook_indices(images)
    assert torch.equal(model(random_text(), images), model(random_text(), codes))


def test_partial_image_and_text_only():
    model = tiny_dalle("axial_row").eval()
    text, codes = random_text(), torch.randint(0, 64, (2, 64))
    full = model(text, codes)
    assert torch.allclose(model(text, codes[:, :10]), full[:, : 7 + 10], atol=1e-5)
    assert torch.allclose(model(text), full[:, :7], atol=1e-5)


def test_logits_are_masked_by_position():
    model = tiny_dalle().eval()
    logits = model(random_text(), torch.randint(0, 64, (2, 64)))
    neg = -torch.finfo(logits.dtype).max
    assert (logits[:, :6, model.num_text_tokens :] == neg).all(), "text positions predict text"
    assert (logits[:, 6:, : model.num_text_tokens] == neg).all(), "image positions predict image codes"


def test_loss_matches_definition():
    model = tiny_dalle(loss_img_weight=3).eval()
    text, codes = random_text(), torch.randint(0, 64, (2, 64))
    logits = model(text, codes)
    ids = model.text_ids(text)
    labels = torch.cat((ids[:, 1:], codes + model.num_text_tokens), dim=1)
    ce = torch.nn.functional.cross_entropy
    lt = ce(logits[:, :6].transpose(1, 2), labels[:, :6])
    li = ce(logits[:, 6:].transpose(1, 2), labels[:, 6:])
    assert torch.allclose(model(text, codes, return_loss=True), (lt + 3 * li) / 4)


@pytest.mark.parametrize("kwargs", [{}, {"share_input_output_emb": True}, {"stable": True}], ids=["plain", "shared", "stable"])
def test_loss_skips_the_forbidden_logits_with_the_same_loss_and_gradients(kwargs):
    """The loss computes only the logits it reads (text x text tokens, image x codes): the same value and gradients
    as the cross-entropy of the whole masked logits (a forbidden logit is -max: exp gives exactly 0)."""
    text, codes = random_text(), torch.randint(0, 64, (2, 64))
    grads = []
    for split in (True, False):
        model = tiny_dalle(loss_img_weight=3, **kwargs)
        if split:
            loss = model(text, codes, return_loss=True)
        else:
            logits, ids = model(text, codes), model.text_ids(text)
            labels = torch.cat((ids[:, 1:], codes + model.num_text_tokens), dim=1)
            ce = torch.nn.functional.cross_entropy
            loss = (ce(logits[:, :6].transpose(1, 2), labels[:, :6]) + 3 * ce(logits[:, 6:].transpose(1, 2),
                                                                              labels[:, 6:])) / 4
        loss.backward()
        grads.append((loss.detach(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}))
    (a, ga), (b, gb) = grads
    torch.testing.assert_close(a, b, rtol=1e-6, atol=0)
    assert ga.keys() == gb.keys() and "to_logits.1.weight" in ga
    for name in ga:
        torch.testing.assert_close(ga[name], gb[name], rtol=1e-5, atol=1e-7, msg=name)


def test_pads_get_unique_ids():
    model = tiny_dalle()
    ids = model.text_ids(torch.tensor([[5, 0, 0, 7, 0, 0]]))
    assert ids.tolist() == [[0, 5, 51, 52, 7, 54, 55]]


@pytest.mark.parametrize("attn_type", ATTN_TYPES)
def test_optimize_for_inference_loads_same_weights_and_gives_same_logits(attn_type):
    model = tiny_dalle(attn_type).eval()
    fast = tiny_dalle(attn_type, optimize_for_inference=True).eval()
    missing = fast.load_state_dict(model.state_dict(), strict=True)
    assert not missing.missing_keys and not missing.unexpected_keys
    text, codes = random_text(), torch.randint(0, 64, (2, 64))
    assert torch.allclose(model(text, codes), fast(text, codes), atol=1e-5)


def test_reversible_gradients_match_plain_two_stream():
    model = tiny_dalle("conv_like", reversible=True, attn_dropout=0.3, ff_dropout=0.3)
    t = model.transformer
    x = torch.randn(2, 40, 32)
    fs = [lambda v, i=i: t._branch(i, "attn", v, t._rotary(40)) for i in range(t.depth)]
    gs = [lambda v, i=i: t._branch(i, "ff", v) for i in range(t.depth)]

    def grads(run):
        model.zero_grad()
        xx = x.clone().requires_grad_()
        torch.manual_seed(123)
        y = run(torch.cat((xx, xx), dim=-1))
        (y * torch.linspace(-1, 1, 64)).sum().backward()
        return [xx.grad] + [p.grad.clone() for p in t.parameters() if p.grad is not None]

    from dalle_pytorch.models.transformer import _ReversibleFunction

    reference = grads(lambda v: Transformer._two_stream(v, fs, gs))
    reversible = grads(lambda v: _ReversibleFunction.apply(v, fs, gs))
    assert len(reference) == len(reversible) > 5
    for a, b in zip(reference, reversible):
        assert torch.allclose(a, b, atol=1e-5), (a - b).abs().max()


def test_token_shift_definition():
    tl, f, c = 3, 2, 8
    x = torch.arange(1, 1 + (tl + f * f) * c, dtype=torch.float).view(1, tl + f * f, c)
    y = shift_tokens_full(x, tl, f)[0]
    x = x[0]
    assert torch.equal(y[0, :4], torch.zeros(4)) and torch.equal(y[1, :4], x[0, :4]) and torch.equal(y[1, 4:], x[1, 4:])
    p = lambda r, cc: tl + r * f + cc  # noqa: E731
    assert torch.equal(y[p(0, 0), :4], torch.zeros(4)), "first row, row start: nothing to shift in"
    assert torch.equal(y[p(0, 1), 2:4], x[p(0, 0), 2:4]), "left quarter from the left neighbour"
    assert torch.equal(y[p(1, 0), :2], x[p(0, 0), :2]), "top quarter from the token above"
    assert torch.equal(y[p(1, 0), 2:4], torch.zeros(2)), "no left neighbour at a row start"
    assert torch.equal(y[p(1, 1), 4:], x[p(1, 1), 4:]), "the other half passes through"


@pytest.mark.parametrize("dim", [8, 10, 13])
def test_token_shift_step_equals_full_shift_bit_for_bit(dim):
    """The one-token shift (three multiply-adds with 0/1 weights over a ring) is pure data movement."""
    tl, f = 3, 3
    n = tl + f * f
    x = torch.randn(2, n, dim)
    full = shift_tokens_full(x, tl, f)
    shift = PreShiftToken(dim, tl, f)
    ring = torch.zeros(2, f, dim)
    arange = torch.arange(n)
    for pos in range(n):
        tables = shift.step_tables(StepPositions.of(torch.tensor(pos), 1, pos + 1, arange), ring.shape[1])
        out = shift_tokens_step(x[:, pos : pos + 1], ring, tables)
        assert torch.equal(out[:, 0], full[:, pos]), pos


@pytest.mark.parametrize("dim_head", [12, 16, 64, 15])
def test_rotary_step_equals_apply_rotary(dim_head):
    from dalle_pytorch.nn.rotary import apply_rotary, apply_rotary_step, rotary_step_tables, rotary_table

    angles = rotary_table(dim_head, 5, 4)
    cos, sin = angles.cos(), angles.sin()
    cos_d, sin_d, swap = rotary_step_tables(cos, sin, dim_head)
    t = torch.randn(2, 3, angles.shape[0], dim_head)
    reference = apply_rotary(cos, sin, t)
    for pos in (0, 4, 5, angles.shape[0] - 1):
        step = apply_rotary_step(cos_d[pos], sin_d[pos], swap, t[:, :, pos])
        torch.testing.assert_close(step, reference[:, :, pos], atol=1e-6, rtol=0)
        r = cos.shape[-1]
        assert torch.equal(step[..., r:], t[:, :, pos, r:]), "channels past the rotary ones pass through"


def test_layerscale_init_by_depth():
    assert (layerscale_init(1), layerscale_init(18), layerscale_init(19), layerscale_init(25)) == (0.1, 0.1, 1e-5, 1e-6)
    model = tiny_dalle()
    assert torch.all(model.transformer.layers[1].attn.scale == 0.1)


def test_shared_layers_are_stored_once():
    model = tiny_dalle(depth=4, attn_types=("full",), shared_attn_ids=(0, 1, 0, 1), shared_ff_ids=(0, 0, 1, 1))
    t = model.transformer
    assert len(t.attns) == 2 and len(t.ffs) == 2
    assert t.attn_index == [0, 1, 0, 1] and t.ff_index == [0, 0, 1, 1]
    loss = model(random_text(), torch.randint(0, 64, (2, 64)), return_loss=True)
    loss.backward()
    assert torch.isfinite(loss)


def test_shared_attention_with_two_types_is_an_error():
    with pytest.raises(ValueError, match="shared_attn_ids"):
        tiny_dalle(depth=2, attn_types=("full", "axial_row"), shared_attn_ids=(0, 0))


def test_share_input_output_emb_uses_views_of_the_output_projection():
    model = tiny_dalle(share_input_output_emb=True)
    with native_state_dict():  # our names hold the shared projection once
        assert not any(k.startswith(("text_emb", "image_emb")) for k in model.state_dict())
    theirs = model.state_dict()  # DALLE-pytorch's repeat it under each embedding, as its DALLE's state_dict does
    assert theirs["text_emb.linear.weight"] is theirs["to_logits.1.weight"]
    assert theirs["image_emb.linear.bias"] is theirs["to_logits.1.bias"]
    w = model.to_logits[1].weight
    with torch.no_grad():
        w[model.num_text_tokens + 3].fill_(2.5)
        w[7].fill_(-1.5)
    assert torch.all(model.image_emb(torch.tensor([3])) == 2.5)
    assert torch.all(model.text_emb(torch.tensor([7])) == -1.5)
    model(random_text(), torch.randint(0, 64, (2, 64)), return_loss=True).backward()
    assert w.grad is not None


@pytest.mark.parametrize("sandwich_norm", [False, True])
def test_stable_and_sandwich(sandwich_norm):
    model = tiny_dalle(stable=True, sandwich_norm=sandwich_norm)
    loss = model(random_text(), torch.randint(0, 64, (2, 64)), return_loss=True)
    loss.backward()
    assert torch.isfinite(loss)
    assert (model.transformer.layers[0].attn.norm_out is not None) == sandwich_norm


def test_null_cond_prob_does_not_mutate_the_callers_text():
    model = tiny_dalle()
    text = random_text()
    before = text.clone()
    model(text, torch.randint(0, 64, (2, 64)), return_loss=True, null_cond_prob=1.0)
    assert torch.equal(text, before)
    # with every caption dropped, the loss equals the loss on empty captions
    empty = torch.zeros_like(text)
    model.eval()
    a = model(text, torch.randint(0, 64, (2, 64), generator=torch.Generator().manual_seed(1)), return_loss=True, null_cond_prob=1.0)
    b = model(empty, torch.randint(0, 64, (2, 64), generator=torch.Generator().manual_seed(1)), return_loss=True)
    assert torch.allclose(a, b)


BAD_INPUTS = {
    "short text": (lambda: torch.ones(2, 5, dtype=torch.long), None),
    "token out of range": (lambda: torch.full((2, 6), 50), None),
    "negative token": (lambda: torch.full((2, 6), -1), None),
    "float text": (lambda: torch.ones(2, 6), None),
    "wrong image size": (lambda: random_text(), lambda: torch.rand(2, 3, 16, 16)),
    "wrong channels": (lambda: random_text(), lambda: torch.rand(2, 1, 32, 32)),
    "code out of range": (lambda: random_text(), lambda: torch.full((2, 64), 64)),
    "too many codes": (lambda: random_text(), lambda: torch.zeros(2, 65, dtype=torch.long)),
    "batch mismatch": (lambda: random_text(), lambda: torch.zeros(3, 64, dtype=torch.long)),
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_inputs_raise_value_error(case):
    model = tiny_dalle()
    text, image = BAD_INPUTS[case]
    with pytest.raises(ValueError):
        model(text(), image() if image else None)


def test_loss_needs_a_whole_image():
    with pytest.raises(ValueError, match="whole image"):
        tiny_dalle()(random_text(), torch.zeros(2, 10, dtype=torch.long), return_loss=True)


def test_bad_attention_type():
    with pytest.raises(ValueError, match="not valid"):
        tiny_dalle("diagonal")


def test_vae_must_look_like_a_vae():
    with pytest.raises(ValueError, match="vae"):
        DALLE(dim=32, vae=torch.nn.Linear(2, 2), depth=1)


def test_sparse_attn_flag_means_block_sparse_layers():
    model = DALLE(dim=32, vae=tiny_vae(), num_text_tokens=50, text_seq_len=6, depth=2, heads=2, dim_head=16,
                  sparse_attn=True, sparse_block_size=8)
    assert model.transformer.attn_types == ("sparse", "sparse")


def test_attention_kernel_policy():
    """'auto' trains each pattern with the kernel measured faster (docs/benchmarks.md)."""
    auto = {t: tiny_dalle(t).transformer.attns[0].masked for t in ATTN_TYPES}
    assert auto == {"full": False, "axial_row": False, "axial_col": False, "conv_like": True, "sparse": True}
    assert all(tiny_dalle(t, attn_kernel="masked").transformer.attns[0].masked for t in ATTN_TYPES)
    assert not any(tiny_dalle(t, attn_kernel="pattern").transformer.attns[0].masked for t in ATTN_TYPES)
    with pytest.raises(ValueError, match="kernel"):
        tiny_dalle(attn_kernel="flash")


@pytest.mark.parametrize("attn_type", ["conv_like", "sparse", "axial_row"])
def test_pattern_kernel_and_auto_give_the_same_loss_and_gradients(attn_type):
    text, codes = random_text(), torch.randint(0, 64, (2, 64))
    grads = []
    for kernel in ("pattern", "auto"):
        model = tiny_dalle(attn_type, attn_kernel=kernel)
        loss = model(text, codes, return_loss=True)
        loss.backward()
        grads.append((loss.detach(), model.transformer.attns[0].to_qkv.weight.grad))
    assert torch.allclose(grads[0][0], grads[1][0], atol=1e-5)
    assert torch.allclose(grads[0][1], grads[1][1], atol=1e-5)
