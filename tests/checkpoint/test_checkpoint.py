"""Checkpoints: DALLE-pytorch fixtures, our safetensors format, strictness, safety, atomic writes, convert CLI."""
from __future__ import annotations

import json
import os
import pickle
import stat
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import dalle_pytorch.checkpoint.ours as ckpt
from dalle_pytorch import DALLE, DiscreteVAE
from dalle_pytorch.checkpoint import (CheckpointError, load, load_checkpoint, load_training_state, save,
                                      save_training_state)
from dalle_pytorch.cli.convert import main as convert_main
from dalle_pytorch.models.dalle_pytorch_keys import native_state_dict

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
NAMES = sorted(p.name[: -len(".pt")] for p in FIXTURES.glob("*-v*.pt") if not p.name.endswith(".expected.pt"))
assert NAMES, "no DALLE-pytorch fixtures found"

_cache: dict = {}


def raw(name: str) -> dict:
    if name not in _cache:
        _cache[name] = torch.load(FIXTURES / f"{name}.pt", weights_only=True)
    return _cache[name]


def expected(name: str) -> dict:
    key = name + ".expected"
    if key not in _cache:
        _cache[key] = torch.load(FIXTURES / f"{name}.expected.pt", weights_only=True)
    return _cache[key]


def logits_of(model: DALLE, e: dict) -> torch.Tensor:
    with torch.no_grad():
        return model(e["text"], e["image_codes"])


def unmasked(model: DALLE, logits: torch.Tensor) -> torch.Tensor:
    keep = ~model.logits_mask(torch.arange(logits.shape[1]))
    return logits[:, keep]


def no_temp_files(folder: Path) -> bool:
    return not [p for p in folder.iterdir() if p.name.endswith(".tmp")]


def legacy_file(tmp_path: Path, name: str, filename: str = "legacy.pt", **changes) -> Path:
    d = dict(raw(name))
    d.update(changes)
    path = tmp_path / filename
    torch.save(d, path)
    return path


def train_vae_file(tmp_path: Path, name: str, filename: str = "vae.pt") -> Path:
    """The layout of DALLE-pytorch's train_vae.py, built from a fixture's VAE."""
    d = raw(name)
    weights = {k[len("vae."):]: v for k, v in d["weights"].items() if k.startswith("vae.")}
    path = tmp_path / filename
    torch.save({"hparams": dict(d["vae_params"]), "weights": weights}, path)
    return path


