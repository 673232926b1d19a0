"""The one cached step (`DALLE.step`): t >= 1 tokens per row at shared or per-row starts, equal to the
uncached forward's logits at those positions for every layer option; steps that are undone (rejected
drafts) never leak into later ones."""
import random

import pytest
import torch

from tests.helpers import ATTN_TYPES, random_text, tiny_dalle

CASES = [dict(attn_type=a) for a in ATTN_TYPES] + [
    dict(attn_type="axial_col", shift_tokens=False, rotary_emb=False),
    dict(attn_type="conv_like", stable=True),
    dict(attn_type="sparse", reversible=True),
    dict(attn_type="full", sandwich_norm=True, depth=4, attn_types=("axial_row", "full"), shared_attn_ids=(0, 1, 0, 1),
         shared_ff_ids=(0, 0, 1, 1), share_input_output_emb=True),
    dict(attn_type="conv_like", optimize_for_inference=True, rotary_emb=False),
]


def _case_id(case):
    return "-".join(f"{k}={v}" for k, v in case.items() if k != "attn_types")


def _model(case):
    case = dict(case)
    return tiny_dalle(case.pop("attn_type"), **case).eval()


def _windows(model, text, codes, t, seed, shared=False):
    """Decode the image codes in steps of t tokens per row: each step feeds row r's true codes for the
    first a_r positions of its window and random wrong codes (drafts to reject) after them, keeps
    a_r (1 <= a_r <= t, random per row unless `shared`), and the next step starts after the kept ones.

    Returns the max |step logits - uncached logits| over every kept position, and how many steps
    had unequal starts."""
    rng = random.Random(seed)
    tl, v, last = model.text_len, model.num_text_tokens, model.total_seq_len  # positions 0..last-1 are fed
    b = text.shape[0]
    with torch.inference_mode():
        full = model(text, codes)  # (b, last, V): logits after each position
        cache = model.setup_cache(b, rewind=t - 1)
        model.prefill(model.text_ids(text), None, cache)
        filled = [tl] * b  # each row's next position
        errs, unequal = [], 0
        while max(filled) + t <= last:
            keep = [rng.randint(1, t)] * b if shared else [rng.randint(1, t) for _ in range(b)]
            tokens = torch.randint(0, model.num_image_tokens, (b, t))
            for r in range(b):
                tokens[r, : keep[r]] = codes[r, filled[r] - tl : filled[r] - tl + keep[r]]
            start = torch.tensor(filled[0]) if len(set(filled)) == 1 else torch.tensor(filled)
            unequal += start.dim() == 1
            logits = model.step(tokens, start, cache, length=max(filled) + t)
            for r in range(b):
                errs.append((logits[r, : keep[r]] - full[r, filled[r] : filled[r] + keep[r], v:]).abs().max())
                filled[r] += keep[r]
    return max(errs), unequal


@pytest.mark.parametrize("case", CASES, ids=_case_id)
@pytest.mark.parametrize("t", [1, 3])
def test_steps_with_rejected_drafts_and_unequal_starts_equal_the_full_forward(case, t):
    model = _model(case)
    codes = torch.randint(0, 64, (3, 64))
    err, unequal = _windows(model, random_text(3), codes, t, seed=len(_case_id(case)))
    assert err < 1e-5
    assert t == 1 or unequal > 3  # the rows drifted apart, so per-row starts were exercised


@pytest.mark.parametrize("case", CASES[:5], ids=_case_id)
def test_a_shared_start_window_equals_the_full_forward(case):
    model = _model(case)
    err, unequal = _windows(model, random_text(2), torch.randint(0, 64, (2, 64)), 4, seed=1, shared=True)
    assert err < 1e-5 and unequal == 0


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_one_step_over_every_image_position_equals_the_full_forward(case):
    """t = n: the whole image part in one step (the longest window a cache allows)."""
    model = _model(case)
    text, codes = random_text(), torch.randint(0, 64, (2, 64))
    tl, n = model.text_len, model.image_seq_len - 1
    with torch.inference_mode():
        full = model(text, codes)
        cache = model.setup_cache(2)
        model.prefill(model.text_ids(text), None, cache)
        for start in (torch.tensor(tl), torch.tensor([tl, tl])):  # shared, then per row (rewritten in place)
            logits = model.step(codes[:, :n], start, cache, length=tl + n)
            assert (logits - full[:, tl:, model.num_text_tokens :]).abs().max() < 1e-5


def test_static_shapes_and_text_positions():
    """length=None (the whole cache, for compile) and text tokens (image=False) take the same step."""
    model = _model(dict(attn_type="axial_row"))
    text = random_text()
    ids = model.text_ids(text)
    with torch.inference_mode():
        full = model(text)
        cache = model.setup_cache(2, rewind=2)
        model.prefill(ids[:, :2], None, cache)
        logits = model.step(ids[:, 2:5], torch.tensor(2), cache, image=False)
        assert (logits - full[:, 2:5, : model.num_text_tokens]).abs().max() < 1e-5
        logits = model.step(ids[:, 3:6], torch.tensor([3, 3]), cache, image=False)  # rewound by 2, per row
        assert (logits - full[:, 3:6, : model.num_text_tokens]).abs().max() < 1e-5


def test_a_long_prefill_in_chunks_equals_one_chunk(monkeypatch):
    """A prefill runs through the step in chunks (bounded attention memory); the chunking changes nothing."""
    model = _model(dict(attn_type="conv_like"))
    text, codes = random_text(), torch.randint(0, 64, (2, 64))
    with torch.inference_mode():
        full = model(text, codes)
        whole = model.prefill(model.text_ids(text), codes[:, :40], model.setup_cache(2))
        monkeypatch.setattr(model, "PREFILL_CHUNK", 5)
        cache = model.setup_cache(2)
        chunked = model.prefill(model.text_ids(text), codes[:, :40], cache)
        assert cache.length == model.text_len + 40
        assert (chunked - whole).abs().max() < 1e-5 and (chunked - full[:, model.text_len + 39]).abs().max() < 1e-5
        step = model.decode_step(codes[:, 40], torch.tensor(model.text_len + 40), cache, length=model.text_len + 41)
        assert (step - full[:, model.text_len + 40, model.num_text_tokens :]).abs().max() < 1e-5


def test_rewinding_further_than_the_cache_allows_is_what_the_rings_cannot_hold():
    """The control for the tests above: with token shift, a cache allocated without `rewind` loses the
    rows a rewound step reads (so `rewind` is needed, and the equality above is not luck)."""
    model = _model(dict(attn_type="full"))
    text, codes = random_text(), torch.randint(0, 64, (2, 64))
    tl, v = model.text_len, model.num_text_tokens
    with torch.inference_mode():
        full = model(text, codes)
        errs = {}
        s = 20  # in the third row of the 8 x 8 grid: its tokens read the row above
        for rewind in (0, 7):
            cache = model.setup_cache(2, rewind=rewind)
            model.prefill(model.text_ids(text), codes[:, :s], cache)
            drafts = torch.randint(0, 64, (2, 8))
            drafts[:, 0] = codes[:, s]
            model.step(drafts, torch.tensor(tl + s), cache, length=tl + s + 8)  # keep only the first token
            logits = model.step(codes[:, s + 1 : s + 9], torch.tensor(tl + s + 1), cache, length=tl + s + 9)
            errs[rewind] = (logits - full[:, tl + s + 1 : tl + s + 9, v:]).abs().max()
    assert errs[7] < 1e-5 and errs[0] > 1e-3
