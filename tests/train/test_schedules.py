"""DALLE-pytorch 1.6.6's schedules (dalle_pytorch/train/schedules.py) against direct transcriptions of its loops."""
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dalle_pytorch.train.schedules import (PLATEAU_DEFAULTS, VAE_DEFAULTS, AnnealedTemperature, anneal_temperature,
                                           dalle_plateau_scheduler, vae_learning_rate, vae_temperature, vae_update_due,
                                           vae_update_steps, vae_updates_before)


def train_vae_loop(epochs, batches_per_epoch, starting_temp=1.0, temp_min=0.5, anneal_rate=1e-6,
                   learning_rate=1e-3, lr_decay_rate=0.98):
    """DALLE-pytorch's train_vae.py loop with the model left out: (temperature, lr) each batch is trained with."""
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.Adam([param], lr=learning_rate)
    sched = torch.optim.lr_scheduler.ExponentialLR(optimizer=opt, gamma=lr_decay_rate)
    seen = []
    global_step = 0
    temp = starting_temp
    for epoch in range(epochs):
        for i in range(batches_per_epoch):
            seen.append((temp, opt.param_groups[0]["lr"]))  # distr_vae(images, ..., temp=temp); opt.step()
            opt.step()
            if i % 100 == 0:
                temp = max(temp * math.exp(-anneal_rate * global_step), temp_min)
                sched.step()
            global_step += 1
    return seen


@pytest.mark.parametrize("epochs,batches_per_epoch", [(1, 1201), (3, 250), (4, 100), (2, 101), (30, 7)])
def test_vae_schedule_equals_the_loop_step_by_step(epochs, batches_per_epoch):
    kw = dict(starting_temp=0.9, temp_min=0.05, anneal_rate=3e-5, learning_rate=2e-3, lr_decay_rate=0.9)
    loop = train_vae_loop(epochs, batches_per_epoch, **kw)
    lr_kw = dict(learning_rate=kw["learning_rate"], lr_decay_rate=kw["lr_decay_rate"])
    t_kw = dict(starting_temp=kw["starting_temp"], temp_min=kw["temp_min"], anneal_rate=kw["anneal_rate"])
    for g, (temp, lr) in enumerate(loop):
        assert vae_temperature(g, batches_per_epoch=batches_per_epoch, **t_kw) == temp  # bit-exact
        assert vae_learning_rate(g, batches_per_epoch=batches_per_epoch, **lr_kw) == lr
    # an epoch as long as the run is the same as batches_per_epoch=None
    if epochs == 1:
        assert [vae_temperature(g, **t_kw) for g in range(len(loop))] == [t for t, _ in loop]


