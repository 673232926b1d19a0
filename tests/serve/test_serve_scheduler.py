"""The continuous-batching scheduler (no HTTP): a request's images do not depend on what else is in the
batch, a lone request equals generate.py, rows join and leave mid-run, and every accepted request ends
with its images or an error (cancellation, timeout, crashes, a full queue, shutdown)."""
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dalle_pytorch.checkpoint import save
from dalle_pytorch.errors import GenerationError
from dalle_pytorch.formats.images import tensor_to_pil
from dalle_pytorch.generation.sampling import SamplingConfig
from dalle_pytorch.pipeline.text_to_image import Pipeline
from dalle_pytorch.serve import scheduler as scheduler_module
from dalle_pytorch.serve.batch import RunningBatch, prefill
from dalle_pytorch.serve.scheduler import ImageRequest, QueueFull, RequestFailed, Scheduler, ShuttingDown
from tests.helpers import tiny_pipeline, tiny_vae

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parents[2]
RED = "a red circle on a blue background"
GREEN = "a green square on a black background"
PLAIN = SamplingConfig(filter_thres=0.9)
GUIDED = SamplingConfig(filter_thres=0.9, cond_scale=3.0)


def alone(pipe, prompt, n, seed, sampling=PLAIN, batch_size=4, negative=None, speculative=None):
    return pipe.generate(prompt, num_images=n, seed=seed, batch_size=batch_size, sampling=sampling,
                         negative_prompt=negative, speculative=speculative).images


# -- images and logits do not depend on the batch ------------------------------------------------------


@pytest.mark.parametrize("flags", [
    ["--num_images", "4", "--batch_size", "4"],
    ["--num_images", "3", "--batch_size", "2", "--cond_scale", "3", "--null_text", GREEN],
    ["--num_images", "2", "--batch_size", "2", "--top_p", "0.8", "--temperature", "0.7", "--top_k", "0.5"],
])
def test_a_lone_request_gives_generate_py_images(pipe, tmp_path, flags):
    path = tmp_path / "tiny.safetensors"
    save(pipe.model, path, tokenizer=pipe.tokenizer)
    import dalle_pytorch.cli.generate as generate

    (result,) = generate.main(generate.parse_args(["--dalle_path", str(path), "--text", RED, "--seed", "11",
                                                   "--outputs_dir", str(tmp_path), "--no_progress", *flags]))
    args = generate.parse_args(["--text", RED, *flags])
    sampling = SamplingConfig(filter_thres=args.filter_thres, top_p=args.top_p, temperature=args.temperature,
                              cond_scale=args.cond_scale)
    scheduler = Scheduler(Pipeline.from_checkpoint(path, device="cpu"), max_rows=16)
    ticket = scheduler.submit(ImageRequest(RED, n=args.num_images, seed=11, sampling=sampling,
                                           batch_size=args.batch_size, negative_prompt=args.negative_prompt))
    scheduler.run_until_idle()
    served = ticket.result(0)
    assert served.seeds == result.seeds
    for file, image in zip(result.files, served.images):
        with Image.open(file) as png:
            assert np.array_equal(np.asarray(png), np.asarray(tensor_to_pil(image)))
    assert scheduler.batch.row_steps == 0  # alone, every step is the scalar step generate.py runs


def test_teacher_forced_logits_of_every_row_equal_the_request_decoded_alone(pipe):
    """Request A decoded alone vs with B joining at step 3 (other positions: per-row steps), C joining
    at step 6 and B leaving at step 12: A's, B's and C's logits equal their lone runs (atol 1e-4)."""
    model = pipe.model
    text = {name: pipe.tokenize(caps) for name, caps in
            {"A": [RED, ""], "B": [GREEN], "C": [GREEN, RED]}.items()}
    index = {"A": torch.tensor([0, 0, 1, 1]), "B": torch.tensor([0, 0, 0]), "C": torch.tensor([0, 1])}
    forced = {name: torch.randint(0, 64, (len(i), 16)) for name, i in index.items()}
    joins, leaves = {"A": 0, "B": 3, "C": 6}, {"B": 12}

    def run(names):
        batch, seqs, logits = RunningBatch(model, 16), {}, {n: [] for n in names}
        for step in range(32):
            for n in names:
                if joins[n] == step:
                    seqs[n], first = batch.join(prefill(model, text[n]), index[n], owner=n)
                    logits[n].append(first)
            # a sequence leaves when told to, or once its 15th code is fed (the 16th is never fed)
            gone = [n for n in seqs if leaves.get(n) == step or step - joins[n] == 15]
            batch.leave([seqs.pop(n) for n in gone])
            if seqs:
                order = [s.owner for s in batch.sequences]
                for n, out in zip(order, batch.step([forced[n][:, step - joins[n]] for n in order])):
                    logits[n].append(out)
        return logits, batch

    together, batch = run(["A", "B", "C"])
    assert batch.row_steps > 0 and batch.scalar_steps > 0  # A alone at first, then rows at several positions
    for name in ("A", "B", "C"):
        lone, _ = run([name])
        assert len(together[name]) == len(lone[name]) > 1
        for a, b in zip(together[name], lone[name]):
            assert (a - b).abs().max() < 1e-4


