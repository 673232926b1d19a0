"""VQGanVAE against the real taming-transformers modules (and DALLE-pytorch 1.6.6's use of them),
on taming's own file formats, and on the files DALLE-pytorch 1.6.6 itself wrote (tests/fixtures/pretrained_vae)."""
import json
import os
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from dalle_pytorch import VQGanVAE
from dalle_pytorch.errors import NotRegularFileError
from dalle_pytorch.models.taming import VQGanConfig, VQModel
from tests.oracles.vae_oracles import (REAL_CONFIGS, build_taming, dalle_pytorch_vqgan_codes, dalle_pytorch_vqgan_decode,
                               require, taming_decode_grid, save_taming_files, taming_model_section)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "pretrained_vae"


def dd(resolution=32, ch=32, ch_mult=(1, 2), num_res_blocks=1, attn=(16,), z=8, **extra):
    return {"double_z": False, "z_channels": z, "resolution": resolution, "in_channels": 3, "out_ch": 3, "ch": ch,
            "ch_mult": list(ch_mult), "num_res_blocks": num_res_blocks, "attn_resolutions": list(attn),
            "dropout": 0.0, **extra}


# (name, ddconfig, n_embed, embed_dim, gumbel): attention at different levels, channel multipliers,
# 0-2 resnet blocks, average-pool resampling, VQModel and GumbelVQ
CASES = [
    ("vq_attn_low", dd(), 16, 8, False),
    ("vq_attn_two_levels", dd(resolution=64, ch_mult=(1, 1, 2), num_res_blocks=2, attn=(32, 16), z=4), 32, 4, False),
    ("vq_no_conv_resample", dd(ch_mult=(1, 2, 2), attn=(8,), resamp_with_conv=False), 24, 6, False),
    ("gumbel", dd(z=8), 16, 8, True),
    ("gumbel_no_res_blocks", dd(resolution=64, ch_mult=(1, 1, 2), num_res_blocks=0, attn=(16,), z=16), 32, 16, True),
]


@pytest.fixture(scope="module", params=CASES, ids=[c[0] for c in CASES])
def pair(request, tmp_path_factory):
    """(taming model, our VQGanVAE read from the taming files, ddconfig, gumbel)."""
    name, ddconfig, n_embed, embed_dim, gumbel = request.param
    section = taming_model_section(ddconfig, n_embed, embed_dim, gumbel)
    model = build_taming(section, seed=len(name))
    ckpt, config = save_taming_files(model, section, tmp_path_factory.mktemp(name))
    return model, VQGanVAE(ckpt, config), ddconfig, gumbel


def images(ddconfig, batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 3, ddconfig["resolution"], ddconfig["resolution"], generator=g)


def test_codes_equal_taming(pair):
    model, vae, ddconfig, gumbel = pair
    img = images(ddconfig)
    torch.manual_seed(5)  # a GumbelVQ samples its codes: same seed, same gumbel noise
    expected = dalle_pytorch_vqgan_codes(model, img, gumbel)
    torch.manual_seed(5)
    codes = vae.get_codebook_indices(img)
    assert codes.dtype == torch.long and codes.shape == expected.shape
    side = ddconfig["resolution"] // 2 ** (len(ddconfig["ch_mult"]) - 1)
    assert codes.shape == (2, side * side)
    assert torch.equal(codes, expected)
    assert codes.unique().numel() > 1  # a meaningful comparison: not one code everywhere


def test_decode_equals_taming(pair):
    model, vae, ddconfig, gumbel = pair
    side = ddconfig["resolution"] // 2 ** (len(ddconfig["ch_mult"]) - 1)
    codes = torch.randint(0, vae.num_tokens, (2, side * side), generator=torch.Generator().manual_seed(1))
    expected = dalle_pytorch_vqgan_decode(model, codes, vae.num_tokens, gumbel)
    out = vae.decode(codes)
    assert out.shape == (2, 3, ddconfig["resolution"], ddconfig["resolution"])
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)
    assert 0.0 <= out.min() and out.max() <= 1.0 and out.std() > 0.01


