"""Untrusted checkpoints: doctored headers, edited configs, tokenizers that name files, non-regular files.

Each case is what a hostile or careless user could hand the loader; each must end in one clear
CheckpointError (or refusal) without allocating what the header claims, reading files it names, or
blocking on a FIFO.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from dalle_pytorch import DALLE, load, load_checkpoint, save
from dalle_pytorch.errors import CheckpointError, NotRegularFileError
from tests.helpers import tiny_dalle

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("hostile") / "model.safetensors"
    save(tiny_dalle(), path, metadata={"step": 1})
    return path


def _header(path: Path) -> tuple[dict, dict]:
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    return load_file(str(path)), meta


def _doctor(src: Path, dst: Path, keep_integrity: bool = True, **edits) -> Path:
    """A copy of `src` with JSON metadata fields changed: edits = {field: {key: value}}."""
    tensors, meta = _header(src)
    for field, changes in edits.items():
        value = json.loads(meta[field])
        value.update(changes)
        meta[field] = json.dumps(value)
    if not keep_integrity:
        meta.pop("integrity")
    save_file(tensors, str(dst), metadata=meta)
    return dst


# -- doctored sizes ---------------------------------------------------------------------------------


def test_a_huge_config_is_refused_before_anything_is_allocated(saved, tmp_path):
    """dim=16384, depth=64 (~800 GB of weights if built) and a VAE of image_size 65536 (a 16384 x 16384
    grid: petabytes of attention masks) are refused under a 1.5 GB address-space budget."""
    big = _doctor(saved, tmp_path / "big.safetensors", keep_integrity=False, config={"dim": 16384, "depth": 64})
    wide = _doctor(saved, tmp_path / "wide.safetensors", keep_integrity=False, vae_config={"image_size": 65536})
    legacy = torch.load(ROOT / "tests" / "fixtures" / "full_plain-v1.6.6.pt", weights_only=True)
    legacy["hparams"] = {**legacy["hparams"], "dim": 16384, "depth": 64}
    torch.save(legacy, tmp_path / "big.pt")
    script = textwrap.dedent("""
        import resource, sys, warnings
        import torch
        from dalle_pytorch import load, CheckpointError
        warnings.simplefilter("ignore")
        with open("/proc/self/statm") as f:
            vsz = int(f.read().split()[0]) * resource.getpagesize()
        resource.setrlimit(resource.RLIMIT_AS, (vsz + 1536 * 2**20, resource.RLIM_INFINITY))
        for path in sys.argv[1:]:
            try:
                load(path)
            except CheckpointError as e:
                print("refused:", e)
            else:
                print("LOADED", path)
    """)
    out = subprocess.run([sys.executable, "-c", script, str(big), str(wide), str(tmp_path / "big.pt")],
                         capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 3 and all(line.startswith("refused:") for line in lines), out.stdout + out.stderr
    assert "other shapes" in lines[0] and "big.safetensors" in lines[0]
    assert "268,435,463 positions" in lines[1] and "GiB" in lines[1]
    assert "other shapes" in lines[2] and "big.pt" in lines[2]


def test_tensor_bytes_beyond_the_file_are_refused(saved, tmp_path):
    raw = saved.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + n])
    name = next(k for k in header if k != "__metadata__")
    start, end = header[name]["data_offsets"]
    header[name]["data_offsets"] = [start, end + 10**12]  # claims a terabyte more than the file holds
    blob = json.dumps(header).encode()
    bad = tmp_path / "liar.safetensors"
    bad.write_bytes(len(blob).to_bytes(8, "little") + blob + raw[8 + n :])
    with pytest.raises(CheckpointError, match="liar.safetensors.*truncated or corrupted"):
        load(bad)


@pytest.mark.filterwarnings("ignore:.*written before checkpoints carried SHA-256 digests")
def test_nonsense_config_values_give_the_constructors_error(saved, tmp_path):
    for changes, message in (({"dim": -96}, "dim must be a positive integer, got -96"),
                             ({"heads": 0}, "heads must be a positive integer, got 0"),
                             ({"attn_types": []}, "attn_types must name at least one attention type")):
        with pytest.raises(ValueError, match=message):
            DALLE(vae=tiny_dalle().vae, **{**tiny_dalle().config.to_dict(), **changes})
        path = _doctor(saved, tmp_path / "nonsense.safetensors", keep_integrity=False, config=changes)
        with pytest.raises(CheckpointError, match=message):
            load(path)


def test_dtypes_must_match(saved, tmp_path):
    tensors, meta = _header(saved)
    meta.pop("integrity")
    key = next(k for k, v in tensors.items() if v.is_floating_point())
    tensors[key] = tensors[key].to(torch.int32)
    save_file(tensors, str(tmp_path / "dtype.safetensors"), metadata=meta)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(CheckpointError, match=f"wrong dtype: {key}"):
            load(tmp_path / "dtype.safetensors")


# -- edits that change no shape ---------------------------------------------------------------------


@pytest.mark.parametrize("field, changes", [
    ("config", {"shift_tokens": False}),
    ("config", {"attn_types": ["axial_row", "full"]}),
    ("config", {"stable": True}),
    ("vae_config", {"image_size": 64}),
    ("vae_config", {"temperature": 0.1}),
])
def test_shape_free_config_edits_are_detected(saved, tmp_path, field, changes):
    """These edits still build a model the weights fit; only the SHA-256 digests catch them."""
    path = _doctor(saved, tmp_path / "edited.safetensors", **{field: changes})
    with pytest.raises(CheckpointError, match=f"changed: {field}.*edited or damaged after saving"):
        load(path)
    stripped = _doctor(saved, tmp_path / "stripped.safetensors", keep_integrity=False, **{field: changes})
    with pytest.warns(UserWarning, match="written before checkpoints carried SHA-256 digests"):
        load(stripped)  # without digests (files of earlier versions) it loads: the check needs them


def test_damaged_tensor_bytes_are_named(saved, tmp_path):
    tensors, meta = _header(saved)
    key = sorted(tensors)[3]
    tensors[key] = tensors[key].clone()
    tensors[key].view(-1)[0] += 1
    save_file(tensors, str(tmp_path / "bitflip.safetensors"), metadata=meta)
    with pytest.raises(CheckpointError, match=f"1 tensors do not match the SHA-256 digests.*{key}"):
        load(tmp_path / "bitflip.safetensors")


def test_files_without_digests_load_and_say_so(saved, tmp_path):
    old = _doctor(saved, tmp_path / "old.safetensors", keep_integrity=False)
    with pytest.warns(UserWarning, match="re-save it"):
        loaded = load_checkpoint(old)
    assert not loaded.verified and load_checkpoint(saved).verified


# -- tokenizers that name files ---------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:.*written before checkpoints carried SHA-256 digests")
@pytest.mark.parametrize("description", [
    {"type": "simple", "bpe_path": "/etc/passwd"},
    {"type": "simple", "bpe_path": "/dev/zero"},
    {"type": "hug", "path": "/dev/zero"},
    {"type": "yttm", "path": "/etc/passwd"},
])
def test_a_stored_tokenizer_path_is_never_followed(saved, tmp_path, description):
    tensors, meta = _header(saved)
    meta.pop("integrity")
    meta["tokenizer"] = json.dumps(description)
    save_file(tensors, str(tmp_path / "tok.safetensors"), metadata=meta)
    with pytest.warns(UserWarning, match="never read"):
        loaded = load_checkpoint(tmp_path / "tok.safetensors")
    assert loaded.tokenizer is None and loaded.tokenizer_description == description


# -- files that are not regular files ---------------------------------------------------------------


def test_fifos_devices_and_proc_files_are_refused(saved, tmp_path):
    fifo = tmp_path / "model.fifo"
    os.mkfifo(fifo)
    for path in (fifo, "/dev/zero", "/proc/self/environ"):
        with pytest.raises(NotRegularFileError, match="only regular files are read"):
            load(path)
    with pytest.raises(NotRegularFileError, match="vae_path"):
        load(saved, vae_path=fifo)
    with pytest.raises(IsADirectoryError, match="is a directory"):
        load(tmp_path)


def test_a_wrong_vae_path_is_blamed_on_the_vae_file(saved, tmp_path):
    bad = tmp_path / "vae.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError) as err:
        load(saved, vae_path=bad)
    assert str(err.value).startswith(str(bad)) and str(saved) not in str(err.value)
    with pytest.raises(FileNotFoundError, match="vae_path.*missing.pt"):
        load(saved, vae_path=tmp_path / "missing.pt")


def test_the_shipped_demo_model_carries_digests():
    from dalle_pytorch.pipeline.text_to_image import demo_path

    assert load_checkpoint(demo_path()).verified