def test_requests_joining_and_leaving_mid_run_get_their_lone_images(pipe):
    scheduler = Scheduler(pipe, max_rows=32)
    first = scheduler.submit(ImageRequest(RED, n=4, seed=1, sampling=GUIDED))
    for _ in range(4):
        scheduler.step()
    second = scheduler.submit(ImageRequest(GREEN, n=2, seed=2))
    for _ in range(3):
        scheduler.step()
    third = scheduler.submit(ImageRequest(GREEN, n=3, seed=3, batch_size=2, sampling=SamplingConfig(top_p=0.8),
                                          preview_every=4))
    scheduler.run_until_idle()
    assert torch.equal(first.result(0).images, alone(pipe, RED, 4, 1, GUIDED))
    assert torch.equal(second.result(0).images, alone(pipe, GREEN, 2, 2))
    assert torch.equal(third.result(0).images, alone(pipe, GREEN, 3, 3, SamplingConfig(top_p=0.8), batch_size=2))
    assert scheduler.batch.row_steps > 0 and scheduler.batch.rows == 0
    m = scheduler.metrics()
    assert m["completed"] == 3 and m["images_served"] == 9 and m["prefix_cache"]["hits"] >= 1


def test_speculative_rows_alone_and_in_a_busy_batch_give_generate_images_codes(pipe):
    """--speculative K: each group verifies its window with its own generator, so a request gives the images
    generate_images(speculative=K) samples with its seed, alone and while other requests join and leave."""
    scheduler = Scheduler(pipe, max_rows=32, speculative=4)
    first = scheduler.submit(ImageRequest(RED, n=4, seed=1, sampling=GUIDED))
    scheduler.step()
    scheduler.step()
    second = scheduler.submit(ImageRequest(GREEN, n=2, seed=2))
    scheduler.run_until_idle()
    lone = Scheduler(pipe, max_rows=32, speculative=4)
    alone_ticket = lone.submit(ImageRequest(GREEN, n=2, seed=2))
    lone.run_until_idle()
    assert torch.equal(first.result(0).images, alone(pipe, RED, 4, 1, GUIDED, speculative=4))
    assert torch.equal(second.result(0).images, alone(pipe, GREEN, 2, 2, speculative=4))
    assert torch.equal(alone_ticket.result(0).images, second.result(0).images)
    assert second.result(0).settings["speculative"] == 4
    assert lone.stats["steps"] < 16  # fewer steps than the 16 codes of an image
    assert all(0 < n < 15 for n in alone_ticket.result(0).timings["forward_passes"])
    assert not torch.equal(second.result(0).images, alone(pipe, GREEN, 2, 2))  # other samples than plain decoding


def test_events_progress_previews_and_queue_positions(pipe):
    scheduler = Scheduler(pipe, max_rows=4)
    events = {1: [], 2: []}
    a = scheduler.submit(ImageRequest(RED, n=4, seed=0, preview_every=4), on_event=lambda e: events[1].append(e))
    b = scheduler.submit(ImageRequest(GREEN, n=1, seed=0), on_event=lambda e: events[2].append(e))
    scheduler.run_until_idle()
    kinds = [e.kind for e in events[1]]
    assert kinds[0] == "started" and kinds[-1] == "done" and kinds.count("preview") == 3
    previews = [e.data for e in events[1] if e.kind == "preview"]
    assert [p["filled"] for p in previews] == [4, 8, 12] and previews[0]["images"].shape == (4, 3, 32, 32)
    progress = [e.data["done"] for e in events[1] if e.kind == "progress"]
    assert progress == sorted(progress) and progress[-1] == 16
    # b waited (the 4 rows were taken by a): queued at place 1, then started after a finished
    assert [e.kind for e in events[2]][:2] == ["queued", "started"] and events[2][0].data["position"] == 1
    assert a.result(0).timings["queued_s"] <= b.result(0).timings["queued_s"]


def test_groups_of_waiting_requests_are_admitted_round_robin(pipe):
    scheduler = Scheduler(pipe, max_rows=2)
    a = scheduler.submit(ImageRequest(RED, n=4, seed=0, batch_size=1))
    b = scheduler.submit(ImageRequest(GREEN, n=1, seed=0, batch_size=1))
    scheduler.step()  # two rows: a's first group and b's only group, not a's first two
    assert sorted(g.ticket.id for g in scheduler._running) == [a.id, b.id]
    scheduler.run_until_idle()
    assert b.result(0).timings["total_s"] < a.result(0).timings["total_s"]


