"""Per-row decode steps (continuous batching): rows at different positions share one step, and each
row's logits equal the full forward at its own position; row views and row moves of the cache."""
import pytest
import torch

from tests.helpers import ATTN_TYPES, prefilled_caches, random_text, tiny_dalle

CASES = [dict(attn_type=a) for a in ATTN_TYPES] + [
    dict(attn_type="full", shift_tokens=False, rotary_emb=False, stable=True),
    dict(attn_type="axial_row", reversible=True),
    dict(attn_type="conv_like", rotary_emb=False, sandwich_norm=True),
]


def _staggered(model, text, codes, done):
    """Advance row r alone (scalar steps on a one-row view) to `done[r]` codes, then step all rows
    together with per-row positions until the furthest row reaches the end.  Returns the max
    |logits - full forward| over every step of every row."""
    tl, v = model.text_len, model.num_text_tokens
    done = list(done)
    with torch.inference_mode():
        full = model(text, codes)
        cache = model.setup_cache(text.shape[0])
        model.prefill(model.text_ids(text), None, cache)
        errs = []
        for r in range(text.shape[0]):
            view = cache.narrow_rows(r, 1)
            for t in range(done[r]):
                last = model.decode_step(codes[r : r + 1, t], torch.tensor(tl + t), view, length=tl + t + 1)
                errs.append((last[0] - full[r, tl + t, v:]).abs().max())
        while max(done) < model.image_seq_len - 1:
            token = torch.stack([codes[r, d] for r, d in enumerate(done)])
            pos = torch.tensor([tl + d for d in done])
            last = model.decode_step(token, pos, cache, length=int(pos.max()) + 1)
            for r, d in enumerate(done):
                errs.append((last[r] - full[r, tl + d, v:]).abs().max())
            done = [d + 1 for d in done]
    return max(errs)


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
def test_rows_at_different_positions_equal_the_full_forward(case):
    case = dict(case)
    model = tiny_dalle(case.pop("attn_type"), **case).eval()
    codes = torch.randint(0, 64, (3, 64))
    assert _staggered(model, random_text(3), codes, [0, 5, 17]) < 1e-5


def test_per_row_step_at_one_position_equals_the_scalar_step():
    model = tiny_dalle("axial_col").eval()
    text, codes = random_text(), torch.randint(0, 64, (2, 64))
    with torch.inference_mode():
        caches = prefilled_caches(model, text)
        for t in range(12):
            pos = model.text_len + t
            a = model.decode_step(codes[:, t], torch.tensor(pos), caches[0], length=pos + 1)
            b = model.decode_step(codes[:, t], torch.tensor([pos, pos]), caches[1], length=pos + 1)
            assert (a - b).abs().max() < 1e-5


def test_narrow_rows_is_a_view_and_move_rows_copies_every_position():
    model = tiny_dalle().eval()
    cache = model.setup_cache(4)
    view = cache.narrow_rows(1, 2)
    assert view.batch == 2 and view.kv[0].k.data_ptr() == cache.kv[0].k[1].data_ptr()
    for t in view.tensors():
        t.fill_(1.0)
    assert all(float(t[1:3].min()) == 1.0 and float(t[0].abs().max()) == 0.0 for t in cache.tensors())
    cache.move_rows(torch.tensor([2]), torch.tensor([0]))
    assert all(float(t[0].min()) == 1.0 and float(t[3].abs().max()) == 0.0 for t in cache.tensors())


def test_generate_codes_callback_sees_every_code_and_changes_nothing():
    model = tiny_dalle().eval()
    text = random_text()
    seen = []

    def callback(filled, codes):
        seen.append((filled, codes[:, :filled].clone()))

    a = model.generate_images(text, return_codes=True, generator=torch.Generator().manual_seed(3), callback=callback,
                              cond_scale=2.0)
    b = model.generate_images(text, return_codes=True, generator=torch.Generator().manual_seed(3), cond_scale=2.0)
    assert torch.equal(a, b)
    assert [f for f, _ in seen] == list(range(1, 65))
    assert all(torch.equal(c, a[:, :f]) for f, c in seen)
    seen.clear()
    c = model.generate_images(text, return_codes=True, use_cache=False, generator=torch.Generator().manual_seed(3),
                              callback=callback, cond_scale=2.0)
    assert torch.equal(a, c) and len(seen) == 64
