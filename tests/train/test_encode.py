"""dalle-encode and train_dalle.py --codes: encode once, train on codes (docs/training.md, "Encode once, train on codes").

The heart: training on the codes of a folder's deterministic crops gives the same losses, step by step, as
training on its images at --resize_ratio 1 (same seed), over a DiscreteVAE and over taming's VQGAN.
"""
from __future__ import annotations

import hashlib
import io
import json
import re
import os
import random
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from dalle_pytorch.checkpoint import load_checkpoint, save
from dalle_pytorch.errors import TrainingError
from dalle_pytorch.models.vae import DiscreteVAE
from dalle_pytorch.synthetic import make_dataset
from dalle_pytorch.train import encode as encode_module
from dalle_pytorch.train.code_shards import CodeDataset, read_manifest
from dalle_pytorch.train.datasets import DatasetError, caption_lines
from dalle_pytorch.train.encode import EncodeConfig, encode_dataset
from tests.helpers import load_script, word_tokenizer_json

ROOT = Path(__file__).resolve().parents[2]
PRETRAINED = ROOT / "tests" / "fixtures" / "pretrained_vae"
encode_cli = load_script("encode")
train_dalle = load_script("train_dalle")

DALLE_FLAGS = ["--dim", "32", "--depth", "2", "--heads", "2", "--dim_head", "16", "--text_seq_len", "8",
               "--truncate_captions", "--batch_size", "4", "--no_progress", "--sample_every", "0", "--seed", "3"]

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("shapes")
    make_dataset(folder, 12, image_size=32, seed=0)
    return folder


@pytest.fixture(scope="module")
def tokenizer_json(tmp_path_factory):
    return word_tokenizer_json(tmp_path_factory.mktemp("tok") / "tokenizer.json")


@pytest.fixture(scope="module")
def vae_file(tmp_path_factory):
    torch.manual_seed(0)
    vae = DiscreteVAE(image_size=32, num_layers=2, hidden_dim=16, num_tokens=32, codebook_dim=16, num_resnet_blocks=1)
    path = tmp_path_factory.mktemp("vae") / "vae.safetensors"
    save(vae, path)
    return path


def _encode(*flags):
    return encode_cli.main(encode_cli.parse_args([*flags, "--no_progress"]))


@pytest.fixture(scope="module")
def codes_dir(tmp_path_factory, data_dir, vae_file):
    out = tmp_path_factory.mktemp("codes") / "codes"
    summary = _encode("--vae_path", str(vae_file), "--image_text_folder", str(data_dir), "--output_dir", str(out),
                      "--shard_size", "5")
    return out, summary


def _train(out, *flags):
    return train_dalle.main(train_dalle.parse_args([*DALLE_FLAGS, *flags, "--output_dir", str(out)]))


def _losses(run_dir):
    with open(Path(run_dir) / "log.jsonl", encoding="utf-8") as f:
        return [r["loss"] for r in map(json.loads, f) if r["event"] == "step"]


def _tree_digests(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(Path(folder).glob("codes-*"))}


# ------------------------------------------------------------------------------------------ the format


def test_encode_writes_shards_a_manifest_and_a_vae_copy(codes_dir, data_dir, vae_file):
    out, summary = codes_dir
    assert summary["samples"] == 12 and summary["skipped"] == 0 and summary["shards"] == 3
    manifest = read_manifest(out / "manifest.json")
    assert [s.samples for s in manifest.shards] == [5, 5, 2]
    assert manifest.grid == (8, 8) and manifest.num_tokens == 32 and manifest.dtype == "uint8" and manifest.crops == 1
    assert manifest.vae["class"] == "DiscreteVAE" and manifest.vae["description"] == f"--vae_path {vae_file}"
    copy = load_checkpoint(out / "vae.safetensors").model
    vae = load_checkpoint(vae_file).model
    assert all(torch.equal(a, b) for a, b in zip(copy.state_dict().values(), vae.state_dict().values()))
    # every sample: the codes the VAE gives its deterministic crop, all its caption lines, its source name
    with tarfile.open(out / "codes-000001.tar") as tar:
        names = tar.getnames()
        assert names[:3] == ["000001-000000.codes.npy", "000001-000000.txt", "000001-000000.source.txt"]
        codes = np.load(io.BytesIO(tar.extractfile(names[0]).read()), allow_pickle=False)
        source = tar.extractfile(names[2]).read().decode()
        lines = tar.extractfile(names[1]).read().decode().splitlines()
    assert source == "img_00005.png" and lines == caption_lines((data_dir / "img_00005.txt").read_text())
    from dalle_pytorch.formats.images import read_image
    from dalle_pytorch.train.datasets import image_to_tensor
    image = image_to_tensor(read_image(data_dir / source, "RGB"))[None]
    assert codes.shape == (1, 64) and codes.dtype == np.uint8
    assert torch.equal(torch.from_numpy(codes.astype(np.int64)), vae.get_codebook_indices(image))