# -- admission and faults ----------------------------------------------------------------------------


@pytest.mark.parametrize("request_kwargs, reason", [
    (dict(prompt="  "), "prompt is empty"),
    (dict(prompt=RED + " , " + RED), "longer than"),
    (dict(n=17), "n must be an integer from 1 to 16"),
    (dict(n=0), "n must be an integer from 1 to 16"),
    (dict(negative_prompt=GREEN), "only has an effect with guidance"),
    (dict(batch_size=9, sampling=GUIDED), r"batch_size must be an integer from 1 to 8 \(guidance"),
    (dict(seed=-1), "seed must be in"),
    (dict(seed=2**64 - 1, n=8), "seed must be in"),
])
def test_invalid_requests_are_refused_with_a_reason(pipe, request_kwargs, reason):
    scheduler = Scheduler(pipe, max_rows=16, max_images=16)
    with pytest.raises(GenerationError, match=reason):
        scheduler.submit(ImageRequest(**{"prompt": RED, **request_kwargs}))
    assert scheduler.metrics()["accepted"] == 0


def test_a_full_queue_refuses_with_retry_after(pipe):
    """The queue is what waits beyond the free rows: a request taking every row, then max_queue more, then 429."""
    scheduler = Scheduler(pipe, max_rows=4, max_queue=2)
    tickets = [scheduler.submit(ImageRequest(RED, n=4, batch_size=4, seed=0))]  # takes the 4 rows at the next step
    tickets += [scheduler.submit(ImageRequest(RED, n=1, seed=i)) for i in range(1, 3)]
    with pytest.raises(QueueFull) as e:
        scheduler.submit(ImageRequest(RED, n=1, seed=9))
    assert e.value.retry_after >= 1 and scheduler.metrics()["rejected"] == 1
    scheduler.run_until_idle()
    assert [t.result(0).images.shape[0] for t in tickets] == [4, 1, 1]


def test_no_429_while_rows_are_free(pipe):
    """Rows freed by finished requests are filled at the next step's start; the requests that will take them
    do not count as queued meanwhile, so clients resubmitting as their answers arrive are not refused."""
    scheduler = Scheduler(pipe, max_rows=8, max_queue=1)
    tickets = [scheduler.submit(ImageRequest(RED, n=1, seed=i)) for i in range(8)]  # 8 free rows: none queued
    assert scheduler.metrics()["queue_length"] == 0
    tickets.append(scheduler.submit(ImageRequest(RED, n=1, seed=8)))  # the one request beyond the rows: queued
    assert scheduler.metrics()["queue_length"] == 1
    with pytest.raises(QueueFull):
        scheduler.submit(ImageRequest(RED, n=1, seed=9))
    scheduler.run_until_idle()
    assert all(t.result(0).images.shape == (1, 3, 32, 32) for t in tickets)


def test_cancel_takes_a_request_out_and_the_others_are_unaffected(pipe):
    scheduler = Scheduler(pipe, max_rows=16)
    doomed = scheduler.submit(ImageRequest(RED, n=4, seed=0, sampling=GUIDED))
    kept = scheduler.submit(ImageRequest(GREEN, n=2, seed=4))
    waiting = scheduler.submit(ImageRequest(GREEN, n=16, seed=5))  # does not fit yet
    for _ in range(5):
        scheduler.step()
    scheduler.cancel(doomed, "client disconnected")
    scheduler.cancel(waiting, "client disconnected")
    scheduler.step()
    assert scheduler.batch.rows == 2  # only `kept`'s rows are left
    scheduler.run_until_idle()
    for t in (doomed, waiting):
        with pytest.raises(RequestFailed, match="client disconnected") as e:
            t.result(0)
        assert e.value.kind == "cancelled"
    assert torch.equal(kept.result(0).images, alone(pipe, GREEN, 2, 4))
    assert scheduler.metrics()["cancelled"] == 2


def test_a_request_past_its_timeout_ends_with_an_error(pipe):
    scheduler = Scheduler(pipe, max_rows=16)
    slow = scheduler.submit(ImageRequest(RED, n=2, seed=0, timeout=1e-6))
    other = scheduler.submit(ImageRequest(GREEN, n=1, seed=0))
    scheduler.run_until_idle()
    with pytest.raises(RequestFailed, match="timed out") as e:
        slow.result(0)
    assert e.value.kind == "timed_out" and other.result(0).images.shape[0] == 1