# -- DALLE-pytorch fixtures ------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_fixture_outputs(name):
    e = expected(name)
    loaded = load_checkpoint(FIXTURES / f"{name}.pt")
    model = loaded.model
    assert loaded.source == "dalle-pytorch-legacy" and loaded.kind == "dalle" and not model.training
    assert loaded.metadata == {"version": raw(name)["version"], "epoch": 3, "vae_class_name": "DiscreteVAE"}
    logits = logits_of(model, e)
    assert logits.shape == e["logits"].shape
    torch.testing.assert_close(unmasked(model, logits), unmasked(model, e["logits"]), atol=1e-4, rtol=0)
    with torch.no_grad():
        loss = model(e["text"], e["image_codes"], return_loss=True)
        images = model.vae.decode(e["image_codes"])
    torch.testing.assert_close(loss, e["loss"], atol=1e-4, rtol=0)
    torch.testing.assert_close(images, e["images"] * 0.5 + 0.5, atol=1e-5, rtol=0)

    fast = load(FIXTURES / f"{name}.pt", optimize_for_inference=True)
    assert fast.config.optimize_for_inference is True
    torch.testing.assert_close(logits_of(fast, e), logits, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", NAMES)
def test_fixture_generation_cached_equals_uncached(name):
    model = load(FIXTURES / f"{name}.pt")
    text = expected(name)["text"]
    codes = [
        model.generate_images(text, use_cache=use_cache, generator=torch.Generator().manual_seed(0), return_codes=True)
        for use_cache in (True, False)
    ]
    assert codes[0].shape == (2, model.image_seq_len)
    assert torch.equal(codes[0], codes[1])


@pytest.mark.parametrize("name", NAMES)
def test_round_trip_dalle(name, tmp_path):
    e = expected(name)
    model = load(FIXTURES / f"{name}.pt")
    path = tmp_path / "model.safetensors"
    save(model, path, metadata={"step": 123, "epoch": 3, "note": "hi"})
    loaded = load_checkpoint(path)
    assert loaded.source == "dalle_pytorch" and loaded.kind == "dalle"
    assert loaded.metadata == {"step": 123, "epoch": 3, "note": "hi"}
    assert loaded.tokenizer is None
    assert loaded.model.config == model.config and loaded.model.vae.config == model.vae.config
    assert torch.equal(logits_of(loaded.model, e), logits_of(model, e))
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        keys = set(f.keys())
    assert meta["format"] == "dalle_pytorch" and meta["format_version"] == "1" and meta["kind"] == "dalle"
    assert meta["vae_class"] == "DiscreteVAE" and "tokenizer" not in meta
    assert json.loads(meta["config"]) == model.config.to_dict() and json.loads(meta["vae_config"]) == model.vae.config
    with native_state_dict():  # our files hold our module names (state_dict() speaks DALLE-pytorch's)
        assert keys == set(model.state_dict()) and any(k.startswith("vae.") for k in keys)


def test_round_trip_vae_and_tokenizer(tmp_path):
    from dalle_pytorch.text.factory import get_default_tokenizer

    e = expected("full_plain-v1.6.6")
    model = load(FIXTURES / "full_plain-v1.6.6.pt")
    path = tmp_path / "vae.safetensors"
    save(model.vae, path, metadata={"epoch": 7})
    loaded = load_checkpoint(path)
    assert loaded.kind == "vae" and isinstance(loaded.model, DiscreteVAE) and loaded.metadata == {"epoch": 7}
    with torch.no_grad():
        assert torch.equal(loaded.model.decode(e["image_codes"]), model.vae.decode(e["image_codes"]))

    tokenizer = get_default_tokenizer()
    path = tmp_path / "with_tok.safetensors"
    save(model, path, tokenizer=tokenizer)
    loaded = load_checkpoint(path)
    assert loaded.tokenizer_description == tokenizer.describe()
    assert loaded.tokenizer.encode("a red circle") == tokenizer.encode("a red circle")


def test_hug_tokenizer_round_trip(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    from dalle_pytorch.text.factory import HugTokenizer

    tok = Tokenizer(models.BPE(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel()
    tok.train_from_iterator(["a red circle", "a blue square", "two green triangles"] * 5,
                            trainers.BpeTrainer(vocab_size=120, special_tokens=["[PAD]", "[UNK]"]))
    tok.save(str(tmp_path / "tok.json"))
    tokenizer = HugTokenizer(tmp_path / "tok.json")
    model = DiscreteVAE(image_size=8, num_layers=1, num_tokens=8, codebook_dim=4, hidden_dim=4)
    save(model, tmp_path / "m.safetensors", tokenizer=tokenizer)
    (tmp_path / "tok.json").unlink()  # the description carries the JSON itself
    loaded = load_checkpoint(tmp_path / "m.safetensors")
    assert loaded.tokenizer.encode("a blue circle") == tokenizer.encode("a blue circle")


def test_round_trip_other_options(tmp_path):
    """Options the fixtures do not cover: sparse layers (a persistent random-blocks buffer), sandwich
    norm, stable, learned positions with shared input/output embeddings."""
    torch.manual_seed(0)
    vae = DiscreteVAE(image_size=32, num_layers=2, num_tokens=16, codebook_dim=8, hidden_dim=8)
    model = DALLE(dim=32, vae=vae, num_text_tokens=50, text_seq_len=8, depth=2, heads=2, dim_head=8,
                  attn_types=("sparse", "conv_like"), sparse_block_size=8, sandwich_norm=True, stable=True,
                  rotary_emb=False, share_input_output_emb=True).eval()
    save(model, tmp_path / "m.safetensors")
    loaded = load(tmp_path / "m.safetensors", map_location="cpu")
    assert loaded.config == model.config
    text, codes = torch.randint(1, 50, (2, 8)), torch.randint(0, 16, (2, 64))
    with torch.no_grad():
        assert torch.equal(loaded(text, codes), model(text, codes))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_map_location_cuda():
    e = expected("axial-v1.6.6")
    model = load(FIXTURES / "axial-v1.6.6.pt", map_location="cuda")
    assert model.to_logits[1].weight.is_cuda and model.transformer.rot_cos.is_cuda
    with torch.no_grad():
        logits = model(e["text"].cuda(), e["image_codes"].cuda()).cpu()
    torch.testing.assert_close(unmasked(model.cpu(), logits), unmasked(model, e["logits"]), atol=1e-4, rtol=0)


def test_half_precision_round_trip(tmp_path):
    vae = DiscreteVAE(image_size=8, num_layers=1, num_tokens=8, codebook_dim=4, hidden_dim=4).half()
    save(vae, tmp_path / "h.safetensors")
    loaded = load(tmp_path / "h.safetensors")
    assert all(p.dtype == torch.float16 for p in loaded.parameters())
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), vae.state_dict().values()))


# -- errors ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def good_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("good") / "good.safetensors"
    save(load(FIXTURES / "full_plain-v1.6.6.pt"), path, metadata={"step": 1})
    return path


def test_truncated_and_garbage_files(good_file, tmp_path):
    data = good_file.read_bytes()
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupted") as err:
        load(truncated)
    assert str(truncated) in str(err.value)

    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(os.urandom(4096))
    with pytest.raises(CheckpointError, match=r"garbage\.safetensors"):
        load(garbage)
    garbage_pt = tmp_path / "garbage.pt"
    garbage_pt.write_bytes(b"\x93NUMPY not a checkpoint" + os.urandom(256))
    with pytest.raises(CheckpointError, match="not a readable checkpoint|truncated or corrupted"):
        load(garbage_pt)
    half_pt = tmp_path / "half.pt"
    half_pt.write_bytes((FIXTURES / "axial-v1.6.6.pt").read_bytes()[:5000])
    with pytest.raises(CheckpointError, match="truncated or corrupted"):
        load(half_pt)
    with pytest.raises(FileNotFoundError):
        load(tmp_path / "missing.safetensors")


@pytest.mark.filterwarnings("ignore:.*written before checkpoints carried SHA-256 digests")
def test_foreign_safetensors_and_bad_metadata(good_file, tmp_path):
    """Headers edited by hand, without the integrity record (as in files written before it existed, or
    by someone who recomputed it): every other check still catches what does not fit."""
    tensors = load_file(str(good_file))
    with safe_open(str(good_file), framework="pt") as f:
        meta = {k: v for k, v in f.metadata().items() if k != "integrity"}

    def write(name, metadata):
        path = tmp_path / name
        save_file(tensors, str(path), metadata=metadata)
        return path

    with pytest.raises(CheckpointError, match="not a dalle_pytorch checkpoint"):
        load(write("bare.safetensors", None))
    with pytest.raises(CheckpointError, match="format_version '99'"):
        load(write("future.safetensors", {**meta, "format_version": "99"}))
    with pytest.raises(CheckpointError, match="VAE class 'SomeOtherVAE' is not supported"):
        load(write("other.safetensors", {**meta, "vae_class": "SomeOtherVAE"}))
    with pytest.raises(CheckpointError, match="cannot build a VQGanVAE from the stored config"):
        load(write("vqgan.safetensors", {**meta, "vae_class": "VQGanVAE"}))  # a DiscreteVAE's config

    config = json.loads(meta["config"])
    config["dim"] = 96
    with pytest.raises(CheckpointError) as err:
        load(write("dim.safetensors", {**meta, "config": json.dumps(config)}))
    msg = str(err.value)
    assert "dim.safetensors" in msg and "other shapes" in msg and "(64,) in the file vs (96,) expected" in msg
    assert "dim / heads / dim_head" in msg

    config = json.loads(meta["config"])
    config["rotary_emb"] = True
    with pytest.raises(CheckpointError, match="unexpected: .*text_pos_emb.*rotary_emb"):
        load(write("rotary.safetensors", {**meta, "config": json.dumps(config)}))

    vae_config = json.loads(meta["vae_config"])
    vae_config["hidden_dim"] = 8
    with pytest.raises(CheckpointError, match="vae.*different VAE"):
        load(write("vae.safetensors", {**meta, "vae_config": json.dumps(vae_config)}))

    extra = dict(tensors)
    extra["something.else"] = torch.zeros(2)
    path = tmp_path / "extra.safetensors"
    save_file(extra, str(path), metadata=meta)
    with pytest.raises(CheckpointError, match="1 unexpected: something.else"):
        load(path)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_malicious_pickle_is_not_executed(tmp_path):
    marker = tmp_path / "MARKER"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    for protocol in (2, pickle.HIGHEST_PROTOCOL):
        path = tmp_path / f"evil{protocol}.pt"
        with open(path, "wb") as f:
            pickle.dump({"hparams": {}, "weights": Evil()}, f, protocol=protocol)
        with pytest.raises(CheckpointError, match="refusing to unpickle arbitrary code.*system"):
            load(path)
        with pytest.raises(CheckpointError, match="refusing to unpickle arbitrary code"):
            load_training_state(path)
    torch.save({"hparams": {}, "weights": Evil()}, tmp_path / "evil_torch.pt")
    with pytest.raises(CheckpointError, match="refusing to unpickle arbitrary code"):
        load(tmp_path / "evil_torch.pt")
    assert not marker.exists()


def test_pretrained_vae_files_need_that_vae(tmp_path, monkeypatch):
    """A DALLE-pytorch file over VQGanVAE / OpenAIDiscreteVAE needs that VAE (tests/checkpoint/test_pretrained_dalle.py
    loads real ones): a DiscreteVAE is refused, and without one the error says how to give it."""
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.cache/dalle
    vae = train_vae_file(tmp_path, "full_plain-v1.6.6")
    for cls in ("OpenAIDiscreteVAE", "VQGanVAE"):
        path = legacy_file(tmp_path, "full_plain-v1.6.6", vae_class_name=cls, vae_params=None)
        with pytest.raises(CheckpointError, match=f"is a DALLE over a {cls}, not over the DiscreteVAE given"):
            load(path, vae_path=vae)
        with pytest.raises(CheckpointError, match=f"is a DALLE over a {cls} .*give it with .*default files are missing"):
            load(path)
    path = legacy_file(tmp_path, "full_plain-v1.6.6", vae_class_name="SomeOtherVAE")
    with pytest.raises(CheckpointError, match="VAE class 'SomeOtherVAE' is not supported"):
        load(path)


def test_unsupported_layers_and_deepspeed(tmp_path):
    d = raw("full_plain-v1.6.6")
    path = legacy_file(tmp_path, "full_plain-v1.6.6", hparams={**d["hparams"], "attn_types": ["full", "sparse"]})
    with pytest.raises(CheckpointError, match="DeepSpeed"):
        load(path)
    path = legacy_file(tmp_path, "full_plain-v1.6.6", weights="To get a working standard checkpoint, ...")
    with pytest.raises(CheckpointError, match="DeepSpeed"):
        load(path)


def test_legacy_strictness(tmp_path):
    name = "shared_layers-v1.6.6"
    weights = dict(raw(name)["weights"])
    weights["text_emb.linear.weight"] = weights["text_emb.linear.weight"] + 1
    with pytest.raises(CheckpointError, match="text_emb.linear.weight.*copy of 'to_logits.1.weight'"):
        load(legacy_file(tmp_path, name, weights=weights))

    hparams = {**raw(name)["hparams"], "share_input_output_emb": False}
    with pytest.raises(CheckpointError, match="share_input_output_emb"):
        load(legacy_file(tmp_path, name, hparams=hparams))

    # DALLE-pytorch stores a shared layer under every depth using it: claiming sharing the weights lack fails
    hparams = {**raw(name)["hparams"], "shared_ff_ids": [0, 1, 0, 1]}
    with pytest.raises(CheckpointError, match="differs from another copy.*shared_ff_ids"):
        load(legacy_file(tmp_path, name, hparams=hparams))

    hparams = {**raw("axial-v1.6.6")["hparams"], "depth": 3}
    with pytest.raises(CheckpointError, match="missing: transformer.attns.2.*different depth"):
        load(legacy_file(tmp_path, "axial-v1.6.6", hparams=hparams))

    weights = dict(raw("axial-v1.6.6")["weights"])
    del weights["to_logits.0.bias"]
    with pytest.raises(CheckpointError, match="1 missing: to_logits.0.bias"):
        load(legacy_file(tmp_path, "axial-v1.6.6", weights=weights))

    hparams = {**raw("full_plain-v1.6.6")["hparams"], "shift_tokens": True}
    with pytest.raises(CheckpointError, match="shift_tokens"):
        load(legacy_file(tmp_path, "full_plain-v1.6.6", hparams=hparams))


def test_legacy_hparams_without_shift_and_rotary_switches(tmp_path):
    """Old releases had no shift_tokens / rotary_emb hparams: they are read from the key layout."""
    for name in ("full_shift_rotary-v1.2.2", "full_plain-v1.6.6"):
        hparams = {k: v for k, v in raw(name)["hparams"].items() if k not in ("shift_tokens", "rotary_emb")}
        model = load(legacy_file(tmp_path, name, hparams=hparams))
        assert model.config.shift_tokens == raw(name)["hparams"]["shift_tokens"]
        assert model.config.rotary_emb == raw(name)["hparams"]["rotary_emb"]
        e = expected(name)
        torch.testing.assert_close(unmasked(model, logits_of(model, e)), unmasked(model, e["logits"]), atol=1e-4, rtol=0)


def test_overrides():
    path = FIXTURES / "full_plain-v1.6.6.pt"
    model = load(path, attn_dropout=0.1, ff_dropout=0.2)
    assert model.config.attn_dropout == 0.1 and model.config.ff_dropout == 0.2 and not model.training
    with pytest.raises(ValueError, match="cannot override \\['dim'\\]"):
        load(path, dim=128)


def test_vae_files_and_vae_path(tmp_path):
    name = "full_shift_rotary-v1.6.6"
    e = expected(name)
    vae_file = train_vae_file(tmp_path, name)
    loaded = load_checkpoint(vae_file)
    assert loaded.kind == "vae" and loaded.source == "dalle-pytorch-legacy"
    with torch.no_grad():
        torch.testing.assert_close(loaded.model.decode(e["image_codes"]), e["images"] * 0.5 + 0.5, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="VAE checkpoint"):
        load(vae_file, optimize_for_inference=True)

    no_vae = {k: v for k, v in raw(name)["weights"].items() if not k.startswith("vae.")}
    path = legacy_file(tmp_path, name, "novae.pt", vae_params=None, weights=no_vae)
    with pytest.raises(CheckpointError, match="vae_path"):
        load(path)
    for vae_path in (vae_file, FIXTURES / f"{name}.pt"):  # a train_vae file, or a DALLE whose VAE is taken
        model = load(path, vae_path=vae_path)
        torch.testing.assert_close(unmasked(model, logits_of(model, e)), unmasked(model, e["logits"]), atol=1e-4, rtol=0)

    # the file's own VAE must agree with vae_path
    other = DiscreteVAE(**raw(name)["vae_params"])
    torch.save({"hparams": dict(raw(name)["vae_params"]), "weights": other.state_dict()}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="carries its own VAE"):
        load(FIXTURES / f"{name}.pt", vae_path=tmp_path / "other.pt")
    model = load(FIXTURES / f"{name}.pt", vae_path=vae_file)  # the same VAE: fine
    ours = tmp_path / "ours.safetensors"
    save(model, ours)
    with pytest.raises(CheckpointError, match="carries its own VAE"):
        load(ours, vae_path=tmp_path / "other.pt")


# -- writing ---------------------------------------------------------------------------------------


def test_atomic_save_failure_keeps_old_file(good_file, tmp_path, monkeypatch):
    path = tmp_path / "model.safetensors"
    path.write_bytes(good_file.read_bytes())
    before = path.read_bytes()
    model = load(good_file)

    def broken_save_file(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"partial bytes")
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(ckpt, "save_file", broken_save_file)
    with pytest.raises(OSError, match="simulated"):
        save(model, path)
    monkeypatch.undo()
    assert path.read_bytes() == before and no_temp_files(tmp_path)

    def broken_replace(src, dst):
        raise KeyboardInterrupt

    monkeypatch.setattr(ckpt.os, "replace", broken_replace)
    with pytest.raises(KeyboardInterrupt):
        save(model, path, metadata={"step": 2})
    with pytest.raises(KeyboardInterrupt):
        save_training_state(path, {"step": 2})
    monkeypatch.undo()
    assert path.read_bytes() == before and no_temp_files(tmp_path)
    assert load_checkpoint(path).metadata == {"step": 1}

    save(model, path, metadata={"step": 3})  # a working save replaces the file
    assert load_checkpoint(path).metadata == {"step": 3} and no_temp_files(tmp_path)


@pytest.mark.skipif(os.name != "posix", reason="POSIX permission bits")
def test_saved_files_get_the_usual_permissions(good_file, tmp_path):
    """safetensors writes a private 0o600 file; a checkpoint gets 0o666 & ~umask like any new file."""
    model = load(good_file)
    old = os.umask(0o022)
    try:
        save(model, tmp_path / "a.safetensors")
        save_training_state(tmp_path / "a.state.safetensors", {"step": 1})
        os.umask(0o077)
        save(model, tmp_path / "b.safetensors")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.safetensors").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "a.state.safetensors").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "b.safetensors").stat().st_mode) == 0o600


def test_non_finite_weights_refused(good_file, tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_bytes(good_file.read_bytes())
    model = load(good_file)
    with torch.no_grad():
        model.transformer.ffs[1].proj_in.weight[3, 4] = float("nan")
    with pytest.raises(ValueError, match="transformer.ffs.1.proj_in.weight.*non-finite"):
        save(model, path)
    assert path.read_bytes() == good_file.read_bytes() and no_temp_files(tmp_path)


def test_save_argument_errors(tmp_path):
    vae = DiscreteVAE(image_size=8, num_layers=1, num_tokens=8, codebook_dim=4, hidden_dim=4)
    with pytest.raises(TypeError, match="a DALLE, a DiscreteVAE or a CLIP"):
        save(torch.nn.Linear(2, 2), tmp_path / "x.safetensors")
    with pytest.raises(ValueError, match="JSON"):
        save(vae, tmp_path / "x.safetensors", metadata={"bad": object()})
    assert not (tmp_path / "x.safetensors").exists() and no_temp_files(tmp_path)


def test_training_state_round_trip(tmp_path):
    model = torch.nn.Linear(4, 3)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(torch.randn(2, 4)).sum().backward()
    opt.step()
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt)
    state = {
        "optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "step": 10, "epoch": 1,
        "rng": {"torch": torch.get_rng_state(), "python": list(__import__("random").getstate()[1][:5])},
        "data_position": {"shard": "a.tar", "index": 17}, "loss": float("nan"),
    }
    path = tmp_path / "train_state.pt"
    save_training_state(path, state)
    back = load_training_state(path)
    assert back["step"] == 10 and back["data_position"] == {"shard": "a.tar", "index": 17}
    assert torch.equal(back["rng"]["torch"], state["rng"]["torch"])
    opt2 = torch.optim.Adam(torch.nn.Linear(4, 3).parameters(), lr=1e-3)
    opt2.load_state_dict(back["optimizer"])
    torch.testing.assert_close(opt2.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])

    class Thing:
        pass

    with pytest.raises(TypeError, match=r"state\['extra'\]\[0\] is a Thing"):
        save_training_state(tmp_path / "bad.pt", {"extra": [Thing()]})
    assert not (tmp_path / "bad.pt").exists() and no_temp_files(tmp_path)


