"""Attention patterns: the mask definitions, and efficient kernels == dense attention with the mask."""
import pytest
import torch

from dalle_pytorch.nn.attention import Attention
from dalle_pytorch.nn.patterns import PatternSpec, draw_random_blocks, pattern_mask
from tests.helpers import ATTN_TYPES, tiny_dalle

TL, F = 4, 6  # text_len (bos + 3), 6x6 grid


def spec(t, **kw):
    rb = draw_random_blocks(TL + F * F, kw.get("block_size", 4), 2, seed=3) if t == "sparse" else ()
    return PatternSpec(t, TL, F, random_blocks=rb, **kw)


def img(r, c):
    return TL + r * F + c


@pytest.mark.parametrize("t", ATTN_TYPES)
def test_shared_rules(t):
    m = pattern_mask(spec(t))
    n = TL + F * F
    assert m.shape == (n, n)
    assert not m.triu(1).any(), "no pattern may look ahead"
    assert torch.equal(m[:TL, :TL], torch.ones(TL, TL, dtype=torch.bool).tril()), "text is causal over text"
    assert m[TL:, :TL].all(), "image queries see every text position"
    assert m.diagonal().all(), "every position sees itself"


def test_axial_row_and_col():
    row, col = pattern_mask(spec("axial_row")), pattern_mask(spec("axial_col"))
    q = img(3, 2)
    assert set(row[q, TL:].nonzero().flatten().tolist()) == {img(3, c) - TL for c in range(3)}
    assert set(col[q, TL:].nonzero().flatten().tolist()) == {img(r, 2) - TL for r in range(4)}


def test_conv_like_up_left_window():
    m = pattern_mask(spec("conv_like", kernel_size=3))  # p = 1: rows r-2..r, cols c-2..c
    q = img(4, 3)
    want = {img(r, c) for r in range(2, 5) for c in range(1, 4)}
    assert set((TL + m[q, TL:].nonzero().flatten()).tolist()) == want


def test_conv_like_dilated_window():
    m = pattern_mask(spec("conv_like", kernel_size=3, dilation=2))  # p = 2: rows r-4, r-2, r
    q = img(4, 5)
    want = {img(r, c) for r in (0, 2, 4) for c in (1, 3, 5)}
    assert set((TL + m[q, TL:].nonzero().flatten()).tolist()) == want


def test_conv_like_centred_variant_is_raster_causal():
    m = pattern_mask(spec("conv_like", kernel_size=3, conv_variant="centred"))
    q = img(2, 2)
    want = {img(r, c) for r in (1, 2) for c in (1, 2, 3) if img(r, c) <= q}
    assert set((TL + m[q, TL:].nonzero().flatten()).tolist()) == want


def test_sparse_blocks():
    s = spec("sparse", block_size=4)
    m = pattern_mask(s)
    # text blocks are global; the local window covers the own block and the 3 before it
    q = TL + F * F - 1
    qb = q // 4
    seen_blocks = {j // 4 for j in m[q].nonzero().flatten().tolist()}
    expected = {0} | set(range(qb - 3, qb + 1)) | set(s.random_blocks[qb])
    assert seen_blocks == expected


def test_bad_specs():
    with pytest.raises(ValueError):
        PatternSpec("nope", TL, F)
    with pytest.raises(ValueError):
        PatternSpec("conv_like", TL, F, kernel_size=4)
    with pytest.raises(ValueError):
        PatternSpec("conv_like", TL, F, conv_variant="diagonal")


KERNEL_CASES = [(t, {}) for t in ATTN_TYPES] + [
    ("conv_like", {"kernel_size": 3, "dilation": 2}),
    ("conv_like", {"conv_variant": "centred"}),
]


@pytest.mark.parametrize("t,extra", KERNEL_CASES)
@pytest.mark.parametrize("stable", [False, True])
@pytest.mark.parametrize("n", [TL - 1, TL + 5, TL + F * F - 1, TL + F * F])
def test_efficient_kernel_equals_masked_attention(t, extra, stable, n):
    torch.manual_seed(0)
    s = spec(t, **extra)
    attn = Attention(16, heads=2, dim_head=8, dropout=0.0, stable=stable, spec=s, kernel="pattern")
    x = torch.randn(3, n, 16)
    fast = attn(x, masked=False)
    dense = attn(x, masked=True)
    assert torch.allclose(fast, dense, atol=1e-5), (fast - dense).abs().max()


def test_sparse_kernel_gradients_match_dense():
    s = spec("sparse")
    attn = Attention(16, heads=2, dim_head=8, dropout=0.0, stable=False, spec=s, kernel="pattern")
    x = torch.randn(2, TL + F * F - 1, 16, requires_grad=True)
    (g1,) = torch.autograd.grad(attn(x, masked=False).square().sum(), x)
    (g2,) = torch.autograd.grad(attn(x, masked=True).square().sum(), x)
    assert torch.allclose(g1, g2, atol=1e-5)


def test_sparse_random_blocks_are_stored_and_restored():
    a = tiny_dalle("sparse", sparse_seed=1)
    b = tiny_dalle("sparse", sparse_seed=2)
    la, lb = a.transformer.attns[0], b.transformer.attns[0]
    assert not torch.equal(la.pattern, lb.pattern), "different seeds draw different patterns"
    b.load_state_dict(a.state_dict())
    assert torch.equal(la.random_blocks, lb.random_blocks)
    assert torch.equal(la.pattern, lb.pattern), "loading restores the saved pattern"
    assert torch.equal(la.kernel_mask, lb.kernel_mask)