def test_a_crash_inside_one_request_does_not_stop_the_loop(pipe, monkeypatch):
    real_next_codes = scheduler_module.next_codes

    def next_codes(logits, config, generator=None, **kwargs):
        if config.temperature == 0.5:
            raise RuntimeError("boom")
        return real_next_codes(logits, config, generator, **kwargs)

    monkeypatch.setattr(scheduler_module, "next_codes", next_codes)

    def broken_consumer(event):
        if event.kind == "progress" and event.data["done"] > 5:
            raise ValueError("consumer went away")

    scheduler = Scheduler(pipe, max_rows=32).start()
    try:
        crash = scheduler.submit(ImageRequest(RED, n=2, seed=0, sampling=SamplingConfig(temperature=0.5)))
        broken = scheduler.submit(ImageRequest(RED, n=2, seed=0), on_event=broken_consumer)
        fine = scheduler.submit(ImageRequest(GREEN, n=2, seed=1))
        with pytest.raises(RequestFailed, match="sampling failed: boom"):
            crash.result(30)
        with pytest.raises(RequestFailed, match="event handler failed: consumer went away"):
            broken.result(30)
        assert torch.equal(fine.result(30).images, alone(pipe, GREEN, 2, 1))
        later = scheduler.submit(ImageRequest(GREEN, n=1, seed=2))
        assert later.result(30).images.shape[0] == 1
    finally:
        scheduler.shutdown(grace=5)
    assert scheduler.metrics()["failed"] == 2


def test_a_failed_decode_step_fails_the_batch_but_not_the_loop(pipe, monkeypatch):
    scheduler = Scheduler(pipe, max_rows=16)
    victim = scheduler.submit(ImageRequest(RED, n=1, seed=0))
    scheduler.step()
    real_step = scheduler.batch.step
    monkeypatch.setattr(scheduler.batch, "step", lambda tokens: (_ for _ in ()).throw(RuntimeError("out of memory")))
    scheduler.step()
    monkeypatch.setattr(scheduler.batch, "step", real_step)
    with pytest.raises(RequestFailed, match="decode step failed: out of memory"):
        victim.result(0)
    assert scheduler.batch.rows == 0
    after = scheduler.submit(ImageRequest(RED, n=1, seed=0))
    scheduler.run_until_idle()
    assert torch.equal(after.result(0).images, alone(pipe, RED, 1, 0))


def test_concurrent_submitters_and_shutdown_answer_every_request(pipe):
    scheduler = Scheduler(pipe, max_rows=8, max_queue=64).start()
    tickets, lock = [], threading.Lock()

    def client(i):
        t = scheduler.submit(ImageRequest(RED if i % 2 else GREEN, n=1 + i % 3, seed=i))
        with lock:
            tickets.append(t)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(12)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    scheduler.shutdown(grace=0.05)  # some finish, the rest are cancelled: none is left hanging
    outcomes = []
    for t in tickets:
        try:
            outcomes.append(t.result(0).images.shape[0] == t.request.n)
        except RequestFailed as e:
            outcomes.append(e.kind == "cancelled" and "shutting down" in str(e))
    assert len(outcomes) == 12 and all(outcomes)
    with pytest.raises(ShuttingDown):
        scheduler.submit(ImageRequest(RED, n=1))


def test_prefix_cache_is_bounded_and_reuses_prefills(pipe):
    scheduler = Scheduler(pipe, max_rows=16, prefix_cache_entries=2)
    white = "a white triangle on a green background"
    for caption in (RED, GREEN, RED, white, RED, GREEN):  # LRU: white evicts GREEN, GREEN evicts white
        scheduler.submit(ImageRequest(caption, n=1, seed=0))
        scheduler.run_until_idle()
    stats = scheduler.metrics()["prefix_cache"]
    assert stats == dict(stats, entries=2, hits=2, misses=4, evictions=2)


@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_quantized_rows_alone_and_in_a_busy_batch_give_generate_images_codes(mode):
    """A server over a quantized model (--quantize): its products are batch-invariant, so a request's images
    are those Pipeline.generate samples with its seed, alone and beside other requests; the mode is a setting."""
    import copy

    from dalle_pytorch import quantize

    base = tiny_pipeline(vae=tiny_vae(num_layers=3), dim=64, dim_head=32)
    pipe = Pipeline(quantize(copy.deepcopy(base.model), mode, 32 if mode == "int4" else None), base.tokenizer)
    scheduler = Scheduler(pipe, max_rows=32)
    first = scheduler.submit(ImageRequest(RED, n=3, seed=1, sampling=GUIDED))
    scheduler.step()
    second = scheduler.submit(ImageRequest(GREEN, n=2, seed=2))
    scheduler.run_until_idle()
    assert torch.equal(first.result(0).images, alone(pipe, RED, 3, 1, GUIDED))
    assert torch.equal(second.result(0).images, alone(pipe, GREEN, 2, 2))
    assert second.result(0).settings["quantize"] == mode