# -- convert CLI -----------------------------------------------------------------------------------


def test_convert_cli(tmp_path, capsys):
    name = "conv_like-v1.6.6"
    out = tmp_path / "converted.safetensors"
    assert convert_main([str(FIXTURES / f"{name}.pt"), str(out), "--default_tokenizer"]) == 0
    printed = capsys.readouterr().out
    assert "DALLE" in printed and "1.6.6" in printed and "dim=64" in printed and "image_size=32" in printed
    loaded = load_checkpoint(out)
    assert loaded.source == "dalle_pytorch" and loaded.model.config.conv_variant == "up_left"
    assert loaded.metadata["converted_from"]["version"] == "1.6.6" and loaded.tokenizer is not None
    e = expected(name)
    original = load(FIXTURES / f"{name}.pt")
    assert torch.equal(logits_of(loaded.model, e), logits_of(original, e))

    # DALLE-pytorch's --bpe_path without --hug is a youtokentome model: stored whole in the output
    yttm_out = tmp_path / "yttm.safetensors"
    yttm = Path(__file__).resolve().parents[1] / "fixtures" / "yttm" / "en.bpe"
    assert convert_main([str(FIXTURES / f"{name}.pt"), str(yttm_out), "--bpe_path", str(yttm)]) == 0
    stored = load_checkpoint(yttm_out).tokenizer
    assert type(stored).__name__ == "YttmTokenizer" and stored.model_str == yttm.read_text()

    before = out.read_bytes()
    assert convert_main([str(FIXTURES / "axial-v1.6.6.pt"), str(out)]) == 1
    assert "--force" in capsys.readouterr().err and out.read_bytes() == before
    assert convert_main([str(FIXTURES / "axial-v1.6.6.pt"), str(out), "--force"]) == 0
    assert load(out).config.attn_types == ("axial_row", "axial_col")

    vae_out = tmp_path / "vae.safetensors"
    assert convert_main([str(train_vae_file(tmp_path, name)), str(vae_out)]) == 0
    assert "DiscreteVAE" in capsys.readouterr().out and load_checkpoint(vae_out).kind == "vae"

    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"nonsense")
    assert convert_main([str(bad), str(tmp_path / "never.safetensors")]) == 1
    assert "error:" in capsys.readouterr().err and not (tmp_path / "never.safetensors").exists()


