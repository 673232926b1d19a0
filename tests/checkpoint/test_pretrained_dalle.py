"""DALLE-pytorch 1.6.6 models over its pretrained VAEs (VQGanVAE, GumbelVQ, OpenAIDiscreteVAE): loaded with
`vae=`, from ~/.cache/dalle, or converted into one self-contained safetensors file; their logits, loss,
codes and images reproduced."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from dalle_pytorch import CheckpointError, OpenAIDiscreteVAE, VQGanVAE, load, load_checkpoint, save
from dalle_pytorch.cli.convert import main as convert_main

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "pretrained_vae"


def vqgan() -> VQGanVAE:
    return VQGanVAE(FIXTURES / "vqgan.ckpt", FIXTURES / "vqgan.yaml")


def gumbel() -> VQGanVAE:
    return VQGanVAE(FIXTURES / "gumbel.ckpt", FIXTURES / "gumbel.yaml")


def dvae() -> OpenAIDiscreteVAE:
    return OpenAIDiscreteVAE(FIXTURES / "encoder.pkl", FIXTURES / "decoder.pkl")


CASES = {"dalle_vqgan": vqgan, "dalle_gumbel": gumbel, "dalle_dvae": dvae}


def expected(name: str) -> dict:
    return torch.load(FIXTURES / f"{name}-v1.6.6.expected.pt", weights_only=True)


def check_outputs(model, e: dict) -> None:
    """Logits at the stored positions (unmasked entries, atol 1e-4), the loss, codes and decodes."""
    with torch.no_grad():
        logits = model(e["text"], e["image_codes"])[:, e["logit_positions"]]
        loss = model(e["text"], e["image_codes"], return_loss=True)
    keep = ~model.logits_mask(e["logit_positions"])
    torch.testing.assert_close(logits[:, keep], e["logits"][:, keep], atol=1e-4, rtol=0)
    torch.testing.assert_close(loss, e["loss"], atol=1e-4, rtol=0)
    if "gumbel_seed" in e:
        torch.manual_seed(int(e["gumbel_seed"]))
    assert torch.equal(model.vae.get_codebook_indices(e["pixels"]), e["codes_of_pixels"])
    if "recons" in e:
        torch.testing.assert_close(model.vae.decode(e["codes_of_pixels"]), e["recons"], atol=1e-5, rtol=0)
    else:
        torch.testing.assert_close(model.vae.decode(e["image_codes"]), e["images"], atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", sorted(CASES))
def test_dalle_pytorch_models_over_pretrained_vaes(name):
    loaded = load_checkpoint(FIXTURES / f"{name}-v1.6.6.pt", vae=CASES[name]())
    assert loaded.source == "dalle-pytorch-legacy" and loaded.kind == "dalle"
    assert type(loaded.model.vae).__name__ == loaded.metadata["vae_class_name"]
    check_outputs(loaded.model, expected(name))


@pytest.mark.parametrize("name", sorted(CASES))
def test_converted_models_are_one_self_contained_file(name, tmp_path):
    """Saved in our format the VAE is stored whole: the file loads with no VAE files and no flags."""
    model = load(FIXTURES / f"{name}-v1.6.6.pt", vae=CASES[name]())
    save(model, tmp_path / "m.safetensors")
    again = load_checkpoint(tmp_path / "m.safetensors")
    assert again.verified and type(again.model.vae) is type(model.vae)
    assert again.model.vae.config == model.vae.config
    check_outputs(again.model, expected(name))


def test_the_convert_cli_takes_dalle_pytorchs_vae_flags(tmp_path, capsys):
    out = tmp_path / "vqgan.safetensors"
    argv = [str(FIXTURES / "dalle_vqgan-v1.6.6.pt"), str(out), "--taming", "--vqgan_model_path",
            str(FIXTURES / "vqgan.ckpt"), "--vqgan_config_path", str(FIXTURES / "vqgan.yaml")]
    assert convert_main(argv) == 0
    check_outputs(load(out), expected("dalle_vqgan"))
    out = tmp_path / "dvae.safetensors"
    assert convert_main([str(FIXTURES / "dalle_dvae-v1.6.6.pt"), str(out), "--openai_encoder_path",
                         str(FIXTURES / "encoder.pkl"), "--openai_decoder_path", str(FIXTURES / "decoder.pkl")]) == 0
    assert type(load(out).vae) is OpenAIDiscreteVAE


def test_the_vae_comes_from_dalle_pytorchs_cache_folder(tmp_path, monkeypatch):
    """Without vae=, the files DALLE-pytorch downloaded to ~/.cache/dalle are used; missing, the error says
    which VAE class the file needs, which files, and how to give them."""
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(CheckpointError) as err:
        load(FIXTURES / "dalle_vqgan-v1.6.6.pt")
    message = str(err.value)
    assert "is a DALLE over a VQGanVAE" in message and "--taming --vqgan_model_path" in message
    assert "vqgan.1024.model.ckpt" in message and "vqgan.1024.config.yml" in message and "\n" not in message
    with pytest.raises(CheckpointError, match="OpenAIDiscreteVAE.*encoder.pkl.*decoder.pkl"):
        load(FIXTURES / "dalle_dvae-v1.6.6.pt")
    cache = tmp_path / ".cache" / "dalle"
    cache.mkdir(parents=True)
    shutil.copy(FIXTURES / "vqgan.ckpt", cache / "vqgan.1024.model.ckpt")
    shutil.copy(FIXTURES / "vqgan.yaml", cache / "vqgan.1024.config.yml")
    check_outputs(load(FIXTURES / "dalle_vqgan-v1.6.6.pt"), expected("dalle_vqgan"))


def test_the_wrong_vae_is_refused(tmp_path):
    with pytest.raises(CheckpointError, match="is a DALLE over a VQGanVAE, not over the OpenAIDiscreteVAE"):
        load(FIXTURES / "dalle_vqgan-v1.6.6.pt", vae=dvae())
    with pytest.raises(CheckpointError, match="carries its own VAE, which differs from the given VQGanVAE"):
        load(FIXTURES / "dalle_vqgan-v1.6.6.pt", vae=gumbel())
    with pytest.raises(ValueError, match="vae or vae_path, not both"):
        load(FIXTURES / "dalle_vqgan-v1.6.6.pt", vae=vqgan(), vae_path=FIXTURES / "vqgan.ckpt")


def test_generation_over_a_vqgan_is_cached_exactly(tmp_path):
    model = load(FIXTURES / "dalle_vqgan-v1.6.6.pt", vae=vqgan())
    text = expected("dalle_vqgan")["text"][:1]
    codes = [model.generate_images(text, use_cache=use_cache, return_codes=True,
                                   generator=torch.Generator().manual_seed(0)) for use_cache in (True, False)]
    assert codes[0].shape == (1, 256) and torch.equal(codes[0], codes[1])
    images = model.generate_images(text, generator=torch.Generator().manual_seed(0))
    assert images.shape == (1, 3, 256, 256) and 0 <= float(images.min()) and float(images.max()) <= 1
