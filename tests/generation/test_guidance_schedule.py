"""Guidance schedules (`SamplingConfig.cond_schedule`, issue #28): parsing and errors; the rows each
decode step feeds (2R inside an interval, R outside it, the skipped null rows caught up in one step);
"constant" and interval:0:1 unchanged; cached == uncached for every schedule; speculative decoding
samples the scheduled distribution exactly; a quantized model runs a schedule."""
import itertools

import pytest
import torch

from dalle_pytorch import quantize
from dalle_pytorch.generation.decode import generate_codes
from dalle_pytorch.generation.sampling import SamplingConfig, sampling_probs
from tests.generation.test_speculative import _chi2_and_threshold, _enumerable, _histogram
from tests.helpers import random_text, tiny_dalle

SCHEDULES = ["constant", "interval:0:1", "interval:0:0.5", "interval:0.5:1", "interval:0.25:0.75", "linear"]


def _codes(model, text, schedule, seed=0, cond_scale=3.0, **kwargs):
    sampling = SamplingConfig(cond_scale=cond_scale, cond_schedule=schedule, filter_thres=0.5)
    return generate_codes(model, text, sampling, num_images=2, generator=torch.Generator().manual_seed(seed), **kwargs)


@pytest.fixture(scope="module")
def model():
    return tiny_dalle().eval()


def test_schedules_parse_to_spans_and_scales():
    interval = SamplingConfig(cond_scale=3.0, cond_schedule="interval:0:0.5")
    assert interval.guidance_span(256) == (0, 128) and interval.guidance_span(255) == (0, 128)  # ceil(127.5)
    assert [interval.scale_at(t, 255) for t in (0, 127, 128, 254)] == [3.0, 3.0, 1.0, 1.0]
    # A * I is exact: 0.3 * 10 is 3, not 3.0000000000000004 (which would round up to 4)
    assert SamplingConfig(cond_scale=2.0, cond_schedule="interval:0.3:1").guidance_span(10) == (3, 10)
    linear = SamplingConfig(cond_scale=3.0, cond_schedule="linear")
    assert [linear.scale_at(t, 5) for t in range(5)] == [1.0, 1.5, 2.0, 2.5, 3.0] and linear.guidance_span(5) == (0, 5)
    constant = SamplingConfig(cond_scale=3.0)
    assert constant.guidance_span(64) == (0, 64) and constant.scale_at(10, 64) == 3.0
    assert SamplingConfig().guidance_span(64) == (0, 0) and SamplingConfig().scale_at(3, 64) == 1.0
    linear_record = SamplingConfig(cond_scale=3.0, cond_schedule="linear").to_dict()
    assert linear_record["cond_schedule"] == "linear" and SamplingConfig(**linear_record) == linear
    # constant guidance is recorded as before (no field), and such a record (every earlier one) rebuilds it
    assert "cond_schedule" not in constant.to_dict() and SamplingConfig(**constant.to_dict()) == constant


@pytest.mark.parametrize("schedule,message", [
    ("interval:0.5:0.5", "needs 0 <= A < B <= 1"), ("interval:0.6:0.2", "needs 0 <= A < B <= 1"),
    ("interval:0:1.5", "needs 0 <= A < B <= 1"), ("interval:-0.1:1", "needs 0 <= A < B <= 1"),
    ("interval:a:b", "must be one of constant, interval:A:B, linear"), ("interval:0.5", "must be one of"),
    ("cosine", "must be one of"), ("interval:nan:1", "must be one of"), (3, "must be a string"),
])
def test_bad_schedules_are_one_line_errors(schedule, message):
    with pytest.raises(ValueError, match=message) as e:
        SamplingConfig(cond_scale=3.0, cond_schedule=schedule)
    assert "\n" not in str(e.value)


def test_a_schedule_without_guidance_is_an_error():
    with pytest.raises(ValueError, match="only has an effect with guidance: set cond_scale != 1"):
        SamplingConfig(cond_schedule="interval:0:0.5")


class _RowSpy:
    """Records the (rows, tokens) of every `model.step` call after the prefill."""

    def __init__(self, model, monkeypatch):
        self.calls = []
        real = model.step

        def step(tokens, start, cache, **kwargs):
            self.calls.append(tuple(tokens.shape))
            return real(tokens, start, cache, **kwargs)

        monkeypatch.setattr(model, "step", step)