def test_decode_grid_of_a_canvas_equals_taming(pair):
    """A canvas (a grid wider than tall, not square) decodes as one image, as taming's decoder does it."""
    model, vae, ddconfig, gumbel = pair
    side = ddconfig["resolution"] // 2 ** (len(ddconfig["ch_mult"]) - 1)
    codes = torch.randint(0, vae.num_tokens, (2, side, 2 * side + 1), generator=torch.Generator().manual_seed(2))
    out = vae.decode_grid(codes)
    scale = 2 ** (len(ddconfig["ch_mult"]) - 1)
    assert out.shape == (2, 3, side * scale, (2 * side + 1) * scale)
    torch.testing.assert_close(out, taming_decode_grid(model, codes, vae.num_tokens, gumbel), atol=1e-5, rtol=0)
    square = codes[:, :, :side]
    torch.testing.assert_close(vae.decode_grid(square), vae.decode(square.flatten(1)), atol=0, rtol=0)


def test_attributes_as_dalle_pytorch(pair):
    _, vae, ddconfig, gumbel = pair
    assert vae.image_size == 256 and vae.channels == 3 and vae.is_gumbel == gumbel
    assert vae.num_tokens == vae.model.quantize.codebook().shape[0]
    # DALLE-pytorch: num_layers = log2(resolution / attn_resolutions[0])
    assert 2**vae.num_layers == ddconfig["resolution"] // ddconfig["attn_resolutions"][0]
    assert vae.fmap_size == 256 // 2**vae.num_layers and vae.image_seq_len == vae.fmap_size**2


def test_state_dict_keys_are_taming_keys_under_model(pair):
    model, vae, _, _ = pair
    assert list(vae.state_dict()) == [f"model.{k}" for k in model.state_dict()]


def test_from_config_round_trip(pair):
    _, vae, ddconfig, _ = pair
    config = json.loads(json.dumps(vae.config))  # JSON-serialisable
    assert config["params"]["ddconfig"]["ch_mult"] == ddconfig["ch_mult"]
    again = VQGanVAE.from_config(config, vae.state_dict())
    codes = torch.randint(0, vae.num_tokens, (1, 16))
    assert torch.equal(again.decode(codes), vae.decode(codes))
    fresh = VQGanVAE.from_config(config)  # random weights, same architecture
    assert {k: v.shape for k, v in fresh.state_dict().items()} == {k: v.shape for k, v in vae.state_dict().items()}


def test_decode_builds_no_graph():
    vae = VQGanVAE.from_config(taming_model_section(dd(), 16, 8))
    assert all(p.requires_grad for p in vae.parameters())
    out = vae.decode(torch.zeros(1, 16, dtype=torch.long))
    assert not out.requires_grad and out.grad_fn is None


def test_bad_codes_and_images_are_refused():
    vae = VQGanVAE.from_config(taming_model_section(dd(), 16, 8))
    with pytest.raises(ValueError, match="square"):
        vae.decode(torch.zeros(1, 15, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\[0, 16\)"):
        vae.decode(torch.full((1, 16), 16))
    with pytest.raises(ValueError, match="integer"):
        vae.decode(torch.zeros(1, 16))
    with pytest.raises(ValueError, match="images"):
        vae.get_codebook_indices(torch.rand(1, 4, 32, 32))
    with pytest.raises(NotImplementedError):
        vae(torch.rand(1, 3, 32, 32))


# -- configs ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("change, message", [
    ({"ch": 1_000_000}, "beyond any VQGAN"),
    ({"resolution": 10**9}, "beyond any VQGAN"),
    ({"ch": 48}, "multiples of 32"),
    ({"double_z": True}, "double_z"),
    ({"ch_mult": []}, "ch_mult"),
    ({"ch_mult": [1, 2.5]}, "ch_mult"),
    ({"attn_resolutions": []}, "attn_resolutions is empty"),
    ({"num_res_blocks": "2"}, "num_res_blocks must be an integer"),
    ({"give_pre_end": True}, "give_pre_end"),
    ({"colour": 1}, "unknown ddconfig"),
    ({"dropout": 1.5}, "dropout"),
])
def test_bad_configs_are_refused_before_building(change, message):
    section = taming_model_section({**dd(), **change}, 16, 8)
    with pytest.raises(ValueError, match=message):
        VQGanVAE.from_config(section)


