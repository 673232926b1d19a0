"""Masked completion (inpainting / outpainting): the codes a mask keeps come back exactly, the others are
sampled in raster order with the cache, cached == uncached, and a mask of the top rows is priming."""
from __future__ import annotations

import pytest
import torch

from tests.helpers import random_text, tiny_dalle

F = 8  # tiny_dalle's code grid: 8 x 8 codes of a 32 x 32 image


def sample(model, text, **kwargs):
    return model.generate_images(text, return_codes=True, generator=torch.Generator().manual_seed(3), **kwargs)


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    model = tiny_dalle().eval()
    img = torch.rand(1, 3, 32, 32)
    known = model.vae.get_codebook_indices(img)[0]  # (64,)
    return model, img, known


def holes() -> torch.Tensor:
    """A pixel mask keeping everything but a square in the middle and the right edge."""
    mask = torch.ones(32, 32)
    mask[8:20, 12:24] = 0
    mask[:, 28:] = 0
    return mask


@pytest.mark.parametrize("kwargs", [{}, {"cond_scale": 3.0}, {"num_images": 2}])
def test_kept_codes_come_back_and_cached_equals_uncached(setup, kwargs):
    model, img, known = setup
    text = random_text(2)
    mask = holes()
    keep = torch.nn.functional.avg_pool2d(mask[None, None], 4).flatten() >= 0.5
    assert 0 < int(keep.sum()) < 64
    cached = sample(model, text, img=img, mask=mask, **kwargs)
    uncached = sample(model, text, img=img, mask=mask, use_cache=False, **kwargs)
    assert torch.equal(cached, uncached)
    assert torch.equal(cached[:, keep], known[keep].expand(cached.shape[0], -1))
    assert not torch.equal(cached[:, ~keep], known[~keep].expand(cached.shape[0], -1))


def test_a_mask_of_the_top_rows_is_priming(setup):
    model, img, known = setup
    text = random_text(2)
    rows = 3
    mask = torch.zeros(32, 32)
    mask[: rows * 4] = 1  # 3 rows of codes (each code covers 4 x 4 pixels)
    code_mask = torch.zeros(F, F, dtype=torch.bool)
    code_mask[:rows] = True
    primed = sample(model, text, img=img, num_init_img_tokens=rows * F)
    for m in (mask, code_mask):
        assert torch.equal(sample(model, text, img=img, mask=m), primed)
        assert torch.equal(sample(model, text, img=img, mask=m, cond_scale=2.0),
                           sample(model, text, img=img, num_init_img_tokens=rows * F, cond_scale=2.0))


def test_per_image_masks_and_whole_images(setup):
    model, img, known = setup
    text = random_text(2)
    left, right = torch.zeros(F, F, dtype=torch.bool), torch.zeros(F, F, dtype=torch.bool)
    left[:, : F // 2] = True
    right[:, F // 2 :] = True
    codes = sample(model, text, img=img, mask=torch.stack((left, right)))
    assert torch.equal(codes[0, left.flatten()], known[left.flatten()])
    assert torch.equal(codes[1, right.flatten()], known[right.flatten()])
    everything = sample(model, text, img=img, mask=torch.ones(32, 32))
    assert torch.equal(everything, known.expand(2, -1))


def test_bad_masks_are_clear_errors(setup):
    model, img, _ = setup
    text = random_text(2)
    with pytest.raises(ValueError, match="mask needs img"):
        sample(model, text, mask=torch.ones(32, 32))
    with pytest.raises(ValueError, match="mask must be"):
        sample(model, text, img=img, mask=torch.ones(16, 16))
    with pytest.raises(ValueError, match="not both"):
        sample(model, text, img=img, mask=torch.ones(32, 32), num_init_img_tokens=8)