def test_defaults_reach_temp_min_after_batch_11800():
    loop = train_vae_loop(1, 12_000)
    first_at_min = next(g for g, (temp, _) in enumerate(loop) if temp == 0.5)
    assert first_at_min == 11_801  # the update after batch 11,800 (its 119th) clamps to 0.5
    assert vae_temperature(11_801) == 0.5
    before = vae_temperature(11_800)
    assert before == loop[11_800][0]
    assert before == pytest.approx(math.exp(-1e-6 * 100 * (117 * 118 // 2)), rel=1e-12)  # 0.50143...
    assert 0.5014 < before < 0.5015
    assert vae_temperature(0) == vae_temperature(1) == 1.0  # the first update multiplies by exp(0)
    # while the lr decays from batch 1 on: 1e-3 for batch 0, 0.98e-3 for batches 1..100
    assert vae_learning_rate(0) == 1e-3 and vae_learning_rate(1) == vae_learning_rate(100) == 1e-3 * 0.98
    assert vae_learning_rate(101) == 1e-3 * 0.98 * 0.98
    # our per-step closed form (training.build_vae_task) needs ln 2 / 1e-6 steps for the same temperature
    assert math.ceil(math.log(2) / VAE_DEFAULTS["anneal_rate"]) == 693_148


def test_epoch_restarts_add_updates():
    # 150 batches an epoch: updates after batches 0, 100 | 150, 250 | 300, 400 | ...
    steps = vae_update_steps(150)
    assert [next(steps) for _ in range(6)] == [0, 100, 150, 250, 300, 400]
    assert [g for g in range(451) if vae_update_due(g, 150)] == [0, 100, 150, 250, 300, 400, 450]
    assert vae_updates_before(151, 150) == 3 and vae_updates_before(151) == 2


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 5000), st.one_of(st.none(), st.integers(1, 700)), st.integers(1, 150))
def test_update_count_closed_form(global_step, batches_per_epoch, every):
    steps = vae_update_steps(batches_per_epoch, every)
    count = 0
    for step in steps:
        if step >= global_step:
            break
        count += 1
    assert vae_updates_before(global_step, batches_per_epoch, every) == count
    due = vae_update_due(global_step, batches_per_epoch, every)
    assert due == (vae_updates_before(global_step + 1, batches_per_epoch, every) == count + 1)


def test_anneal_temperature_is_one_update():
    assert anneal_temperature(1.0, 0) == 1.0
    assert anneal_temperature(1.0, 1000, anneal_rate=1e-3, temp_min=0.1) == math.exp(-1.0)
    assert anneal_temperature(0.6, 10**6) == 0.5


def test_bad_counters():
    with pytest.raises(ValueError, match="global_step"):
        vae_temperature(-1)
    with pytest.raises(ValueError, match="batches_per_epoch"):
        vae_update_due(3, 0)
    with pytest.raises(ValueError, match="every"):
        vae_updates_before(3, None, 0)


def reduce_lr_on_plateau_transcribed(losses, lr, factor=0.5, patience=10, cooldown=10, min_lr=1e-6,
                                     threshold=1e-4):
    """torch's ReduceLROnPlateau rules (mode min, relative threshold), written out: lr after each step."""
    best, bad, cooling, lrs = math.inf, 0, 0, []
    for loss in losses:
        if loss < best * (1 - threshold):
            best, bad = loss, 0
        else:
            bad += 1
        if cooling > 0:
            cooling -= 1
            bad = 0
        if bad > patience:
            new_lr = max(lr * factor, min_lr)
            if lr - new_lr > 1e-8:  # torch's eps
                lr = new_lr
            cooling, bad = cooldown, 0
        lrs.append(lr)
    return lrs


def test_plateau_scheduler_has_dalle_pytorchs_settings():
    assert PLATEAU_DEFAULTS == dict(mode="min", factor=0.5, patience=10, cooldown=10, min_lr=1e-6)
    opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=3e-4)
    sched = dalle_plateau_scheduler(opt)
    assert (sched.mode, sched.factor, sched.patience, sched.cooldown, sched.min_lrs) == ("min", 0.5, 10, 10, [1e-6])
    # one step per epoch with the epoch's last loss: improving, then flat for long enough to reach min_lr
    losses = [5.0, 4.0, 3.5, 3.4] + [3.4] * 200 + [1.0] + [1.0] * 30
    got = []
    for loss in losses:
        sched.step(loss)
        got.append(opt.param_groups[0]["lr"])
    assert got == reduce_lr_on_plateau_transcribed(losses, 3e-4)
    flat = reduce_lr_on_plateau_transcribed([1.0] * 40, 3e-4)
    assert [e + 1 for e in range(1, 40) if flat[e] < flat[e - 1]] == [12, 33]  # 11 bad epochs, then 10 cooling
    assert min(got) == 1e-6


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 3000), min_size=1, max_size=30), st.one_of(st.none(), st.integers(1, 400)))
def test_annealed_temperature_equals_vae_temperature(queries, batches_per_epoch):
    """The carried-forward temperature is vae_temperature bit for bit, in any order of steps (resumes go back)."""
    kw = dict(starting_temp=0.95, temp_min=0.1, anneal_rate=2e-5)
    temperature = AnnealedTemperature(batches_per_epoch=batches_per_epoch, **kw)
    for g in sorted(queries)[: len(queries) // 2] + queries:  # forward steps, then jumps back and forth
        assert temperature(g) == vae_temperature(g, batches_per_epoch=batches_per_epoch, **kw)
