"""`train_dalle.py --dalle_path` with DALLE-pytorch 1.6.6 files, and exact resumes of its schedules.

The files in tests/fixtures/dalle_pytorch_resume/ were written by the real DALLE-pytorch 1.6.6 with
their optimizer and --lr_decay states, together with the step DALLE-pytorch takes after resuming
from them: the restored optimizer must take the same step, the plateau the same decisions, and a
killed run that resumes must continue the schedules exactly (docs/dalle_pytorch_compat.md).
"""
from __future__ import annotations

import shutil

import pytest
import torch

from dalle_pytorch.checkpoint import load_checkpoint
from dalle_pytorch.models.dalle_pytorch_keys import legacy_key
from dalle_pytorch.cli.messages import flag_text
from dalle_pytorch.distributed import DistEnv
from dalle_pytorch.errors import TrainingError
from dalle_pytorch.models.dalle import DALLE
from dalle_pytorch.models.vae import DiscreteVAE
from dalle_pytorch.train.config import LoopConfig, OptimConfig, TrainConfig
from dalle_pytorch.train.optim import LRSchedule, build_optimizer
from dalle_pytorch.train.parallel import ParallelModel
from dalle_pytorch.train.state import Progress, RunState
from tests.cli.test_dalle_pytorch_compat import (  # noqa: F401 - fixtures
    OURS,
    RESUME,
    TINY_DALLE,
    TINY_VAE,
    data,
    dp_files,
    records,
    tok,
    train_dalle,
    train_vae,
)

pytestmark = pytest.mark.usefixtures("one_thread")

CONFIGS = ("plain_lr_decay", "shared_shift_rotary", "reversible")


def test_readme_resume_restores_optimizer_plateau_and_epoch(tmp_path, data, tok, dp_files):
    """`python train_dalle.py --dalle_path ./dalle.pt --image_text_folder /path/to/data` (+ --lr_decay)."""
    dalle_pt, _ = dp_files
    out = tmp_path / "run"
    saved = torch.load(dalle_pt, weights_only=True)
    train_dalle.main(train_dalle.parse_args(
        ["--dalle_path", str(dalle_pt), "--image_text_folder", str(data), "--bpe_path", str(tok), "--hug",
         "--lr_decay", "--learning_rate", "1e-3", *TINY_DALLE, "--epochs", "5", *OURS, "--output_dir", str(out)]))
    steps = records(out)
    # the file's epoch 3: epochs 3 and 4 run (4 steps each), counted from step 3 x 4
    assert [r["epoch"] for r in steps] == [3] * 4 + [4] * 4 and steps[0]["step"] == 13
    # its Adam learning rate wins over --learning_rate, as in DALLE-pytorch; the plateau had 10 bad
    # epochs, so epoch 3's last loss (worse than its best, 1.0) halves it
    assert [r["lr"] for r in steps] == [3e-4] * 4 + [1.5e-4] * 4
    assert min(r["loss"] for r in steps[:4]) > 1.0
    state = torch.load(out / "last.state.pt", weights_only=True)
    assert state["scheduler"]["plateau"]["cooldown_counter"] == 9  # 10 after the halving, then one more epoch
    saved_step = saved["opt_state"]["state"][0]["step"]
    assert {float(s["step"]) for s in state["optimizer"]["state"].values()} == {float(saved_step) + 8}
    assert state["epoch"] == 5 and state["batches_in_epoch"] == 0


