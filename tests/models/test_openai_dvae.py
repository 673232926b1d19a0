"""OpenAIDiscreteVAE against the real dall_e modules (as DALLE-pytorch 1.6.6 uses them), read from
whole pickled dall_e modules as OpenAI ships encoder.pkl / decoder.pkl."""
import json
import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from dalle_pytorch import OpenAIDiscreteVAE
from dalle_pytorch.formats.safe_pickle import UnsafePickleError
from tests.oracles.vae_oracles import build_dall_e, dall_e_decode_grid, dalle_pytorch_dvae_codes, dalle_pytorch_dvae_decode

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "pretrained_vae"

# (n_hid, n_blk_per_group, vocab_size, n_init, torch.save zip format)
CASES = [(64, 1, 512, 32, True), (64, 2, 1024, 128, False)]


@pytest.fixture(scope="module", params=CASES, ids=["zip_1_block", "legacy_2_blocks"])
def pair(request, tmp_path_factory):
    n_hid, blocks, vocab, n_init, zipped = request.param
    enc, dec = build_dall_e(n_hid, blocks, vocab, n_init)
    folder = tmp_path_factory.mktemp("dvae")
    torch.save(enc, folder / "encoder.pkl", _use_new_zipfile_serialization=zipped)
    torch.save(dec, folder / "decoder.pkl", _use_new_zipfile_serialization=zipped)
    return enc, dec, OpenAIDiscreteVAE(folder / "encoder.pkl", folder / "decoder.pkl"), folder


def test_codes_equal_dall_e(pair):
    enc, _, vae, _ = pair
    img = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    codes = vae.get_codebook_indices(img)
    assert codes.dtype == torch.long and codes.shape == (2, 64)
    assert torch.equal(codes, dalle_pytorch_dvae_codes(enc, img))
    assert codes.unique().numel() > 1


def test_decode_equals_dall_e(pair):
    _, dec, vae, _ = pair
    codes = torch.randint(0, vae.num_tokens, (2, 16), generator=torch.Generator().manual_seed(1))
    out = vae.decode(codes)
    assert out.shape == (2, 3, 32, 32)
    torch.testing.assert_close(out, dalle_pytorch_dvae_decode(dec, codes, vae.num_tokens), atol=1e-5, rtol=0)
    assert out.std() > 0.01


def test_decode_grid_of_a_canvas_equals_dall_e(pair):
    _, dec, vae, _ = pair
    codes = torch.randint(0, vae.num_tokens, (2, 3, 7), generator=torch.Generator().manual_seed(2))
    out = vae.decode_grid(codes)
    assert out.shape == (2, 3, 24, 56)
    torch.testing.assert_close(out, dall_e_decode_grid(dec, codes, vae.num_tokens), atol=1e-5, rtol=0)
    torch.testing.assert_close(vae.decode_grid(codes[:, :, :3]), vae.decode(codes[:, :, :3].flatten(1)), atol=0, rtol=0)


def test_modules_equal_dall_e_modules(pair):
    """Our Encoder / Decoder forward (one-hot input) equal dall_e's on the same input; keys are dall_e's."""
    enc, dec, vae, _ = pair
    assert list(vae.state_dict()) == [f"enc.{k}" for k in enc.state_dict()] + [f"dec.{k}" for k in dec.state_dict()]
    x = torch.rand(1, 3, 32, 32)
    torch.testing.assert_close(vae.enc(x), enc(x), atol=1e-5, rtol=0)
    z = F.one_hot(torch.randint(0, vae.num_tokens, (1, 4, 4)), vae.num_tokens).permute(0, 3, 1, 2).float()
    torch.testing.assert_close(vae.dec(z), dec(z), atol=1e-5, rtol=0)


def test_attributes_as_dalle_pytorch(pair):
    enc, _, vae, _ = pair
    assert (vae.image_size, vae.num_layers, vae.channels, vae.num_tokens) == (256, 3, 3, enc.vocab_size)
    assert vae.fmap_size == 32 and vae.image_seq_len == 1024


def test_from_config_round_trip(pair):
    _, _, vae, _ = pair
    config = json.loads(json.dumps(vae.config))
    again = OpenAIDiscreteVAE.from_config(config, vae.state_dict())
    codes = torch.randint(0, vae.num_tokens, (1, 4))
    assert torch.equal(again.decode(codes), vae.decode(codes))
    fresh = OpenAIDiscreteVAE.from_config(config)
    assert {k: v.shape for k, v in fresh.state_dict().items()} == {k: v.shape for k, v in vae.state_dict().items()}
    assert fresh.enc.blocks.input.b.abs().sum() == 0  # dall_e's initialisation: zero biases


def test_decode_builds_no_graph():
    vae = OpenAIDiscreteVAE.from_config({"encoder": dict(n_hid=8, n_blk_per_group=1, input_channels=3, vocab_size=16),
                                         "decoder": dict(n_init=8, n_hid=8, n_blk_per_group=1, output_channels=3,
                                                         vocab_size=16)})
    for p in vae.parameters():
        p.requires_grad_(True)
    out = vae.decode(torch.zeros(1, 4, dtype=torch.long))
    assert not out.requires_grad and out.grad_fn is None


