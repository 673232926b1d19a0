"""DALLE-pytorch 1.6.6's building blocks under their module paths (`dalle_pytorch.transformer`, `.attention`,
`.reversible`): each built with DALLE-pytorch's arguments, given the weights its own layer had, returns the
output its own layer returned (tests/fixtures/dalle_pytorch_modules/modules.pt, written by DALLE-pytorch 1.6.6
itself: make_fixtures.py there)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

import dalle_pytorch.attention as attention
import dalle_pytorch.reversible as reversible
import dalle_pytorch.transformer as transformer

CASES = torch.load(Path(__file__).resolve().parents[1] / "fixtures" / "dalle_pytorch_modules" / "modules.pt",
                   weights_only=True)


def _build(case):
    if case["cls"] in ("SequentialSequence", "ReversibleSequence"):
        def fg():
            return nn.Sequential(nn.LayerNorm(32), nn.Linear(32, 32), nn.GELU())

        return getattr(reversible, case["cls"])(nn.ModuleList([nn.ModuleList([fg(), fg()]) for _ in range(2)]))
    module = transformer if case["cls"] == "Transformer" else attention
    return getattr(module, case["cls"])(**case["kwargs"])


@pytest.mark.parametrize("name", list(CASES))
def test_their_weights_give_their_outputs(name):
    case = CASES[name]
    module = _build(case).eval()
    module.load_state_dict(case["state_dict"])  # strict, in DALLE-pytorch's key layout
    with torch.no_grad():
        y = module(case["x"], **case["call"])
    torch.testing.assert_close(y, case["y"], atol=2e-6, rtol=0)


def test_a_control_wrong_weights_are_caught():
    """The comparison above would fail on a wrong layer: the same fixture with one weight perturbed."""
    case = CASES["axial_0"]
    module = _build(case).eval()
    state = dict(case["state_dict"])
    state["to_qkv.weight"] = state["to_qkv.weight"] + 1e-2
    module.load_state_dict(state)
    with torch.no_grad():
        assert (module(case["x"], **case["call"]) - case["y"]).abs().max() > 1e-4


def test_the_transformer_is_ours_and_trains():
    from dalle_pytorch.models.transformer import Transformer as Ours

    case = CASES["transformer_reversible_shared"]
    module = _build(case)
    assert isinstance(module, Ours)
    module.load_state_dict(case["state_dict"])
    x = case["x"].clone().requires_grad_()
    module(x).square().mean().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_what_is_not_reproduced_says_so():
    with pytest.raises(ValueError, match="DeepSpeed's block-sparse"):
        attention.SparseAttention(dim=32, seq_len=20)
    with pytest.raises(ValueError, match="sparse_attn"):
        transformer.Transformer(dim=32, depth=1, seq_len=20, image_fmap_size=4, sparse_attn=True)
    with pytest.raises(ValueError, match="causal=False"):
        transformer.Transformer(dim=32, depth=1, seq_len=20, image_fmap_size=4, causal=False)
    with pytest.raises(TypeError, match="cache"):
        attention.Attention(dim=32, seq_len=20)(torch.randn(1, 4, 32), cache={})