def test_code_dataset_reads_what_the_image_dataset_reads(codes_dir, data_dir, tokenizer_json):
    """Same caption line per (seed, epoch, index) as TextImageDataset; the stored codes where the image was."""
    from dalle_pytorch.text.factory import select_tokenizer
    from dalle_pytorch.train.datasets import TextImageDataset

    tok = select_tokenizer(str(tokenizer_json), hug=True)
    codes = CodeDataset(codes_dir[0], text_len=8, tokenizer=tok, truncate_captions=True, seed=5)
    images = TextImageDataset(data_dir, text_len=8, image_size=32, tokenizer=tok, truncate_captions=True, seed=5,
                              resize_ratio=1.0)
    assert len(codes) == len(images) == 12
    for epoch in (0, 1):
        codes.set_epoch(epoch)
        images.set_epoch(epoch)
        for i in range(12):
            assert torch.equal(codes[i][0], images[i][0])
            assert codes[i][1].shape == (64,) and codes[i][1].dtype == torch.long


# ------------------------------------------------------------------------------------------ equivalence


def test_training_on_codes_equals_training_on_images_discrete_vae(codes_dir, data_dir, vae_file, tokenizer_json,
                                                                  tmp_path):
    common = ["--bpe_path", str(tokenizer_json), "--hug", "--max_steps", "5"]
    _train(tmp_path / "images", "--vae_path", str(vae_file), "--image_text_folder", str(data_dir),
           "--resize_ratio", "1", *common)
    summary = _train(tmp_path / "codes", "--codes", str(codes_dir[0]), *common)  # the folder's VAE copy
    assert summary["steps"] == 5
    assert _losses(tmp_path / "codes") == _losses(tmp_path / "images")  # exactly, step by step (5 steps: 2 epochs)
    a = load_checkpoint(tmp_path / "codes" / "dalle.safetensors").model.state_dict()
    b = load_checkpoint(tmp_path / "images" / "dalle.safetensors").model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def vqgan_data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("shapes256")
    make_dataset(folder, 8, image_size=48, seed=1)
    return folder


VQGAN_FLAGS = ["--taming", "--vqgan_model_path", str(PRETRAINED / "vqgan.ckpt"),
               "--vqgan_config_path", str(PRETRAINED / "vqgan.yaml")]


def test_training_on_codes_equals_training_on_images_vqgan(vqgan_data, tokenizer_json, tmp_path):
    """Over taming's VQGAN (the tiny f16 fixture, 256 x 256 images, 16 x 16 codes); the VAE flags given again."""
    _encode(*VQGAN_FLAGS, "--image_text_folder", str(vqgan_data), "--output_dir", str(tmp_path / "codes"),
            "--no_save_vae", "--batch_size", "4")
    manifest = read_manifest(tmp_path / "codes" / "manifest.json")
    assert manifest.vae["class"] == "VQGanVAE" and manifest.grid == (16, 16) and manifest.dtype == "uint8"
    assert not (tmp_path / "codes" / "vae.safetensors").exists()
    common = ["--bpe_path", str(tokenizer_json), "--hug", "--max_steps", "2", "--depth", "1", *VQGAN_FLAGS]
    _train(tmp_path / "images", "--image_text_folder", str(vqgan_data), "--resize_ratio", "1", *common)
    _train(tmp_path / "on_codes", "--codes", str(tmp_path / "codes"), *common)
    assert _losses(tmp_path / "on_codes") == _losses(tmp_path / "images")