def test_pipeline_from_checkpoint_needs_a_dalle(tmp_path):
    """Pipeline.from_checkpoint (which replaced DALLE.from_checkpoint, an import circle) loads a
    DALLE file and refuses a VAE file with a clear error."""
    from dalle_pytorch import DALLE, GenerationError, Pipeline, save
    from tests.helpers import tiny_dalle

    model = tiny_dalle()
    save(model, tmp_path / "m.safetensors")
    with pytest.warns(UserWarning, match="the tokenizer has 49408 tokens"):  # no tokenizer stored: the default
        pipe = Pipeline.from_checkpoint(tmp_path / "m.safetensors", device="cpu")
    assert isinstance(pipe.model, DALLE)
    save(model.vae, tmp_path / "v.safetensors")
    with pytest.raises(GenerationError, match="a DALLE checkpoint is needed"):
        Pipeline.from_checkpoint(tmp_path / "v.safetensors", device="cpu")


def test_clip_round_trip(tmp_path):
    from dalle_pytorch import CLIP

    torch.manual_seed(0)
    clip = CLIP(dim_text=32, dim_image=32, dim_latent=16, num_text_tokens=50, text_enc_depth=1, text_seq_len=6,
                text_heads=2, visual_enc_depth=1, visual_heads=2, visual_image_size=32, visual_patch_size=8).eval()
    save(clip, tmp_path / "clip.safetensors", metadata={"step": 3})
    loaded = load_checkpoint(tmp_path / "clip.safetensors")
    assert loaded.kind == "clip" and loaded.metadata == {"step": 3} and isinstance(loaded.model, CLIP)
    text, images = torch.randint(1, 50, (2, 6)), torch.rand(2, 3, 32, 32)
    assert torch.equal(clip(text, images), loaded.model(text, images))
