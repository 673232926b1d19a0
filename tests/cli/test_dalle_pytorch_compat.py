"""DALLE-pytorch 1.6.6's command lines run unchanged here and mean the same (docs/dalle_pytorch_compat.md).

- every flag of its train_dalle.py / train_vae.py / generate.py parses;
- its README's command lines (tiny sizes appended, a few steps) run, or stop with a one-line reason,
  and give the configuration they gave there (model config, precision, batch, schedules);
- (`--dalle_path` with a DALLE-pytorch file, and exact resumes: tests/train/test_dalle_pytorch_resume.py);
- `filter_thres` / `--top_k` keeps the codes DALLE-pytorch's `top_k` keeps (its whole vocabulary);
- the tokenizer flags, --flops_profiler, the launcher flags.
"""
from __future__ import annotations

import argparse
import json
import math
import re
import shutil
import tarfile
from pathlib import Path

import pytest
import torch

from dalle_pytorch.checkpoint import load_checkpoint
from dalle_pytorch.cli.flags import tokenizer_for_flags
from dalle_pytorch.cli.messages import flag_errors
from dalle_pytorch.cli.train_flags import check_launcher_flags, config_from_flags, resolve_precision
from dalle_pytorch.errors import GenerationError, TrainingError
from dalle_pytorch.generation.sampling import SamplingConfig, top_k_filter
from dalle_pytorch.synthetic import make_dataset
from dalle_pytorch.text.chinese import CHINESE_VOCAB_HELP
from dalle_pytorch.text.factory import ChineseTokenizer, HugTokenizer, SimpleTokenizer, YttmTokenizer
from dalle_pytorch.train.backends import split_global_batch
from dalle_pytorch.train.config import LoopConfig, VaeConfig
from dalle_pytorch.train.schedules import vae_learning_rate, vae_temperature
from tests.helpers import load_script, tiny_dalle, word_tokenizer_json

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
RESUME = FIXTURES / "dalle_pytorch_resume"
PRETRAINED = FIXTURES / "pretrained_vae"

train_vae = load_script("train_vae")
train_dalle = load_script("train_dalle")
generate = load_script("generate")

# what the survey appended to DALLE-pytorch's README lines: tiny sizes (flags DALLE-pytorch has too)
TINY_VAE = ["--image_size", "32", "--num_layers", "2", "--num_tokens", "16", "--emb_dim", "8", "--hidden_dim", "8",
            "--num_resnet_blocks", "0", "--batch_size", "8", "--epochs", "2"]
TINY_DALLE = ["--dim", "16", "--depth", "1", "--heads", "2", "--dim_head", "8", "--text_seq_len", "8",
              "--truncate_captions", "--batch_size", "4", "--epochs", "1"]
OURS = ["--no_progress", "--sample_every", "0"]  # our own flags, for quiet tests


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("shapes")
    make_dataset(folder, 16, image_size=32, seed=0)
    return folder


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return word_tokenizer_json(tmp_path_factory.mktemp("tok") / "tok.json")


@pytest.fixture(scope="module")
def dp_files(tmp_path_factory):
    """./dalle.pt and ./vae.pt as DALLE-pytorch writes them (the VAE taken out of the dalle.pt)."""
    folder = tmp_path_factory.mktemp("dp")
    dalle_pt = folder / "dalle.pt"
    shutil.copy(RESUME / "plain_lr_decay-v1.6.6.pt", dalle_pt)
    obj = torch.load(dalle_pt, weights_only=True)
    vae = {"hparams": obj["vae_params"],
           "weights": {k[len("vae."):]: v for k, v in obj["weights"].items() if k.startswith("vae.")}}
    torch.save(vae, folder / "vae.pt")
    return dalle_pt, folder / "vae.pt"


def records(run_dir, event="step"):
    with open(Path(run_dir) / "log.jsonl", encoding="utf-8") as f:
        return [r for r in map(json.loads, f) if r["event"] == event]


def config_of(run_dir) -> dict:
    return json.loads((Path(run_dir) / "config.json").read_text())


# ---------------------------------------------------------------------------------------------- flags