@pytest.mark.parametrize("precision", ["fp32", "bf16"])  # bf16: autocast and the fused AdamW
def test_a_killed_run_on_codes_resumes_exactly(codes_dir, tokenizer_json, tmp_path, monkeypatch, precision):
    from dalle_pytorch.models.dalle import DALLE

    flags = ["--codes", str(codes_dir[0]), "--bpe_path", str(tokenizer_json), "--hug", "--max_steps", "5",
             "--save_every_steps", "2", "--null_cond_prob", "0.5", "--precision", precision, "--device", "cpu"]
    _train(tmp_path / "straight", *flags)
    original, calls = DALLE.forward, []

    def dying_forward(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt("killed")
        return original(self, *args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(DALLE, "forward", dying_forward)
        with pytest.raises(KeyboardInterrupt):
            _train(tmp_path / "resumed", *flags)
    _train(tmp_path / "resumed", *flags, "--resume")
    assert _losses(tmp_path / "resumed") == _losses(tmp_path / "straight")  # the log rewound to step 2, then 3-5


# ------------------------------------------------------------------------------------------ the VAE must match


def test_another_vae_is_refused_naming_both(codes_dir, tokenizer_json, tmp_path, capsys):
    torch.manual_seed(1)
    other = DiscreteVAE(image_size=32, num_layers=2, hidden_dim=16, num_tokens=32, codebook_dim=16, num_resnet_blocks=1)
    save(other, tmp_path / "other.safetensors")
    code = train_dalle.cli([*DALLE_FLAGS, "--codes", str(codes_dir[0]), "--vae_path", str(tmp_path / "other.safetensors"),
                            "--bpe_path", str(tokenizer_json), "--hug", "--output_dir", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip()
    assert code == 1 and err.count("\n") == 0
    assert "--vae_path" in err and "other.safetensors" in err and "is not the one the codes" in err
    assert "given to dalle-encode as --vae_path" in err


def test_no_vae_copy_and_no_vae_flags_names_the_recorded_vae(vqgan_data, tokenizer_json, tmp_path, data_dir, vae_file):
    _encode("--vae_path", str(vae_file), "--image_text_folder", str(data_dir), "--output_dir", str(tmp_path / "c"),
            "--no_save_vae")
    with pytest.raises(TrainingError, match=r"hold no copy of their VAE.*DiscreteVAE given to dalle-encode as --vae_path"):
        _train(tmp_path / "run", "--codes", str(tmp_path / "c"), "--bpe_path", str(tokenizer_json), "--hug")


def test_codes_and_images_are_one_or_the_other(codes_dir, data_dir, tokenizer_json, tmp_path):
    with pytest.raises(TrainingError, match="--codes trains on pre-encoded codes and --image_text_folder"):
        _train(tmp_path, "--codes", str(codes_dir[0]), "--image_text_folder", str(data_dir))
    with pytest.raises(TrainingError, match="--image_text_folder is empty"):
        _train(tmp_path, "--bpe_path", str(tokenizer_json), "--hug")


# ------------------------------------------------------------------------------------------ resume, bad samples


def test_a_killed_encode_resumes_to_the_same_shards(codes_dir, data_dir, vae_file, tmp_path, monkeypatch):
    out = tmp_path / "codes"
    real = encode_module._encode_unit
    calls = []

    def dies_in_unit_1(config, vae, env, source, unit, *rest):
        calls.append(unit)
        if unit == 1:
            raise KeyboardInterrupt
        return real(config, vae, env, source, unit, *rest)

    monkeypatch.setattr(encode_module, "_encode_unit", dies_in_unit_1)
    with pytest.raises(KeyboardInterrupt):
        _encode("--vae_path", str(vae_file), "--image_text_folder", str(data_dir), "--output_dir", str(out),
                "--shard_size", "5")
    assert not (out / "manifest.json").exists() and (out / "codes-000000.json").exists()
    # a half-written shard (its record missing, or a shard cut short) never counts
    (out / "codes-000001.tar").write_bytes(b"partial")
    monkeypatch.setattr(encode_module, "_encode_unit", real)
    summary = _encode("--vae_path", str(vae_file), "--image_text_folder", str(data_dir), "--output_dir", str(out),
                      "--shard_size", "5")
    assert summary["shards_resumed"] == 1 and summary["samples"] == 12
    assert _tree_digests(out) == _tree_digests(codes_dir[0])  # byte for byte what one uninterrupted run wrote
    assert read_manifest(out / "manifest.json").to_dict() == read_manifest(codes_dir[0] / "manifest.json").to_dict()


def test_resuming_with_other_settings_is_refused(codes_dir, data_dir, vae_file, tmp_path):
    out = tmp_path / "codes"
    shutil.copytree(codes_dir[0], out)
    with pytest.raises(TrainingError, match=r"begun with other settings \(crops differs\)"):
        encode_dataset(EncodeConfig(source=str(data_dir), output_dir=str(out), shard_size=5, crops=2, progress=False),
                       load_checkpoint(vae_file).model, vae_class="DiscreteVAE", vae_description="x")


def test_bad_samples_are_skipped_counted_and_bounded(data_dir, vae_file, tmp_path):
    folder = tmp_path / "data"
    shutil.copytree(data_dir, folder)
    (folder / "img_00003.png").write_bytes(b"not a png")
    (folder / "img_00007.txt").write_text("\n\n")
    vae = load_checkpoint(vae_file).model
    config = dict(source=str(folder), output_dir=str(tmp_path / "codes"), shard_size=5, progress=False)
    with pytest.warns(UserWarning, match=r"skipping img_0000[37]\."), pytest.raises(DatasetError, match="2 of 12 samples"):
        encode_dataset(EncodeConfig(**config, max_bad_fraction=0.1), vae, vae_class="DiscreteVAE", vae_description="x")
    # the limit was passed in the second unit: its shard is kept, and a run with a higher limit finishes the third
    summary = encode_dataset(EncodeConfig(**config, max_bad_fraction=0.2), vae, vae_class="DiscreteVAE",
                             vae_description="x")
    assert summary["samples"] == 10 and summary["skipped"] == 2 and summary["shards_resumed"] == 2
    manifest = read_manifest(tmp_path / "codes" / "manifest.json")
    assert [s.skipped for s in manifest.shards] == [1, 1, 0]
    assert "img_00007.txt: empty caption file" in manifest.shards[1].skipped_examples[0]


# ------------------------------------------------------------------------------------------ crops, GumbelVQ


def test_several_random_crops_one_picked_per_epoch(data_dir, vae_file, tmp_path, tokenizer_json):
    out = tmp_path / "codes"
    _encode("--vae_path", str(vae_file), "--image_text_folder", str(data_dir), "--output_dir", str(out),
            "--crops", "3", "--resize_ratio", "0.5", "--seed", "2")
    from dalle_pytorch.text.factory import select_tokenizer

    from dalle_pytorch.formats.images import read_image
    from dalle_pytorch.train.datasets import image_to_tensor, mix_seed, random_resized_crop

    data = CodeDataset(out, text_len=8, tokenizer=select_tokenizer(str(tokenizer_json), hug=True), truncate_captions=True)
    vae = load_checkpoint(vae_file).model
    for i in (0, 5):  # the stored crops are the random crops of the sample's seed, in order
        image = read_image(data_dir / f"img_{i:05d}.png", "RGB")
        rng = random.Random(mix_seed(2, i))
        crops = torch.stack([image_to_tensor(random_resized_crop(image, 32, (0.5, 1.0), (1.0, 1.0), rng))
                             for _ in range(3)])
        assert len({c.numpy().tobytes() for c in crops}) == 3  # three different crops
        assert torch.equal(torch.from_numpy(data.sample(i)[1].astype(np.int64)), vae.get_codebook_indices(crops))
    distinct = next(i for i in range(12) if len({c.tobytes() for c in data.sample(i)[1]}) == 3)
    stored, picked = data.sample(distinct)[1], []
    for epoch in range(12):  # training picks one per epoch
        data.set_epoch(epoch)
        codes = data[distinct][1].numpy()
        picked.append(next(k for k in range(3) if np.array_equal(stored[k], codes)))
    assert set(picked) == {0, 1, 2}
    _train(tmp_path / "run", "--codes", str(out), "--bpe_path", str(tokenizer_json), "--hug", "--max_steps", "2")


def test_gumbel_codes_are_a_seeded_draw(vqgan_data, tmp_path):
    flags = ["--taming", "--vqgan_model_path", str(PRETRAINED / "gumbel.ckpt"), "--vqgan_config_path",
             str(PRETRAINED / "gumbel.yaml"), "--image_text_folder", str(vqgan_data), "--no_save_vae"]
    for name, seed in (("a", "0"), ("b", "0"), ("c", "1")):
        _encode(*flags, "--output_dir", str(tmp_path / name), "--seed", seed)
    assert read_manifest(tmp_path / "a" / "manifest.json").gumbel is True
    assert _tree_digests(tmp_path / "a") == _tree_digests(tmp_path / "b")
    assert _tree_digests(tmp_path / "a") != _tree_digests(tmp_path / "c")


# ------------------------------------------------------------------------------------------ WebDataset in and out


@pytest.fixture(scope="module")
def image_shards(tmp_path_factory, data_dir):
    folder = tmp_path_factory.mktemp("wds")
    files = sorted(p for p in data_dir.iterdir() if p.suffix == ".png")
    for s, chunk in enumerate((files[:7], files[7:])):
        with tarfile.open(folder / f"shard-{s}.tar", "w") as tar:
            for p in chunk:
                tar.add(p, arcname=p.name)
                tar.add(p.with_suffix(".txt"), arcname=p.with_suffix(".txt").name)
    return folder


def test_webdataset_input_gives_the_folder_codes(image_shards, codes_dir, vae_file, tmp_path):
    out = tmp_path / "codes"
    summary = _encode("--vae_path", str(vae_file), "--wds", "png,txt", "--image_text_folder", str(image_shards),
                      "--output_dir", str(out))
    assert summary["samples"] == 12 and summary["shards"] == 2  # one output shard per input shard
    by_source = {}
    for folder in (out, codes_dir[0]):
        for tar_path in sorted(folder.glob("codes-*.tar")):
            with tarfile.open(tar_path) as tar:
                members = {m.name: tar.extractfile(m).read() for m in tar}
            for name, data in members.items():
                if name.endswith(".source.txt"):
                    key = name[:-len(".source.txt")]
                    source = os.path.basename(data.decode()).replace("img_", "").split(".")[0]
                    by_source.setdefault(source, []).append(members[key + ".codes.npy"])
    assert len(by_source) == 12 and all(len(v) == 2 and v[0] == v[1] for v in by_source.values())


def test_streamed_code_shards_train(codes_dir, tokenizer_json, tmp_path):
    pattern = str(codes_dir[0] / "codes-{000000..000002}.tar")
    summary = _train(tmp_path / "run", "--codes", pattern, "--codes_manifest", str(codes_dir[0] / "manifest.json"),
                     "--bpe_path", str(tokenizer_json), "--hug", "--max_steps", "2")
    assert summary["steps"] == 2 and len(_losses(tmp_path / "run")) == 2


# ------------------------------------------------------------------------------------------ untrusted folders


def _copy(codes_dir, tmp_path):
    out = tmp_path / "codes"
    shutil.copytree(codes_dir[0], out)
    return out


def test_a_manifest_naming_a_path_is_refused(codes_dir, tmp_path):
    out = _copy(codes_dir, tmp_path)
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["shards"][0]["name"] = "../../etc/passwd"
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(TrainingError, match="shard name '../../etc/passwd'"):
        CodeDataset(out)


def test_a_changed_shard_is_refused(codes_dir, tmp_path):
    out = _copy(codes_dir, tmp_path)
    with open(out / "codes-000002.tar", "ab") as f:
        f.write(b"\0" * 512)
    with pytest.raises(TrainingError, match="codes-000002.tar has .* bytes, its record says"):
        CodeDataset(out)


def test_codes_beyond_the_codebook_are_a_bad_sample(codes_dir, tmp_path):
    out = _copy(codes_dir, tmp_path)
    path = out / "codes-000002.tar"
    data = bytearray(path.read_bytes())
    with tarfile.open(path) as tar:
        member = tar.getmember("000002-000000.codes.npy")
    data[member.offset_data + member.size - 1] = 200  # the last code of the first sample: 200 >= 32
    path.write_bytes(bytes(data))
    dataset = CodeDataset(out, text_len=8, truncate_captions=True)
    with pytest.warns(UserWarning, match="a code 200 beyond the codebook of 32"):
        text, codes = dataset[10]
    assert dataset.num_skipped == 1 and int(codes.max()) < 32  # the next sample was served


# ------------------------------------------------------------------------------------------ torchrun


@pytest.mark.slow
def test_torchrun_encode_gives_the_one_process_shards(codes_dir, data_dir, vae_file, tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
           "dalle_pytorch.cli.encode", "--vae_path", str(vae_file), "--image_text_folder", str(data_dir),
           "--output_dir", str(tmp_path / "codes"), "--shard_size", "5", "--device", "cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.count("encoded 12 samples") == 1  # rank 0 reports
    assert _tree_digests(tmp_path / "codes") == _tree_digests(codes_dir[0])


def test_bf16_training_tracks_fp32(codes_dir, tokenizer_json, tmp_path):
    """The same run under bf16 autocast: its loss curve follows fp32's step by step (within 0.5%), and descends."""
    flags = ["--codes", str(codes_dir[0]), "--bpe_path", str(tokenizer_json), "--hug", "--max_steps", "12",
             "--learning_rate", "1e-3"]
    _train(tmp_path / "fp32", *flags)
    _train(tmp_path / "bf16", *flags, "--precision", "bf16", "--device", "cpu")
    fp32, bf16 = _losses(tmp_path / "fp32"), _losses(tmp_path / "bf16")
    assert len(fp32) == len(bf16) == 12 and fp32 != bf16  # bf16 really ran in bf16
    assert all(abs(a - b) <= 0.005 * a for a, b in zip(fp32, bf16)), list(zip(fp32, bf16))
    assert bf16[-1] < 0.9 * bf16[0]


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_torchrun_training_on_codes_with_samples(codes_dir, tokenizer_json, tmp_path, mode):
    """DDP, or FSDP2, over two CPU processes on a codes folder, with a sample grid drawn through the VAE copy."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(ROOT / "train_dalle.py"), *DALLE_FLAGS, "--codes", str(codes_dir[0]), "--bpe_path", str(tokenizer_json),
           "--hug", "--batch_size", "2", "--max_steps", "2", "--sample_every", "2", "--num_sample_images", "2",
           "--device", "cpu", "--output_dir", str(tmp_path / "run"), *(["--fsdp"] if mode == "fsdp" else [])]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["mode"] == mode and summary["replicas_in_sync"] is True
    assert summary["samples_seen"] == 2 * 2 * 2
    assert (tmp_path / "run" / "samples" / "step_00000002.png").exists()


# ------------------------------------------------------------------------------------------ the documented sequence


@pytest.mark.slow
def test_the_documented_command_sequence_runs(tmp_path):
    """docs/training.md, "Encode once, train on codes": its bash block, as written, in a scratch folder."""
    section = (ROOT / "docs" / "training.md").read_text(encoding="utf-8").split("## Encode once, train on codes", 1)[1]
    block = re.search(r"^```bash\n(.*?)^```", section, flags=re.S | re.M).group(1)
    commands = [line for line in block.splitlines() if line.strip() and not line.startswith("#")]
    assert [c.split()[0] for c in commands] == ["python", "python", "dalle-encode", "python", "python"]
    for name in ("generate.py", "train_vae.py", "train_dalle.py", "dalle_pytorch"):
        (tmp_path / name).symlink_to(ROOT / name)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    for command in commands:
        proc = subprocess.run(["bash", "-c", command], cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=300)
        assert proc.returncode == 0, f"{command}\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}"
    assert read_manifest(tmp_path / "codes" / "shapes" / "manifest.json").samples == 32
    assert load_checkpoint(tmp_path / "runs" / "dalle-codes" / "dalle.safetensors").kind == "dalle"
    assert len([p for p in (tmp_path / "outputs-codes").rglob("*.png") if p.name != "grid.png"]) == 2