def _kill_then_resume(monkeypatch, cls, at_call: int, main, argv):
    """Run `main(argv)`, killed in the `at_call`-th forward of `cls`, then the same with --resume."""
    original = cls.forward
    calls = {"n": 0}

    def dying_forward(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == at_call:
            raise KeyboardInterrupt("killed")
        return original(self, *args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(cls, "forward", dying_forward)
        with pytest.raises(KeyboardInterrupt):
            main(argv)
    main(argv + ["--resume"])


def test_dalle_pytorch_start_and_lr_decay_resume_exactly(tmp_path, data, tok, dp_files, monkeypatch):
    """Killed after the plateau halved the lr (epoch 3's end) and resumed: the same losses and lrs."""
    dalle_pt, _ = dp_files

    def argv(out):
        return ["--dalle_path", str(dalle_pt), "--image_text_folder", str(data), "--bpe_path", str(tok), "--hug",
                "--lr_decay", *TINY_DALLE, "--epochs", "5", "--save_every_steps", "2", "--ff_dropout", "0.1", *OURS,
                "--output_dir", str(out)]

    def main(a):
        return train_dalle.main(train_dalle.parse_args(a))

    main(argv(tmp_path / "straight"))
    _kill_then_resume(monkeypatch, DALLE, 7, main, argv(tmp_path / "resumed"))  # dies in step 19, resumes at 18
    a, b = records(tmp_path / "straight"), records(tmp_path / "resumed")
    assert [r["step"] for r in b] == list(range(13, 21)) and len(records(tmp_path / "resumed", "resume")) == 1
    assert [r["lr"] for r in b] == [r["lr"] for r in a] == [3e-4] * 4 + [1.5e-4] * 4
    assert [r["loss"] for r in b] == pytest.approx([r["loss"] for r in a], abs=1e-6)


def test_vae_schedules_resume_exactly(tmp_path, data, monkeypatch):
    def argv(out):
        return ["--image_folder", str(data), *TINY_VAE, "--batch_size", "4", "--max_steps", "10", "--anneal_rate",
                "0.05", "--lr_decay_every", "3", "--save_every_steps", "5", *OURS, "--output_dir", str(out)]

    def main(a):
        return train_vae.main(train_vae.parse_args(a))

    main(argv(tmp_path / "straight"))
    _kill_then_resume(monkeypatch, DiscreteVAE, 7, main, argv(tmp_path / "resumed"))  # dies in step 7, resumes at 5
    a, b = records(tmp_path / "straight"), records(tmp_path / "resumed")
    assert [r["step"] for r in b] == list(range(1, 11))
    for key in ("temperature", "lr"):
        assert [r[key] for r in b] == [r[key] for r in a]
    assert [r["loss"] for r in b] == pytest.approx([r["loss"] for r in a], abs=1e-6)


def _restored(name: str, lr_decay: bool):
    """Our model, optimizer and schedule after `--dalle_path <fixture>`, as the trainer restores them."""
    loaded = load_checkpoint(RESUME / f"{name}-v1.6.6.pt", map_location="cpu")
    model = loaded.model.train()
    args = TrainConfig(optim=OptimConfig(learning_rate=1e-3, weight_decay=0.0, lr_schedule="constant", warmup_steps=0,
                                         lr_decay_rate=0.98, lr_decay_every=100, lr_decay=lr_decay),
                       loop=LoopConfig(batch_size=4, ga_steps=1, seed=0))
    env = DistEnv()
    pm = ParallelModel(model, env, fsdp=False, compile=False, loss_fn=None, dummy_batch=None)
    optimizer = build_optimizer(model, args.optim)
    schedule = LRSchedule(optimizer, args.optim, total_steps=None, steps_per_epoch=5)
    progress = Progress()
    state = RunState(args, env, "dalle", pm, optimizer, schedule, torch.amp.GradScaler("cpu", enabled=False), progress)
    notes = [flag_text(note) for note in state.load_dalle_pytorch_state(loaded.training, steps_per_epoch=5)]
    return loaded, model, optimizer, schedule, progress, notes


@pytest.mark.parametrize("name", CONFIGS)
def test_optimizer_continues_as_dalle_pytorchs(name):
    """After the restore, one step on the next batch gives DALLE-pytorch's parameters (its resumed Adam)."""
    expected = torch.load(RESUME / f"{name}-v1.6.6.expected.pt", weights_only=True)
    loaded, model, optimizer, schedule, progress, notes = _restored(name, lr_decay=name == "plain_lr_decay")
    # its Adam parameter order, in our names
    theirs = [legacy_key(n, model.transformer) for n in expected["param_order"]]
    assert loaded.training["param_names"] == theirs
    assert progress.epoch == 3 and progress.step == 15 and "epoch 3" in notes[0]
    assert optimizer.param_groups[0]["lr"] == expected["lr"].item()

    loss = model(expected["text"], expected["image_codes"], return_loss=True)
    torch.testing.assert_close(loss.detach(), expected["loss"], atol=1e-5, rtol=0)
    loss.backward()
    torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 0.5)
    optimizer.step()
    params = dict(model.named_parameters())
    for their_name, value in expected["after"].items():
        torch.testing.assert_close(params[legacy_key(their_name, model.transformer)].detach(), value,
                                   atol=2e-6, rtol=1e-4)


def test_fresh_optimizer_would_not_match():
    """The check above can fail: a fresh Adam's first step differs from the restored one."""
    expected = torch.load(RESUME / "reversible-v1.6.6.expected.pt", weights_only=True)
    loaded = load_checkpoint(RESUME / "reversible-v1.6.6.pt")
    model = loaded.model.train()
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=3e-4)
    model(expected["text"], expected["image_codes"], return_loss=True).backward()
    optimizer.step()
    params = dict(model.named_parameters())
    worst = max((params[legacy_key(n, model.transformer)].detach() - v).abs().max().item()
                for n, v in expected["after"].items())
    assert worst > 1e-5


def test_plateau_continues_as_dalle_pytorchs():
    expected = torch.load(RESUME / "plain_lr_decay-v1.6.6.expected.pt", weights_only=True)
    _, _, optimizer, schedule, _, _ = _restored("plain_lr_decay", lr_decay=True)
    lrs = []
    for loss in expected["plateau_losses"].tolist():
        schedule.epoch_end(loss)
        lrs.append(optimizer.param_groups[0]["lr"])
    assert lrs == expected["plateau_lrs"].tolist()
    # without --lr_decay the file's scheduler state is left alone, as DALLE-pytorch does
    _, _, optimizer, schedule, _, notes = _restored("plain_lr_decay", lr_decay=False)
    assert "not its --lr_decay scheduler state" in notes[0]
    schedule.epoch_end(3.0)
    assert optimizer.param_groups[0]["lr"] == 3e-4


def test_dalle_path_to_this_runs_model_continues_it(tmp_path, data, tok, dp_files):
    """DALLE-pytorch resumes by passing the model it writes: our final model continues the run exactly."""
    _, vae_pt = dp_files
    out = tmp_path / "run"
    base = ["--image_text_folder", str(data), "--bpe_path", str(tok), "--hug", *TINY_DALLE, *OURS,
            "--output_dir", str(out)]
    train_dalle.main(train_dalle.parse_args(["--vae_path", str(vae_pt), *base, "--max_steps", "2"]))
    summary = train_dalle.main(train_dalle.parse_args(
        ["--dalle_path", str(out / "dalle.safetensors"), *base, "--max_steps", "4"]))
    assert summary["steps"] == 4 and [r["step"] for r in records(out)] == [1, 2, 3, 4]
    assert len(records(out, "resume")) == 1
    # another file of ours (not this run's newest model) still refuses to overwrite the run
    other = tmp_path / "other.safetensors"
    shutil.copy(out / "checkpoints" / "step_00000002.safetensors", other)
    with pytest.raises(TrainingError, match="already holds a training run"):
        train_dalle.main(train_dalle.parse_args(["--dalle_path", str(other), *base, "--max_steps", "6"]))