# every flag of DALLE-pytorch 1.6.6's scripts (with DeepSpeed installed), with a value where it takes one
DALLE_FLAGS = [
    ("--vae_path", "v.pt"), ("--vqgan_model_path", "m.ckpt"), ("--vqgan_config_path", "c.yaml"), ("--wds", "a,b"),
    ("--truncate_captions",), ("--random_resize_crop_lower_ratio", "0.8"), ("--chinese",), ("--taming",), ("--hug",),
    ("--bpe_path", "b.json"), ("--dalle_output_file_name", "d"), ("--fp16",), ("--amp",), ("--wandb_name", "w"),
    ("--wandb_entity", "e"), ("--stable_softmax",), ("--distributed_backend", "deepspeed"),
    ("--distr_backend", "DeepSpeed"), ("--deepspeed",), ("--deepspeed_config", "ds.json"), ("--deepscale",),
    ("--deepscale_config", "ds.json"), ("--local_rank", "0"), ("--flops_profiler",), ("--epochs", "2"),
    ("--save_every_n_steps", "5"), ("--keep_n_checkpoints", "2"), ("--batch_size", "4"), ("--ga_steps", "2"),
    ("--learning_rate", "1e-4"), ("--clip_grad_norm", "1.0"), ("--lr_decay",), ("--dim", "16"),
    ("--text_seq_len", "8"), ("--depth", "1"), ("--heads", "2"), ("--dim_head", "8"), ("--ff_dropout", "0.1"),
    ("--attn_dropout", "0.1"), ("--reversible",), ("--loss_img_weight", "7"), ("--attn_types", "full"),
    ("--shift_tokens",), ("--rotary_emb",), ("--shared_attn_ids", "0"), ("--shared_ff_ids", "0"),
    ("--share_input_output_emb",),
]
DISTRIBUTED_FLAGS = [("--distributed_backend", "deepspeed"), ("--distr_backend", "deepspeed"), ("--deepspeed",),
                     ("--deepspeed_config", "ds.json"), ("--local_rank", "1"), ("--local-rank", "1")]
VAE_FLAGS = [
    ("--image_size", "32"), ("--epochs", "2"), ("--batch_size", "8"), ("--learning_rate", "1e-3"),
    ("--lr_decay_rate", "0.98"), ("--starting_temp", "1.0"), ("--temp_min", "0.5"), ("--anneal_rate", "1e-6"),
    ("--num_images_save", "4"), ("--num_tokens", "16"), ("--num_layers", "2"), ("--num_resnet_blocks", "1"),
    ("--smooth_l1_loss",), ("--emb_dim", "8"), ("--hidden_dim", "8"), ("--kl_loss_weight", "0.0"), ("--transparent",),
] + DISTRIBUTED_FLAGS
GENERATE_FLAGS = [
    ("--vqgan_model_path", "m.ckpt"), ("--vqgan_config_path", "c.yaml"), ("--num_images", "2"), ("--batch_size", "2"),
    ("--top_k", "0.9"), ("--outputs_dir", "out"), ("--bpe_path", "b.json"), ("--hug",), ("--chinese",), ("--taming",),
    ("--gentxt",),
]


@pytest.mark.parametrize("flag", DALLE_FLAGS, ids=lambda f: f[0])
def test_every_train_dalle_flag_parses(flag):
    train_dalle.parse_args(["--image_text_folder", "d", *flag])


@pytest.mark.parametrize("flag", VAE_FLAGS, ids=lambda f: f[0])
def test_every_train_vae_flag_parses(flag):
    train_vae.parse_args(["--image_folder", "d", *flag])


@pytest.mark.parametrize("flag", GENERATE_FLAGS, ids=lambda f: f[0])
def test_every_generate_flag_parses(flag):
    generate.parse_args(["--dalle_path", "d.pt", "--text", "t", *flag])


def test_no_abbreviations():
    # --lr_decay is a flag of its own, not an ambiguous prefix of --lr_decay_rate / --lr_decay_every
    assert train_dalle.parse_args(["--image_text_folder", "d", "--lr_decay"]).lr_decay is True
    for parse, argv in ((train_vae.parse_args, ["--image_folder", "d", "--lr_decay_r", "0.5"]),
                        (train_dalle.parse_args, ["--image_text_folder", "d", "--learning", "0.1"]),
                        (generate.parse_args, ["--text", "t", "--num_im", "2"])):
        with pytest.raises(SystemExit):
            parse(argv)


