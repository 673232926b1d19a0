"""TrainConfig: built once from the flags (cli/train_flags.config_from_flags), checked once, its errors in
library terms (the field) that the command line shows as flags; warnings as one line on the command line."""
from __future__ import annotations

import dataclasses
import json
import warnings

import pytest

from dalle_pytorch.cli import train_dalle, train_vae
from dalle_pytorch.cli.messages import flag_errors, flag_text, one_line_warnings
from dalle_pytorch.cli.train_flags import config_from_flags
from dalle_pytorch.errors import GenerationError, TrainingError
from dalle_pytorch.train.config import (ComputeConfig, DalleConfig, LoopConfig, OptimConfig, OutputConfig, TrainConfig,
                                        VaeConfig, field_names)
from dalle_pytorch.train.datasets import DatasetError

VAE = ["--image_folder", "images"]
DALLE = ["--image_text_folder", "data"]


def dests(parse_args, argv) -> set:
    return set(vars(parse_args(argv)))


def test_every_setting_is_the_flag_of_its_name():
    """One name per setting over all the groups, and each is a dest of the script that has it: `--<field>`."""
    names = field_names()
    dalle_only = {f.name for f in dataclasses.fields(DalleConfig)} - {f.name for f in dataclasses.fields(VaeConfig)}
    vae_only = {f.name for f in dataclasses.fields(VaeConfig)} - {f.name for f in dataclasses.fields(DalleConfig)}
    assert set(names) - vae_only <= dests(train_dalle.parse_args, DALLE)
    assert set(names) - dalle_only - {"lr_decay"} <= dests(train_vae.parse_args, VAE)  # lr_decay: train_dalle.py's


def test_flags_become_one_config():
    config = config_from_flags(train_dalle.parse_args(
        [*DALLE, "--attn_types", "full, axial_row", "--shared_attn_ids", "0,1,a", "--wds", "jpg,txt", "--amp",
         "--batch_size", "6", "--keep_n_checkpoints", "2", "--stable_softmax", "--lr_decay"]), DalleConfig)
    assert isinstance(config, TrainConfig) and isinstance(config.task, DalleConfig)
    assert config.task.attn_types == ("full", "axial_row") and config.task.shared_attn_ids == (0, 1, "a")
    assert config.task.wds == ("jpg", "txt") and config.streaming and config.task.stable
    assert config.compute.precision == "bf16"  # --amp on a CPU
    assert config.loop.batch_size == 6 and config.outputs.keep_last == 2 and config.optim.lr_decay
    assert config.outputs.name == "dalle" and config.outputs.wandb_name == "dalle_train_transformer"
    # the run folder's config.json: one flat JSON dict by field names (no Namespace, nothing pickled)
    settings = config.settings()
    assert json.loads(json.dumps(settings)) == {**settings, "attn_types": ["full", "axial_row"],
                                                "shared_attn_ids": [0, 1, "a"], "wds": ["jpg", "txt"]}
    assert set(settings) == set(field_names()) - {f.name for f in dataclasses.fields(VaeConfig)} | {"transparent"}

    vae = config_from_flags(train_vae.parse_args([*VAE, "--image_size", "64"]), VaeConfig)
    assert vae.task == VaeConfig(image_folder="images", image_size=64)
    assert vae.optim == OptimConfig(learning_rate=1e-3, clip_grad_norm=0.0, lr_schedule="exponential")
    assert vae.loop == LoopConfig(batch_size=8) and vae.compute == ComputeConfig()
    assert vae.outputs == OutputConfig(name="vae", wandb_name="dalle_train_vae")


@pytest.mark.parametrize("build, message", [
    (lambda: LoopConfig(batch_size=0), "batch_size must be >= 1, got 0"),
    (lambda: LoopConfig(max_steps=0), "max_steps must be >= 1, got 0"),
    (lambda: OptimConfig(learning_rate=0.0), "learning_rate must be > 0, got 0.0"),
    (lambda: OptimConfig(lr_decay_rate=1.5), r"lr_decay_rate must be in \(0, 1\], got 1.5"),
    (lambda: OptimConfig(lr_schedule="linear"), "lr_schedule must be one of constant, cosine, exponential"),
    (lambda: OptimConfig(lr_decay=True, warmup_steps=3), "it replaces lr_schedule / warmup_steps: drop those"),
    (lambda: ComputeConfig(flops_profiler=True, compile=True), "drop compile$"),
    (lambda: ComputeConfig(precision="fp8"), "precision must be one of fp32, bf16, fp16"),
    (lambda: OutputConfig(keep_last=-1), "keep_last must be >= 0"),
    (lambda: DalleConfig(image_text_folder="d", vae_path="v.pt", taming=True), "two different VAEs"),
    (lambda: DalleConfig(image_text_folder="d", resize_ratio=0), r"resize_ratio must be in \(0, 1\]"),
    (lambda: DalleConfig(image_text_folder="d", wds=("jpg",)), "wds must be the .image key, caption key."),
    (lambda: VaeConfig(), "image_folder is empty"),
])
def test_settings_are_checked_once_in_library_terms(build, message):
    with pytest.raises(TrainingError, match=message) as e:
        build()
    assert "--" not in str(e.value)  # the library names fields, the command line flags
    assert e.value.field is not None and e.value.field in field_names()


def test_the_command_line_names_the_flags():
    error = TrainingError("`batch_size` 12 must be a multiple of `ga_steps` x processes = 8")
    assert str(error) == "batch_size 12 must be a multiple of ga_steps x processes = 8"
    assert error.field == "batch_size" and error.fields == ("batch_size", "ga_steps")
    with pytest.raises(TrainingError, match=r"^--batch_size 12 must be a multiple of --ga_steps x processes = 8$"):
        with flag_errors():
            raise error
    # a message that does not name its field gets it as a prefix; the same for a GenerationError
    with pytest.raises(GenerationError, match=r"^--seed: too large$"), flag_errors():
        raise GenerationError("too large", field="seed")
    assert str(TrainingError("too large", field="seed")) == "seed: too large"
    # words that are not marked stay as they are (mixed precision, the package names)
    text = "`tensorboard` needs tensorboard: mixed precision"
    assert flag_text(text) == "--tensorboard needs tensorboard: mixed precision"
    assert issubclass(DatasetError, TrainingError)


def test_validation_errors_through_the_script_name_the_flag(tmp_path):
    for argv, message in (([*VAE, "--learning_rate", "0"], "^--learning_rate must be > 0, got 0.0$"),
                          ([*VAE, "--lr_decay_rate", "2"], r"^--lr_decay_rate must be in \(0, 1\], got 2.0$")):
        with pytest.raises(TrainingError, match=message):
            train_vae.main(train_vae.parse_args(argv))
    with pytest.raises(TrainingError, match=r"^--resize_ratio must be in \(0, 1\], got 2.0$"):
        train_dalle.main(train_dalle.parse_args([*DALLE, "--resize_ratio", "2"]))


def test_warnings_are_one_line_on_the_command_line(capsys):
    before = warnings.showwarning
    with one_line_warnings():
        warnings.warn("ImageFolder: skipping x.png: unreadable image\n(truncated)")
    err = capsys.readouterr().err
    assert err == "warning: ImageFolder: skipping x.png: unreadable image (truncated)\n"
    assert warnings.showwarning is before  # restored after