def test_bad_configs_are_refused():
    good = {"encoder": dict(n_hid=8, n_blk_per_group=1, input_channels=3, vocab_size=16),
            "decoder": dict(n_init=8, n_hid=8, n_blk_per_group=1, output_channels=3, vocab_size=16)}
    with pytest.raises(ValueError, match="n_hid must be an integer in"):
        OpenAIDiscreteVAE.from_config({**good, "encoder": {**good["encoder"], "n_hid": 10**6}})
    with pytest.raises(ValueError, match="multiple of 4"):
        OpenAIDiscreteVAE.from_config({**good, "encoder": {**good["encoder"], "n_hid": 6}})
    with pytest.raises(ValueError, match="16 codes, the decoder 32"):
        OpenAIDiscreteVAE.from_config({**good, "decoder": {**good["decoder"], "vocab_size": 32}})
    with pytest.raises(ValueError, match="unknown"):
        OpenAIDiscreteVAE.from_config({**good, "decoder": {**good["decoder"], "extra": 1}})


# -- files that are not OpenAI's dVAE ------------------------------------------------------------------------


def test_swapped_files_are_refused(pair):
    *_, folder = pair
    with pytest.raises(UnsafePickleError, match="dall_e.decoder.Decoder"):
        OpenAIDiscreteVAE(folder / "decoder.pkl", folder / "encoder.pkl")


def test_changed_module_trees_are_refused(tmp_path):
    enc, dec = build_dall_e()
    torch.save(dec, tmp_path / "decoder.pkl")
    enc.blocks.group_1.pool = torch.nn.AvgPool2d(2)  # not a class OpenAI's encoder has
    torch.save(enc, tmp_path / "avg.pkl")
    with pytest.raises(UnsafePickleError, match="torch.nn.modules.pooling.AvgPool2d"):
        OpenAIDiscreteVAE(tmp_path / "avg.pkl", tmp_path / "decoder.pkl")
    enc, _ = build_dall_e()
    enc.blocks.group_2.block_1.res_path.conv_2.use_float16 = False
    torch.save(enc, tmp_path / "flag.pkl")
    with pytest.raises(ValueError, match="group_2.block_1.res_path.conv_2.use_float16 is False"):
        OpenAIDiscreteVAE(tmp_path / "flag.pkl", tmp_path / "decoder.pkl")
    enc, _ = build_dall_e()
    enc.blocks.group_1.pool.kernel_size = 4
    torch.save(enc, tmp_path / "pool.pkl")
    with pytest.raises(ValueError, match="kernel_size"):
        OpenAIDiscreteVAE(tmp_path / "pool.pkl", tmp_path / "decoder.pkl")
    enc, _ = build_dall_e()
    del enc.blocks.group_4.block_1
    torch.save(enc, tmp_path / "fewer.pkl")
    with pytest.raises(ValueError, match="group_4 has submodules"):
        OpenAIDiscreteVAE(tmp_path / "fewer.pkl", tmp_path / "decoder.pkl")
    torch.save(enc.state_dict(), tmp_path / "state.pkl")
    with pytest.raises(ValueError, match="expected a pickled dall_e.encoder.Encoder"):
        OpenAIDiscreteVAE(tmp_path / "state.pkl", tmp_path / "decoder.pkl")


def test_malicious_pickle_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    torch.save(Payload(), tmp_path / "encoder.pkl")
    torch.save(Payload(), tmp_path / "decoder.pkl", _use_new_zipfile_serialization=False)
    with pytest.raises(UnsafePickleError, match=r"(posix|os)\.system"):
        OpenAIDiscreteVAE(tmp_path / "encoder.pkl", tmp_path / "decoder.pkl")
    enc, _ = build_dall_e()
    torch.save(enc, tmp_path / "good_encoder.pkl")
    with pytest.raises(UnsafePickleError, match=r"(posix|os)\.system"):
        OpenAIDiscreteVAE(tmp_path / "good_encoder.pkl", tmp_path / "decoder.pkl")
    assert not marker.exists()


def test_default_files_in_home_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(FileNotFoundError) as info:
        OpenAIDiscreteVAE()
    message = str(info.value)
    cache = tmp_path / ".cache" / "dalle"
    for name in ("encoder.pkl", "decoder.pkl"):
        assert str(cache / name) in message and f"https://cdn.openai.com/dall-e/{name}" in message
    with pytest.raises(ValueError, match="both"):
        OpenAIDiscreteVAE(tmp_path / "encoder.pkl")
    enc, dec = build_dall_e()
    cache.mkdir(parents=True)
    torch.save(enc, cache / "encoder.pkl")
    torch.save(dec, cache / "decoder.pkl")
    vae = OpenAIDiscreteVAE()
    assert torch.equal(vae.enc.blocks.input.w, enc.blocks.input.w)


def test_dalle_pytorch_dvae_fixture():
    expected = torch.load(FIXTURES / "dalle_dvae-v1.6.6.expected.pt", weights_only=True)
    vae = OpenAIDiscreteVAE(FIXTURES / "encoder.pkl", FIXTURES / "decoder.pkl")
    assert vae.num_tokens == 8192
    assert torch.equal(vae.get_codebook_indices(expected["pixels"]), expected["codes_of_pixels"])
    torch.testing.assert_close(vae.decode(expected["codes_of_pixels"]), expected["recons"], atol=1e-5, rtol=0)


def test_dalle_pytorch_dvae_checkpoint_holds_our_vae_weights():
    vae = OpenAIDiscreteVAE(FIXTURES / "encoder.pkl", FIXTURES / "decoder.pkl")
    weights = torch.load(FIXTURES / "dalle_dvae-v1.6.6.pt", weights_only=True)["weights"]
    stored = {k[len("vae."):]: v for k, v in weights.items() if k.startswith("vae.")}
    assert list(stored) == list(vae.state_dict())
    assert all(torch.equal(stored[k], v) for k, v in vae.state_dict().items())
