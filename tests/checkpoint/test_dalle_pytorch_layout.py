"""DALLE-pytorch's state-dict layout both ways (models/dalle_pytorch_keys.py): its files load through
`DALLE.load_state_dict` as its scripts call it, and `dalle-convert --to dalle_pytorch` writes what it wrote.

The oracle is the fixtures written by DALLE-pytorch 1.6.6 itself: our layout of each of their models must be
their `weights`, key for key and bit for bit (the rotary table included). The files this writes were also
loaded (strictly) by DALLE-pytorch 1.6.6 in its own environment, with the same logits (docs/migrating.md).
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dalle_pytorch import DALLE, DiscreteVAE
from dalle_pytorch.checkpoint import load_checkpoint
from dalle_pytorch.cli import convert
from dalle_pytorch.errors import CheckpointError
from dalle_pytorch.models.dalle_pytorch_keys import dalle_pytorch_state_dict, native_state_dict
from dalle_pytorch.models.openai_dvae import OpenAIDiscreteVAE
from dalle_pytorch.models.vqgan import VQGanVAE

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
PRETRAINED = FIXTURES / "pretrained_vae"
OURS_166 = ["full_plain", "full_shift_rotary", "reversible", "shared_layers", "axial", "conv_like"]


def _weights(path):
    return torch.load(path, weights_only=True)


def _same(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    different = [k for k in a if a[k].shape != b[k].shape or not torch.equal(a[k], b[k])]
    assert not different, different[:5]


@pytest.mark.parametrize("name", OURS_166)
def test_our_layout_of_their_model_is_their_state_dict(name):
    path = FIXTURES / f"{name}-v1.6.6.pt"
    _same(dalle_pytorch_state_dict(load_checkpoint(path).model), _weights(path)["weights"])


@pytest.mark.parametrize("name", OURS_166)
def test_state_dict_is_their_state_dict(name, tmp_path):
    """`DALLE.state_dict()` holds what DALLE-pytorch's DALLE.state_dict() holds for the same weights (its
    train_dalle.py torch.saves it as 'weights'): the same keys and tensors; our module names inside
    native_state_dict(), and our files keep them."""
    path = FIXTURES / f"{name}-v1.6.6.pt"
    model = load_checkpoint(path).model
    _same(model.state_dict(), _weights(path)["weights"])
    with native_state_dict():
        native = model.state_dict()
    assert any(k.startswith("transformer.attns.") for k in native)
    assert not any(k.startswith("transformer.layers.layers.") for k in native)
    wrapped = torch.nn.ModuleDict({"module": model}).state_dict()  # nested, as under DDP: under its prefix
    _same({k[len("module."):]: v for k, v in wrapped.items()}, _weights(path)["weights"])


def test_state_dict_of_a_model_they_cannot_express_keeps_our_names():
    from dalle_pytorch import quantize

    model = DALLE(dim=32, vae=DiscreteVAE(image_size=32, num_layers=2, num_tokens=64, codebook_dim=16, hidden_dim=8),
                  num_text_tokens=100, text_seq_len=8, depth=2, heads=2, dim_head=16).eval()
    quantize(model, "int8")
    with native_state_dict():
        native = model.state_dict()
    assert sorted(model.state_dict()) == sorted(native)
    with pytest.raises(ValueError, match="quantized"):
        dalle_pytorch_state_dict(model)


@pytest.mark.parametrize("name, vae", [
    ("dalle_gumbel", lambda: VQGanVAE(PRETRAINED / "gumbel.ckpt", PRETRAINED / "gumbel.yaml")),
    ("dalle_dvae", lambda: OpenAIDiscreteVAE(PRETRAINED / "encoder.pkl", PRETRAINED / "decoder.pkl")),
])
def test_the_layout_over_pretrained_vaes(name, vae):
    path = PRETRAINED / f"{name}-v1.6.6.pt"
    _same(dalle_pytorch_state_dict(load_checkpoint(path, vae=vae()).model), _weights(path)["weights"])


@pytest.mark.parametrize("name", [f"{n}-v1.6.6" for n in OURS_166] + ["full_shift_rotary-v1.2.2"])
def test_load_state_dict_takes_their_weights_as_their_generate_py_does(name):
    """generate.py: DALLE(vae=DiscreteVAE(**vae_params), **dalle_params).load_state_dict(weights); then its logits."""
    obj = _weights(FIXTURES / f"{name}.pt")
    dalle = DALLE(vae=DiscreteVAE(**obj["vae_params"]), **obj["hparams"])
    dalle.load_state_dict(obj["weights"])  # strict
    reference = load_checkpoint(FIXTURES / f"{name}.pt").model
    _same(dalle.state_dict(), reference.state_dict())
    expected = _weights(FIXTURES / f"{name}.expected.pt")
    with torch.no_grad():
        logits = dalle.eval()(expected["text"], expected["image_codes"])
    positions = expected.get("logit_positions")
    got = logits if positions is None else logits[:, positions]
    keep = expected["logits"] > -1e30  # the masked logits are -max on both sides
    torch.testing.assert_close(got[keep], expected["logits"][keep], atol=1e-4, rtol=0)


def test_load_state_dict_refuses_diverging_shared_copies():
    obj = _weights(FIXTURES / "shared_layers-v1.6.6.pt")
    weights = dict(obj["weights"])
    key = "transformer.layers.layers.2.0.fn.fn.fn.fn.fn.to_qkv.weight"  # depth 2 shares attention 0 with depth 0
    weights[key] = weights[key] + 1
    dalle = DALLE(vae=DiscreteVAE(**obj["vae_params"]), **obj["hparams"])
    with pytest.raises(CheckpointError, match="differs from another copy of the shared parameter"):
        dalle.load_state_dict(weights)


def test_a_fresh_model_round_trips_through_their_layout():
    """Settings no fixture has (sandwich norm, stable, the four-pattern mix; reversible without shift / rotary)."""
    vae = DiscreteVAE(image_size=32, num_layers=2, num_tokens=64, codebook_dim=16, hidden_dim=8)
    for kwargs in (dict(attn_types=("full", "axial_row", "axial_col", "conv_like"), depth=4, sandwich_norm=True,
                        stable=True), dict(reversible=True, shift_tokens=False, rotary_emb=False, depth=2)):
        torch.manual_seed(0)
        a = DALLE(dim=32, vae=vae, num_text_tokens=100, text_seq_len=8, heads=2, dim_head=16, **kwargs)
        torch.manual_seed(1)
        b = DALLE(dim=32, vae=vae, num_text_tokens=100, text_seq_len=8, heads=2, dim_head=16, **kwargs)
        theirs = dalle_pytorch_state_dict(a)
        assert not any(k.startswith("transformer.attns.") for k in theirs)
        b.load_state_dict(theirs)
        _same(b.state_dict(), a.state_dict())


def test_convert_to_dalle_pytorch_writes_what_it_wrote(tmp_path, capsys):
    path = FIXTURES / "shared_layers-v1.6.6.pt"
    ours, back = tmp_path / "ours.safetensors", tmp_path / "back.pt"
    assert convert.main([str(path), str(ours)]) == 0
    assert convert.main([str(ours), str(back), "--to", "dalle_pytorch"]) == 0
    original, written = _weights(path), _weights(back)
    _same(written["weights"], original["weights"])
    hp = written["hparams"]  # train_dalle.py's hparams, and the constructor arguments its script leaves out
    assert {k: hp[k] for k in original["hparams"]} == original["hparams"]
    assert {k: v for k, v in hp.items() if k not in original["hparams"]} == {"sandwich_norm": False}
    assert written["vae_class_name"] == "DiscreteVAE" and written["version"] == "1.6.6"
    rebuilt = DiscreteVAE(**written["vae_params"])  # its vae_params build the same VAE
    assert rebuilt.config == load_checkpoint(path).model.vae.config
    assert "DALLE-pytorch 1.6.6's format" in capsys.readouterr().out


def test_convert_old_axial_names(tmp_path):
    vae = DiscreteVAE(image_size=32, num_layers=2, num_tokens=64, codebook_dim=16, hidden_dim=8)
    model = DALLE(dim=32, vae=vae, num_text_tokens=100, text_seq_len=8, depth=1, heads=2, dim_head=16,
                  rotary_emb=False)
    from dalle_pytorch.checkpoint import save

    save(model, tmp_path / "m.safetensors")
    for flag, key in (([], "image_pos_emb.weights.0"), (["--old_axial_names"], "image_pos_emb.weights_0")):
        out = tmp_path / f"m{len(flag)}.pt"
        assert convert.main([str(tmp_path / "m.safetensors"), str(out), "--to", "dalle_pytorch", *flag]) == 0
        assert key in _weights(out)["weights"]
        _same(load_checkpoint(out).model.state_dict(), model.state_dict())  # and it loads here again


def test_models_dalle_pytorch_cannot_express_are_refused(tmp_path, capsys):
    from dalle_pytorch import quantize
    from dalle_pytorch.checkpoint import save

    vae = DiscreteVAE(image_size=32, num_layers=2, num_tokens=64, codebook_dim=16, hidden_dim=8)
    cases = {"ff_mult": DALLE(dim=32, vae=vae, num_text_tokens=100, text_seq_len=8, depth=1, heads=2, dim_head=16,
                              ff_mult=2),
             "quantized": quantize(DALLE(dim=64, vae=vae, num_text_tokens=100, text_seq_len=8, depth=1, heads=2,
                                         dim_head=32), "int8")}
    for what, model in cases.items():
        save(model, tmp_path / f"{what}.safetensors")
        assert convert.main([str(tmp_path / f"{what}.safetensors"), str(tmp_path / f"{what}.pt"),
                             "--to", "dalle_pytorch"]) == 1
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1 and ("ff_mult=2" in err or "quantized" in err)
        assert not (tmp_path / f"{what}.pt").exists()