def test_shift_tokens_and_rotary_are_off_by_default_as_there():
    args = train_dalle.parse_args(["--image_text_folder", "d"])
    assert args.shift_tokens is False and args.rotary_emb is False
    args = train_dalle.parse_args(["--image_text_folder", "d", "--shift_tokens", "--rotary_emb"])
    assert args.shift_tokens is True and args.rotary_emb is True


# ------------------------------------------------------------------------------------ README lines


def test_readme_train_vae(tmp_path, data):
    """`python train_vae.py --image_folder /path/to/your/images`: its schedules, step by step."""
    out = tmp_path / "vae"
    train_vae.main(train_vae.parse_args(["--image_folder", str(data), *TINY_VAE, *OURS, "--output_dir", str(out)]))
    steps = records(out)
    assert [r["step"] for r in steps] == [1, 2, 3, 4]  # 16 images, batch 8: 2 steps an epoch, 2 epochs
    # train_vae.py's defaults: anneal after the first step of every epoch (and every 100th), ExponentialLR(0.98)
    assert [r["temperature"] for r in steps] == [vae_temperature(g, batches_per_epoch=2) for g in range(4)]
    assert [r["lr"] for r in steps] == pytest.approx([1e-3, 1e-3 * 0.98, 1e-3 * 0.98, 1e-3 * 0.98 ** 2], rel=1e-12)
    assert [r["lr"] for r in steps] == pytest.approx([vae_learning_rate(g, batches_per_epoch=2) for g in range(4)],
                                                     rel=1e-12)


def test_vae_schedules_follow_dalle_pytorch(tmp_path, data):
    """Sharper settings: the compounding temperature and the lr decays at each epoch start and every k-th step."""
    out = tmp_path / "vae"
    flags = ["--anneal_rate", "0.05", "--temp_min", "0.2", "--starting_temp", "0.9", "--lr_decay_rate", "0.5",
             "--lr_decay_every", "3", "--batch_size", "4", "--max_steps", "10"]  # 4 steps an epoch
    train_vae.main(train_vae.parse_args(["--image_folder", str(data), *TINY_VAE, *OURS, *flags,
                                         "--output_dir", str(out)]))
    steps = records(out)
    temps = [vae_temperature(g, batches_per_epoch=4, starting_temp=0.9, temp_min=0.2, anneal_rate=0.05)
             for g in range(10)]
    assert [r["temperature"] for r in steps] == temps  # bit for bit
    # updates after steps 0 (x exp(0)), 4 and 8 (the epoch starts): compounding
    assert temps[:6] == [0.9] * 5 + [pytest.approx(0.9 * math.exp(-0.05 * 4))]
    assert temps[9] == pytest.approx(0.9 * math.exp(-0.05 * 4) * math.exp(-0.05 * 8))
    lrs = [vae_learning_rate(g, batches_per_epoch=4, learning_rate=1e-3, lr_decay_rate=0.5, every=3)
           for g in range(10)]
    assert [r["lr"] for r in steps] == pytest.approx(lrs, rel=1e-12)
    assert lrs[:6] == pytest.approx([1e-3, 5e-4, 5e-4, 5e-4, 2.5e-4, 1.25e-4])  # after steps 0, 3 | 4 (epoch), ...


def test_readme_train_dalle_builds_dalle_pytorchs_model(tmp_path, data, dp_files):
    """`python train_dalle.py --vae_path ./vae.pt --image_text_folder /path/to/data`: no token shift, no rotary."""
    _, vae_pt = dp_files
    out = tmp_path / "run"
    summary = train_dalle.main(train_dalle.parse_args(
        ["--vae_path", str(vae_pt), "--image_text_folder", str(data), *TINY_DALLE, *OURS, "--output_dir", str(out)]))
    assert summary["steps"] == 4
    loaded = load_checkpoint(out / "dalle.safetensors")
    assert loaded.config["shift_tokens"] is False and loaded.config["rotary_emb"] is False
    assert "text_pos_emb.weight" in loaded.model.state_dict()  # learned text + axial image positions
    assert isinstance(loaded.tokenizer, SimpleTokenizer) and loaded.model.num_user_text_tokens == 49408
    config = config_of(out)
    assert config["precision"] == "fp32" and config["batch_size"] == 4 and config["lr_decay"] is False