@pytest.mark.parametrize("schedule,expected", [
    # 8 x 8 = 64 codes, R = 4 rows (2 captions x 2 images): one step feeds position t + 1 for t = 0..62
    ("constant", [(8, 1)] * 63),
    ("interval:0:0.5", [(8, 1)] * 31 + [(4, 1)] * 32),  # positions 1..31 with the null rows, 32..63 without
    # positions 1..15 without; the step into position 16 feeds R rows, then the null rows catch up over
    # codes 0..15 in one 16-token step; 16..47 with them (the steps into 17..47), 48.. without
    ("interval:0.25:0.75", [(4, 1)] * 15 + [(4, 1), (4, 16)] + [(8, 1)] * 31 + [(4, 1)] * 16),
    ("linear", [(8, 1)] * 63),
])
def test_the_null_rows_leave_when_the_interval_ends_and_join_where_it_starts(model, monkeypatch, schedule, expected):
    spy = _RowSpy(model, monkeypatch)
    _codes(model, random_text(), schedule)
    assert spy.calls == expected


def test_without_guidance_every_step_feeds_the_image_rows(model, monkeypatch):
    spy = _RowSpy(model, monkeypatch)
    generate_codes(model, random_text(), SamplingConfig(filter_thres=0.5), num_images=2,
                   generator=torch.Generator().manual_seed(0))
    assert spy.calls == [(4, 1)] * 63


def test_an_interval_ending_before_the_priming_codes_feeds_the_image_rows_only(model, monkeypatch):
    img = torch.randint(0, model.num_image_tokens, (1, model.image_seq_len))
    spy = _RowSpy(model, monkeypatch)
    _codes(model, random_text(), "interval:0:0.25", img=img, num_init_img_tokens=20)
    assert spy.calls == [(4, 1)] * 43


def test_interval_0_1_is_constant_guidance(model):
    text = random_text()
    assert torch.equal(_codes(model, text, "interval:0:1"), _codes(model, text, "constant"))
    assert not torch.equal(_codes(model, text, "interval:0:0.5"), _codes(model, text, "constant"))


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("case", ["plain", "priming", "mask"])
def test_cached_equals_uncached_for_every_schedule(model, schedule, case):
    text = random_text()
    img = torch.randint(0, model.num_image_tokens, (1, model.image_seq_len))
    kwargs = {"plain": {}, "priming": dict(img=img, num_init_img_tokens=24),
              "mask": dict(img=img, mask=torch.arange(64).reshape(8, 8) % 3 == 0)}[case]
    cached = _codes(model, text, schedule, use_cache=True, **kwargs)
    assert torch.equal(cached, _codes(model, text, schedule, use_cache=False, **kwargs))


@pytest.mark.parametrize("schedule", ["interval:0.5:1", "linear"])
def test_a_quantized_model_samples_a_schedule_cached_as_uncached(schedule):
    q = quantize(tiny_dalle(dim=64, dim_head=32).eval(), "int8")
    text = random_text()
    assert torch.equal(_codes(q, text, schedule), _codes(q, text, schedule, use_cache=False))
    assert _codes(q, text, schedule, speculative=4).shape == (4, q.image_seq_len)


def _exact_scheduled(model, text, sampling):
    """The probability of each of the 256 images of the enumerable model under a scheduled guidance."""
    images = torch.tensor(list(itertools.product(range(4), repeat=4)))
    n = images.shape[0]
    with torch.inference_mode():
        tl, v = model.text_seq_len, model.num_text_tokens
        cond = model(text.expand(n, -1), images)[:, tl:, v:]
        null = model(torch.zeros_like(text).expand(n, -1), images)[:, tl:, v:]
        scale = torch.tensor([sampling.scale_at(t, 4) for t in range(4)])[None, :, None]
        p = sampling_probs(torch.where(scale == 1, cond, null + (cond - null) * scale), sampling,
                           vocab_size=model.total_tokens)
    return p.gather(-1, images[..., None])[..., 0].prod(dim=1)


@pytest.mark.parametrize("schedule", ["interval:0:0.5", "linear"])
def test_speculative_samples_follow_the_scheduled_distribution(schedule):
    # seed 2: a model whose caption matters enough for the schedules to differ (total variation 0.04 from constant)
    model, text = _enumerable(seed=2), torch.tensor([[3, 5, 0]])
    sampling = dict(cond_scale=4.0, filter_thres=0.3, temperature=0.8, cond_schedule=schedule)
    probs = _exact_scheduled(model, text, SamplingConfig(**sampling))
    for window in (None, 4):
        codes = model.generate_images(text, num_images=20000, return_codes=True, speculative=window,
                                      generator=torch.Generator().manual_seed(1), **sampling)
        chi2, threshold = _chi2_and_threshold(_histogram(codes), probs)
        assert chi2 < threshold, (window, chi2, threshold)
    constant = _exact_scheduled(model, text, SamplingConfig(**{**sampling, "cond_schedule": "constant"}))
    chi2, threshold = _chi2_and_threshold(_histogram(codes), constant)
    assert chi2 > threshold  # the control: the test tells the schedule from constant guidance
