import json
from pathlib import Path

import pytest
import torch

from dalle_pytorch.models.vae import DiscreteVAE

FIXTURES = sorted(p for p in (Path(__file__).resolve().parents[1] / "fixtures").glob("*.pt") if not p.name.endswith(".expected.pt"))

TINY = dict(image_size=32, num_layers=2, hidden_dim=16, num_tokens=64, codebook_dim=32)


def tiny_vae(**kwargs):
    torch.manual_seed(0)
    return DiscreteVAE(**{**TINY, **kwargs})


def test_shapes():
    vae = tiny_vae(num_resnet_blocks=1)
    img = torch.rand(2, 3, 32, 32)
    assert vae.fmap_size == 8 and vae.image_seq_len == 64
    logits = vae(img, return_logits=True)
    assert logits.shape == (2, 64, 8, 8)
    codes = vae.get_codebook_indices(img)
    assert codes.shape == (2, 64) and codes.dtype == torch.long
    assert torch.equal(codes, logits.argmax(dim=1).flatten(1))
    assert vae.decode(codes).shape == (2, 3, 32, 32)
    assert vae(img).shape == (2, 3, 32, 32)


def test_get_codebook_indices_restores_mode():
    vae = tiny_vae()
    vae.train()
    vae.get_codebook_indices(torch.rand(1, 3, 32, 32))
    assert vae.training
    vae.eval()
    vae.get_codebook_indices(torch.rand(1, 3, 32, 32))
    assert not vae.training


@pytest.mark.parametrize(
    "kwargs",
    [dict(), dict(straight_through=True), dict(reinmax=True), dict(smooth_l1_loss=True, kl_div_loss_weight=0.1)],
)
def test_loss_backward(kwargs):
    vae = tiny_vae(**kwargs)
    img = torch.rand(2, 3, 32, 32)
    loss, recons = vae(img, return_loss=True, return_recons=True)
    assert loss.shape == () and torch.isfinite(loss)
    assert recons.shape == img.shape
    loss.backward()
    grads = [p.grad for p in vae.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert vae.encoder[0][0].weight.grad.abs().sum() > 0  # gradient reaches the encoder


def test_reinmax_forward_is_one_hot():
    from dalle_pytorch.models.vae import reinmax_one_hot

    logits = torch.randn(4, 10, requires_grad=True)
    out = reinmax_one_hot(logits, 0.9, dim=-1)
    assert torch.equal(out.detach().sum(-1), torch.ones(4))
    assert set(out.detach().unique().tolist()) <= {0.0, 1.0}
    (out * torch.randn(4, 10)).sum().backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


def test_recons_space():
    vae = tiny_vae()
    img = torch.rand(1, 3, 32, 32)
    torch.manual_seed(1)
    _, recons = vae(img, return_loss=True, return_recons=True)
    torch.manual_seed(1)
    out = vae(img)
    torch.testing.assert_close(recons, out)


def test_input_not_mutated():
    vae = tiny_vae()
    img = torch.rand(2, 3, 32, 32)
    copy = img.clone()
    vae(img, return_loss=True)
    vae.get_codebook_indices(img)
    assert torch.equal(img, copy)


def test_bad_inputs():
    with pytest.raises(ValueError, match="power of 2"):
        DiscreteVAE(image_size=48)
    with pytest.raises(ValueError, match="num_layers"):
        DiscreteVAE(image_size=32, num_layers=0)
    vae = tiny_vae()
    with pytest.raises(ValueError, match="32x32"):
        vae(torch.rand(1, 3, 16, 16))
    with pytest.raises(ValueError, match="channels"):
        vae(torch.rand(1, 1, 32, 32))
    with pytest.raises(ValueError, match="codes"):
        vae.decode(torch.zeros(1, 63, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\[0, 64\)"):
        vae.decode(torch.full((1, 64), 64, dtype=torch.long))


def test_no_normalization():
    vae = tiny_vae(normalization=None)
    assert vae.config["normalization"] is None
    img = torch.rand(1, 3, 32, 32)
    assert torch.isfinite(vae(img, return_loss=True))
    assert DiscreteVAE(**vae.config).normalization is None


def test_config_round_trip():
    vae = tiny_vae(num_resnet_blocks=2, reinmax=True, normalization=((0.1, 0.2, 0.3), (0.4, 0.5, 0.6)))
    cfg = json.loads(json.dumps(vae.config))
    rebuilt = DiscreteVAE(**cfg)
    assert rebuilt.config == vae.config
    rebuilt.load_state_dict(vae.state_dict(), strict=True)
    codes = torch.randint(0, 64, (1, 64))
    torch.testing.assert_close(rebuilt.decode(codes), vae.decode(codes))


@pytest.mark.parametrize("path", FIXTURES, ids=lambda p: p.stem)
def test_fixture_decode(path):
    ckpt = torch.load(path, weights_only=True)
    expected = torch.load(path.with_name(path.stem + ".expected.pt"), weights_only=True)
    vae = DiscreteVAE(**ckpt["vae_params"])
    state = {k[len("vae."):]: v for k, v in ckpt["weights"].items() if k.startswith("vae.")}
    vae.load_state_dict(state, strict=True)
    vae.eval()
    with torch.no_grad():
        images = vae.decode(expected["image_codes"])
    torch.testing.assert_close(images, expected["images"] * 0.5 + 0.5, atol=1e-5, rtol=0)


def test_fixtures_present():
    assert len(FIXTURES) >= 1


def test_decode_grid_decodes_a_canvas_as_one_image():
    """A grid wider than the trained one decodes in one pass (a convolutional decoder); two images
    side by side come back as each image's own decoding away from where they meet, and blended (not
    cut) within the decoder's receptive field of the join: no seam of the tiling."""
    vae = tiny_vae(num_resnet_blocks=1).eval()
    g = torch.Generator().manual_seed(0)
    a, b = torch.randint(0, 64, (2, 1, 8, 8), generator=g)
    with torch.no_grad():
        canvas = vae.decode_grid(torch.cat((a, b), dim=2))
        left, right = vae.decode(a.flatten(1)), vae.decode(b.flatten(1))
    assert canvas.shape == (1, 3, 32, 64)
    torch.testing.assert_close(vae.decode_grid(a), left, atol=0, rtol=0)
    margin = 12  # three codes: the receptive field of this decoder (1 resnet block) reaches 11 px across the join
    torch.testing.assert_close(canvas[..., : 32 - margin], left[..., : 32 - margin], atol=1e-6, rtol=0)
    torch.testing.assert_close(canvas[..., 32 + margin :], right[..., margin:], atol=1e-6, rtol=0)
    assert not torch.allclose(canvas[..., 30:32], left[..., 30:32], atol=1e-4)  # the join is decoded, not pasted
    with pytest.raises(ValueError, match="integer grid"):
        vae.decode_grid(a.flatten(1))
    with pytest.raises(ValueError, match=r"lie in \[0, 64\)"):
        vae.decode_grid(a + 64)