def _wds_tar(data: Path, path: Path) -> Path:
    """data.tar with DALLE-pytorch's README keys: <key>.img (PNG bytes) and <key>.cap."""
    with tarfile.open(path, "w") as tar:
        for i, image in enumerate(sorted(data.rglob("*.png"))):
            tar.add(image, arcname=f"{i:05d}.img")
            tar.add(image.with_suffix(".txt"), arcname=f"{i:05d}.cap")
    return path


def test_readme_deepspeed_fp16_line(tmp_path, data, dp_files):
    """`deepspeed train_dalle.py --wds img,cap --image_text_folder data.tar --fp16 --deepspeed` (+ the launcher's
    --local_rank=0): parses; --fp16 is float16 autocast, which a CPU cannot run (one line)."""
    _, vae_pt = dp_files
    argv = ["--wds", "img,cap", "--image_text_folder", str(_wds_tar(data, tmp_path / "data.tar")), "--fp16",
            "--deepspeed", "--local_rank=0", "--vae_path", str(vae_pt), *TINY_DALLE, *OURS,
            "--output_dir", str(tmp_path / "run")]
    args = train_dalle.parse_args(argv)
    assert args.fp16 and args.deepspeed and args.local_rank == 0
    assert resolve_precision(None, True, False, torch.device("cuda"))[0] == "fp16"  # on a GPU
    with pytest.raises(TrainingError, match=r"^--fp16 \(float16 mixed precision\) needs a CUDA GPU; on CPU use --amp"):
        train_dalle.main(args)


def test_readme_deepspeed_amp_line_runs_as_ddp(tmp_path, data, dp_files):
    """The README's DeepSpeed line with --amp: --batch_size is DeepSpeed's global batch; bf16 autocast on CPU."""
    pytest.importorskip("webdataset")
    _, vae_pt = dp_files
    out = tmp_path / "run"
    train_dalle.main(train_dalle.parse_args(
        ["--wds", "img,cap", "--image_text_folder", str(_wds_tar(data, tmp_path / "data.tar")), "--amp",
         "--distr_backend", "deepspeed", "--local_rank=0", "--vae_path", str(vae_pt), *TINY_DALLE,
         "--batch_size", "8", "--ga_steps", "2", "--max_steps", "2", *OURS, "--output_dir", str(out)]))
    config = config_of(out)
    # --wds under DeepSpeed: batched(batch_size / processes) per micro-batch, as DALLE-pytorch
    assert config["precision"] == "bf16" and config["batch_size"] == 8 and config["deepspeed_batch_size"] == 8
    start = records(out, "start")[0]
    assert start["world_size"] == 1 and [r["step"] for r in records(out)] == [1, 2]
    # without --wds the global batch is split over --ga_steps too
    args, notes = split_global_batch(LoopConfig(batch_size=16, ga_steps=2), world_size=4)
    assert args.batch_size == 2 and "16 is the global batch" in notes[0]
    args.batch_size = 12
    with pytest.raises(TrainingError, match="must be a multiple of --ga_steps x processes = 8"), flag_errors():
        split_global_batch(args, world_size=4)


def test_readme_horovod_line_names_the_torchrun_command(monkeypatch):
    monkeypatch.setenv("HOROVOD_SIZE", "4")
    argv = ["train_dalle.py", "--image_text_folder", "d", "--distributed_backend", "horovod", "--local_rank=0"]
    args = train_dalle.parse_args(argv[1:])
    with pytest.raises(TrainingError, match=r"Horovod is not supported.*: torchrun --nproc_per_node 4 train_dalle\.py "
                                            r"--image_text_folder d$"):
        check_launcher_flags(args, argv)


