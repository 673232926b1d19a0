import json

import pytest
import torch

from dalle_pytorch.models.clip import CLIP

TINY = dict(
    dim_text=32,
    dim_image=32,
    dim_latent=16,
    num_text_tokens=100,
    text_enc_depth=1,
    text_seq_len=8,
    text_heads=2,
    visual_enc_depth=1,
    visual_heads=2,
    visual_image_size=16,
    visual_patch_size=8,
)


@pytest.fixture
def clip():
    torch.manual_seed(0)
    return CLIP(**TINY)


def batch(b=3):
    text = torch.randint(1, 100, (b, 8))
    text[-1, 5:] = 0
    return text, torch.rand(b, 3, 16, 16)


def test_similarity_shape(clip):
    text, image = batch()
    sim = clip(text, image)
    assert sim.shape == (3,) and torch.isfinite(sim).all()
    # similarity is a scaled cosine
    assert (sim.abs() <= clip.temperature.exp() + 1e-5).all()


def test_loss_backward(clip):
    text, image = batch()
    loss = clip(text, image, return_loss=True)
    assert loss.shape == () and torch.isfinite(loss)
    loss.backward()
    assert clip.temperature.grad is not None
    assert all(torch.isfinite(p.grad).all() for p in clip.parameters() if p.grad is not None)


def test_identical_pair_batch(clip):
    text, image = batch(1)
    sim = clip(text.repeat(4, 1), image.repeat(4, 1, 1, 1))
    assert sim.shape == (4,)
    torch.testing.assert_close(sim, sim[:1].expand(4))


def test_padding_is_masked(clip):
    clip.eval()
    text, image = batch(1)
    text[0, 4:] = 0
    explicit = clip(text, image, text_mask=text != 0)
    torch.testing.assert_close(clip(text, image), explicit)
    # padded positions do not influence the score: same as the unpadded, shorter sequence
    torch.testing.assert_close(clip(text[:, :4], image), explicit)


def test_config_round_trip(clip):
    cfg = json.loads(json.dumps(clip.config))
    rebuilt = CLIP(**cfg)
    rebuilt.load_state_dict(clip.state_dict(), strict=True)


def test_bad_inputs(clip):
    text, image = batch()
    with pytest.raises(ValueError, match="16"):
        clip(text, torch.rand(3, 3, 32, 32))
    with pytest.raises(ValueError, match="text length"):
        clip(torch.randint(1, 100, (3, 9)), image)
    with pytest.raises(ValueError, match="channels|shape"):
        clip(text, torch.rand(3, 1, 16, 16))
    with pytest.raises(ValueError, match="batch"):
        clip(text[:2], image)
    with pytest.raises(ValueError, match="divisible"):
        CLIP(**{**TINY, "visual_patch_size": 5})