def test_bad_model_sections_are_refused():
    with pytest.raises(ValueError, match="model.target"):
        VQGanVAE.from_config({**taming_model_section(dd(), 16, 8), "target": "taming.models.vqgan.EMAVQ"})
    with pytest.raises(ValueError, match="embed_dim == z_channels"):
        VQGanVAE.from_config(taming_model_section(dd(z=8), 16, 4, gumbel=True))
    section = taming_model_section(dd(), 16, 8)
    section["params"]["remap"] = "used.npy"
    with pytest.raises(ValueError, match="remap"):
        VQGanVAE.from_config(section)
    with pytest.raises(ValueError, match="more than the"):
        VQGanVAE.from_config(taming_model_section(dd(ch=1024, ch_mult=(1, 2, 4, 8, 16), num_res_blocks=16), 16, 8))


def test_ckpt_path_in_config_is_not_followed(tmp_path):
    section = taming_model_section(dd(), 16, 8)
    model = build_taming(section)
    section["params"]["ckpt_path"] = str(tmp_path / "elsewhere.ckpt")  # taming would load this; we never do
    ckpt, config = save_taming_files(model, section, tmp_path)
    vae = VQGanVAE(ckpt, config)
    assert torch.equal(vae.model.quant_conv.weight, model.quant_conv.weight)


def test_weights_that_do_not_fit_the_config_are_refused(tmp_path):
    small = taming_model_section(dd(), 16, 8)
    ckpt, _ = save_taming_files(build_taming(small), small, tmp_path, "small")
    other = taming_model_section(dd(), 32, 8)  # a larger codebook
    _, config = save_taming_files(build_taming(other), other, tmp_path, "other")
    with pytest.raises(ValueError, match=r"quantize.embedding.weight has shape \(16, 8\) in the file, \(32, 8\)"):
        VQGanVAE(ckpt, config)
    narrower = taming_model_section(dd(ch_mult=(1, 1)), 16, 8)
    _, config = save_taming_files(build_taming(narrower), narrower, tmp_path, "narrower")
    with pytest.raises(ValueError, match="unexpected 4"):
        VQGanVAE(ckpt, config)
    fewer = taming_model_section(dd(num_res_blocks=2), 16, 8)
    _, config = save_taming_files(build_taming(fewer), fewer, tmp_path, "fewer")
    with pytest.raises(ValueError, match="missing"):
        VQGanVAE(ckpt, config)
    with pytest.raises(ValueError, match="shape"):
        VQGanVAE.from_config(other, VQGanVAE(ckpt, tmp_path / "small.yaml").state_dict())


def test_config_and_ckpt_must_be_regular_files(tmp_path):
    section = taming_model_section(dd(), 16, 8)
    ckpt, config = save_taming_files(build_taming(section), section, tmp_path)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(NotRegularFileError, match="not a regular file"):
        VQGanVAE(ckpt, fifo)
    with pytest.raises(NotRegularFileError, match="not a regular file"):
        VQGanVAE(fifo, config)
    with pytest.raises(IsADirectoryError, match="is a directory"):
        VQGanVAE(tmp_path, config)
    with pytest.raises(ValueError, match="both"):
        VQGanVAE(ckpt)


def test_default_files_in_home_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(FileNotFoundError) as info:
        VQGanVAE()
    message = str(info.value)
    cache = tmp_path / ".cache" / "dalle"
    assert str(cache / "vqgan.1024.model.ckpt") in message and str(cache / "vqgan.1024.config.yml") in message
    assert "heibox.uni-heidelberg.de" in message and "nothing is downloaded" in message
    cache.mkdir(parents=True)
    section = taming_model_section(dd(), 16, 8)
    model = build_taming(section)
    ckpt, config = save_taming_files(model, section, tmp_path)
    shutil.copy(config, cache / "vqgan.1024.config.yml")
    with pytest.raises(FileNotFoundError) as info:
        VQGanVAE()
    assert "vqgan.1024.model.ckpt" in str(info.value) and "vqgan.1024.config.yml" not in str(info.value)
    shutil.copy(ckpt, cache / "vqgan.1024.model.ckpt")
    assert torch.equal(VQGanVAE().model.quant_conv.weight, model.quant_conv.weight)