@pytest.mark.parametrize("argv, message", [
    # `python train_dalle.py --image_text_folder /path/to/coco/dataset`: OpenAI's dVAE, from ~/.cache/dalle
    ([], "OpenAIDiscreteVAE: no file paths were given and 2 of its default files are missing"),
    # `deepspeed train_dalle.py --taming --image_text_folder 'DatasetsDir' --distr_backend 'deepspeed' --amp`
    (["--taming", "--distr_backend", "deepspeed", "--amp"], "VQGanVAE: no file paths were given"),
    (["--taming", "--vqgan_model_path", "m.ckpt", "--vqgan_config_path", "c.yaml"], "'c.yaml' does not exist"),
    (["--vqgan_model_path", "m.ckpt"], "VQGanVAE needs both vqgan_model_path and vqgan_config_path"),
])
def test_readme_lines_without_their_vae_files_name_them(tmp_path, data, monkeypatch, argv, message):
    monkeypatch.setenv("HOME", str(tmp_path))  # an empty ~/.cache/dalle: nothing is downloaded
    with pytest.raises(TrainingError, match=re.escape(message)):
        train_dalle.main(train_dalle.parse_args(["--image_text_folder", str(data), *argv, *TINY_DALLE, *OURS,
                                                 "--output_dir", str(tmp_path / "run")]))


def test_readme_chinese_line_without_its_vocabulary(tmp_path, data, dp_files):
    """`python train_dalle.py --chinese --image_text_folder ./path/to/data`: one line saying where vocab.txt comes from."""
    with pytest.raises(TrainingError) as e:
        train_dalle.main(train_dalle.parse_args(["--image_text_folder", str(data), "--chinese", "--vae_path",
                                                 str(dp_files[1]), *TINY_DALLE, *OURS, "--output_dir",
                                                 str(tmp_path / "run")]))
    assert CHINESE_VOCAB_HELP in str(e.value) and "\n" not in str(e.value)


def test_vae_flags_that_contradict(tmp_path, data, dp_files):
    with pytest.raises(TrainingError, match="ask for two different VAEs; choose one"):
        train_dalle.main(train_dalle.parse_args(["--image_text_folder", str(data), "--vae_path", str(dp_files[1]),
                                                 "--taming", *OURS, "--output_dir", str(tmp_path / "run")]))


def test_train_dalle_over_the_vqgan(tmp_path, data, tok):
    """`--taming --vqgan_model_path ... --vqgan_config_path ...`: a DALLE over the VQGAN, stored whole in one file."""
    out = tmp_path / "run"
    train_dalle.main(train_dalle.parse_args(
        ["--image_text_folder", str(data), "--taming", "--vqgan_model_path", str(PRETRAINED / "vqgan.ckpt"),
         "--vqgan_config_path", str(PRETRAINED / "vqgan.yaml"), "--bpe_path", str(tok), "--hug", *TINY_DALLE,
         "--batch_size", "2", "--max_steps", "1", *OURS, "--output_dir", str(out)]))
    loaded = load_checkpoint(out / "dalle.safetensors")
    assert type(loaded.model.vae).__name__ == "VQGanVAE" and loaded.model.image_seq_len == 256
    assert loaded.config["shift_tokens"] is False and loaded.config["rotary_emb"] is False


@pytest.mark.parametrize("kind", ["yttm", "chinese"])
def test_readme_tokenizer_lines(tmp_path, data, dp_files, kind):
    """`--bpe_path ./path/to/bpe.model` (youtokentome) and `--chinese` with bert-base-chinese's vocab.txt."""
    _, vae_pt = dp_files
    flags = (["--bpe_path", str(FIXTURES / "yttm" / "en.bpe")] if kind == "yttm"
             else ["--chinese", "--bpe_path", str(FIXTURES / "bert_chinese" / "vocab.txt")])
    out = tmp_path / "run"
    train_dalle.main(train_dalle.parse_args(["--image_text_folder", str(data), "--vae_path", str(vae_pt), *flags,
                                             *TINY_DALLE, "--max_steps", "1", *OURS, "--output_dir", str(out)]))
    loaded = load_checkpoint(out / "dalle.safetensors")
    assert isinstance(loaded.tokenizer, YttmTokenizer if kind == "yttm" else ChineseTokenizer)
    assert loaded.model.num_user_text_tokens == loaded.tokenizer.vocab_size


def test_readme_generate_lines(tmp_path, tok, dp_files, monkeypatch):
    """`python generate.py --dalle_path ./dalle.pt --text '...'` (128 images), '|' captions, --gentext."""
    dalle_pt, _ = dp_files
    monkeypatch.chdir(tmp_path)
    flags = ["--bpe_path", str(tok), "--hug", "--no_progress", "--seed", "0"]
    (one,) = generate.main(generate.parse_args(["--dalle_path", str(dalle_pt), "--text",
                                                "fireflies in a field under a full moon", *flags]))
    assert len(one.files) == 128  # DALLE-pytorch's default count
    assert Path(one.folder).resolve().parent == (tmp_path / "outputs").resolve()
    three = generate.main(generate.parse_args(["--dalle_path", str(dalle_pt), "--text",
                                               "a dog chewing a bone|a cat chasing mice|a frog eating a fly",
                                               "--num_images", "2", *flags]))
    assert len(three) == 3
    # `--gentext` (the README's spelling; DALLE-pytorch itself rejects it) is --gentxt
    assert generate.parse_args(["--dalle_path", str(dalle_pt), "--text", "a dog chewing a bone", "--gentext"]).gentxt
    # without the tokenizer that DALLE-pytorch file was trained with: a one-line error, as it fails there too
    with pytest.warns(UserWarning, match="49408 tokens but the model only 16"), \
            pytest.raises(GenerationError, match=r"in \[0, 16\)"):
        generate.main(generate.parse_args(["--dalle_path", str(dalle_pt), "--text", "a dog", "--no_progress"]))


def test_generate_taming_flags(tmp_path, tok, dp_files):
    """`python generate.py --dalle_path dalle.pt --taming --vqgan_model_path ... --vqgan_config_path ...` for a
    DALLE-pytorch model saved over the VQGAN (its file holds no VAE config)."""
    flags = ["--taming", "--vqgan_model_path", str(PRETRAINED / "vqgan.ckpt"), "--vqgan_config_path",
             str(PRETRAINED / "vqgan.yaml"), "--bpe_path", str(tok), "--hug", "--text", "a red circle",
             "--num_images", "1", "--no_progress", "--outputs_dir", str(tmp_path)]
    (r,) = generate.main(generate.parse_args(["--dalle_path", str(PRETRAINED / "dalle_vqgan-v1.6.6.pt"), *flags]))
    assert len(r.files) == 1
    # the flags are never silently ignored: a checkpoint over another VAE says so in one line
    with pytest.raises(GenerationError) as e:
        generate.main(generate.parse_args(["--dalle_path", str(dp_files[0]), *flags]))
    assert "\n" not in str(e.value)


def test_readme_generate_chinese_line_on_the_demo(tmp_path):
    """`python generate.py --chinese --text '追老鼠的猫'`: no --dalle_path here means the demo model, whose
    stored tokenizer is used (with a warning; DALLE-pytorch stops: --dalle_path is required there)."""
    with pytest.warns(UserWarning, match="--chinese without --bpe_path is ignored: the checkpoint stores"):
        (r,) = generate.main(generate.parse_args(["--chinese", "--text", "追老鼠的猫", "--num_images", "1",
                                                  "--no_progress", "--outputs_dir", str(tmp_path)]))
    assert r.record["tokenizer"] == "HugTokenizer" and len(r.files) == 1


# ------------------------------------------------------------------------------------------ sampling


def dalle_pytorch_top_k(logits, thres):
    """DALLE-pytorch 1.6.6's top_k (dalle_pytorch.py), transcribed: over the whole vocabulary."""
    num_logits = logits.shape[-1]
    k = max(int((1 - thres) * num_logits), 1)
    val, ind = torch.topk(logits, k)
    probs = torch.full_like(logits, float("-inf"))
    probs.scatter_(1, ind, val)
    return probs