# -- the real taming configurations (architecture only: built on the meta device) ----------------------------


@pytest.mark.parametrize("name, num_layers, num_tokens", [("f16_1024", 4, 1024), ("f16_16384", 4, 16384),
                                                         ("gumbel_f8_8192", 3, 8192)])
def test_real_configs_build_taming_shapes(name, num_layers, num_tokens, tmp_path):
    model = require("taming.modules.diffusionmodules.model")
    Decoder, Encoder = model.Decoder, model.Encoder

    path = tmp_path / "model.yaml"
    path.write_text(REAL_CONFIGS[name])
    doc = yaml.safe_load(REAL_CONFIGS[name])
    cfg = VQGanConfig.from_taming(doc["model"])
    assert cfg.to_taming()["params"]["ddconfig"] == {**doc["model"]["params"]["ddconfig"], "resamp_with_conv": True}
    with torch.device("meta"):  # full size, no memory
        model = VQModel(cfg)
        ddconfig = doc["model"]["params"]["ddconfig"]
        theirs = {**{f"encoder.{k}": v for k, v in Encoder(**ddconfig).state_dict().items()},
                  **{f"decoder.{k}": v for k, v in Decoder(**ddconfig).state_dict().items()}}
    shapes = {k: v.shape for k, v in model.state_dict().items() if k.startswith(("encoder.", "decoder."))}
    assert shapes == {k: v.shape for k, v in theirs.items()}
    # the attributes DALLE-pytorch derives, without building the 256-channel model for real
    vae = VQGanVAE.__new__(VQGanVAE)
    torch.nn.Module.__init__(vae)
    vae._build(cfg, materialize=False)
    assert (vae.num_layers, vae.num_tokens, vae.is_gumbel) == (num_layers, num_tokens, name.startswith("gumbel"))


# -- the files DALLE-pytorch 1.6.6 wrote ------------------------------------------------------------------------


def test_dalle_pytorch_fixture_codes_and_images():
    vae = VQGanVAE(FIXTURES / "vqgan.ckpt", FIXTURES / "vqgan.yaml")
    expected = torch.load(FIXTURES / "dalle_vqgan-v1.6.6.expected.pt", weights_only=True)
    assert (vae.num_layers, vae.num_tokens, vae.fmap_size) == (4, 64, 16)
    assert torch.equal(vae.get_codebook_indices(expected["pixels"]), expected["codes_of_pixels"])
    torch.testing.assert_close(vae.decode(expected["image_codes"]), expected["images"], atol=1e-5, rtol=0)


def test_dalle_pytorch_gumbel_fixture():
    expected = torch.load(FIXTURES / "dalle_gumbel-v1.6.6.expected.pt", weights_only=True)
    vae = VQGanVAE(FIXTURES / expected["vqgan_model"], FIXTURES / expected["vqgan_config"])
    assert vae.is_gumbel and vae.num_tokens == expected["num_tokens"] and vae.num_layers == expected["num_layers"]
    torch.manual_seed(int(expected["gumbel_seed"]))
    assert torch.equal(vae.get_codebook_indices(expected["pixels"]), expected["codes_of_pixels"])
    torch.testing.assert_close(vae.decode(expected["codes_of_pixels"]), expected["recons"], atol=1e-5, rtol=0)


def test_dalle_pytorch_gumbel_checkpoint_holds_our_vae_weights():
    """DALLE-pytorch stores the VAE inside the DALLE weights under vae.*: the same names and values as ours."""
    vae = VQGanVAE(FIXTURES / "gumbel.ckpt", FIXTURES / "gumbel.yaml")
    weights = torch.load(FIXTURES / "dalle_gumbel-v1.6.6.pt", weights_only=True)["weights"]
    stored = {k[len("vae."):]: v for k, v in weights.items() if k.startswith("vae.")}
    assert list(stored) == list(vae.state_dict())
    assert all(torch.equal(stored[k], v) for k, v in vae.state_dict().items())