@pytest.mark.parametrize("num_text, text_seq_len, num_codes, thres", [
    (10_000, 256, 512, 0.9),  # the example: all 512 codes kept
    (49_408, 256, 8192, 0.9),  # CLIP + 8192 codes: 5,785 codes
    (200, 12, 64, 0.9), (15, 8, 128, 0.9), (15, 8, 128, 0.5), (1000, 64, 1024, 0.99), (50, 6, 64, 0.0),
])
def test_filter_keeps_the_codes_dalle_pytorch_keeps(num_text, text_seq_len, num_codes, thres):
    g = torch.Generator().manual_seed(num_codes)
    total = num_text + text_seq_len + num_codes
    full = torch.randn(3, total, generator=g)
    full[:, : num_text + text_seq_len] = -torch.finfo(full.dtype).max  # DALLE-pytorch's logits mask at image positions
    theirs = torch.isfinite(dalle_pytorch_top_k(full, thres)[:, num_text + text_seq_len:])
    ours = torch.isfinite(top_k_filter(full[:, num_text + text_seq_len:], thres, vocab_size=total))
    assert torch.equal(ours, theirs)
    k = max(int((1 - thres) * total), 1)
    assert int(ours[0].sum()) == min(k, num_codes)
    sharper = torch.isfinite(top_k_filter(full[:, num_text + text_seq_len:], thres))  # filter_scope="candidates"
    assert int(sharper[0].sum()) == max(int((1 - thres) * num_codes), 1)
    if (num_text, num_codes, thres) == (10_000, 512, 0.9):
        assert int(ours[0].sum()) == 512 and int(sharper[0].sum()) == 51


def test_generate_images_default_filter_is_dalle_pytorchs():
    model = tiny_dalle(num_text_tokens=200).eval()
    text = torch.randint(1, 200, (1, 6), generator=torch.Generator().manual_seed(0))
    k = max(int((1 - 0.9) * model.total_tokens), 1)  # DALLE-pytorch's k over 200 + 6 + 64 tokens (float rounding too)
    assert model.total_tokens == 270 and k == 26

    def codes(**kw):
        return model.generate_images(text, num_images=2, return_codes=True,
                                     generator=torch.Generator().manual_seed(1), **kw)

    default = codes(filter_thres=0.9)
    assert torch.equal(default, codes(filter_thres=1 - (k + 0.5) / 64, filter_scope="candidates"))  # the top k codes
    assert not torch.equal(default, codes(filter_thres=0.9, filter_scope="candidates"))  # the top 6
    # a threshold that keeps k >= 64 over the whole vocabulary keeps every code: no filter
    assert torch.equal(codes(filter_thres=0.7), codes(filter_thres=0.0, filter_scope="candidates"))
    # generate_texts counts the same whole vocabulary for its text candidates (200 + 6 of the 270 tokens)
    tokenizer = argparse.Namespace(encode=lambda text: [], decode=lambda ids: " ".join(map(str, ids.tolist())))

    def texts(**kw):
        return model.generate_texts(tokenizer, generator=torch.Generator().manual_seed(2), **kw)[0]

    same_k = 1 - (k + 0.5) / model.num_text_tokens  # keeps k of the 206 text candidates
    assert torch.equal(texts(filter_thres=0.9), texts(filter_thres=same_k, filter_scope="candidates"))
    assert not torch.equal(texts(filter_thres=0.9), texts(filter_thres=0.9, filter_scope="candidates"))
    assert SamplingConfig().filter_scope == "vocab"
    with pytest.raises(ValueError, match="filter_scope must be one of vocab, candidates"):
        SamplingConfig(filter_scope="codes")


# ------------------------------------------------------------------------------------------ tokenizers


def test_hug_without_bpe_path_is_an_error_only_when_clip_would_be_wrong(tok):
    stored = HugTokenizer(tok)
    assert tokenizer_for_flags(None, hug=True, stored=stored) is stored  # the checkpoint's tokenizer
    with pytest.raises(ValueError, match="this model has 16 text tokens, so it was trained with another tokenizer"):
        tokenizer_for_flags(None, hug=True, model_text_tokens=16)
    with pytest.warns(UserWarning, match="--hug without --bpe_path is ignored, as in DALLE-pytorch"):
        assert isinstance(tokenizer_for_flags(None, hug=True, model_text_tokens=49408), SimpleTokenizer)
    with pytest.warns(UserWarning, match="--chinese without --bpe_path is ignored"):
        assert tokenizer_for_flags(None, chinese=True, stored=stored) is stored
    chinese = tokenizer_for_flags(FIXTURES / "bert_chinese" / "vocab.txt", chinese=True)
    assert isinstance(chinese, ChineseTokenizer)
    assert tokenizer_for_flags(None, chinese=True, stored=chinese) is chinese
    with pytest.raises(ValueError, match="--chinese: ChineseTokenizer needs the WordPiece vocabulary"):
        tokenizer_for_flags(None, chinese=True)


def test_convert_stores_the_chinese_tokenizer(tmp_path, dp_files):
    from dalle_pytorch.cli.convert import main as convert

    dalle_pt, _ = dp_files
    out = tmp_path / "zh.safetensors"
    # the fixture has 16 text tokens: a stand-in vocabulary of 11 fits it
    assert convert([str(dalle_pt), str(out), "--chinese"]) == 1  # no vocab.txt: the one-line error
    vocab = tmp_path / "vocab.txt"
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "猫", "狗", "的", "追", "老", "鼠"]
    vocab.write_text("\n".join(words) + "\n", encoding="utf-8")
    assert convert([str(dalle_pt), str(out), "--chinese", "--bpe_path", str(vocab)]) == 0
    loaded = load_checkpoint(out)
    assert isinstance(loaded.tokenizer, ChineseTokenizer) and loaded.tokenizer.encode("猫追老鼠") == [5, 8, 9, 10]


# ------------------------------------------------------------------------------------------ the rest


def test_flops_profiler_counts_one_step_and_goes_on(tmp_path, data, tok, dp_files, capsys):
    _, vae_pt = dp_files
    out = tmp_path / "run"
    summary = train_dalle.main(train_dalle.parse_args(
        ["--vae_path", str(vae_pt), "--image_text_folder", str(data), "--bpe_path", str(tok), "--hug",
         "--flops_profiler", *TINY_DALLE, "--max_steps", "3", *OURS, "--output_dir", str(out)]))
    assert summary["steps"] == 3  # not stopped early
    (event,) = records(out, "flops")
    assert event["step"] == 2 and event["samples"] == 4  # the last step of a run shorter than 200 steps
    # the matmuls of the forward and backward pass: at least 3 x 2 x parameters x tokens of the transformer
    model = load_checkpoint(out / "dalle.safetensors").model
    tokens = 4 * (model.text_seq_len + model.image_seq_len)
    params = sum(p.numel() for n, p in model.named_parameters() if n.startswith("transformer.") and p.ndim == 2)
    assert event["flops"] >= 6 * params * tokens
    printed = capsys.readouterr().out
    assert "--flops_profiler: step 2" in printed and "transformer" in printed
    with pytest.raises(TrainingError, match="--flops_profiler counts the eager model"):
        train_dalle.main(train_dalle.parse_args(["--image_text_folder", str(data), "--flops_profiler", "--compile"]))


def test_wandb_name_turns_wandb_on(tmp_path, data, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    args = train_vae.parse_args(["--image_folder", str(data), "--wandb_name", "my_project"])
    with pytest.raises(TrainingError, match="needs the optional package 'wandb'"):
        train_vae.main(args)
    assert args.wandb is True and args.wandb_name == "my_project"
    args = train_vae.parse_args(["--image_folder", str(data)])
    config_from_flags(args, VaeConfig)
    assert args.wandb is False and args.wandb_name == "dalle_train_vae"


def test_precision_flags():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_precision(None, False, True, cpu)[0] == "bf16"  # --amp
    assert resolve_precision(None, False, True, cuda)[0] == "fp16"
    assert resolve_precision(None, True, False, cuda)[0] == "fp16"  # --fp16
    assert resolve_precision(None, False, False, cpu) == ("fp32", None)
    assert resolve_precision("fp16", True, False, cuda)[0] == "fp16"
    with pytest.raises(TrainingError, match="--fp16 means --precision fp16 here, which contradicts --precision bf16"):
        resolve_precision("bf16", True, False, cuda)
