"""DALLE-pytorch 1.6.6's module paths and names run here (dalle_pytorch.compat; docs/migrating.md): its imports,
its README's Python examples at small sizes, its module-level tokenizer, TextImageDataset and the
distributed_utils calls its scripts make, in their order."""
import argparse
import importlib

import pytest
import torch
from PIL import Image


def test_dalle_pytorchs_imports_work():
    from dalle_pytorch import CLIP, DALLE, DiscreteVAE, OpenAIDiscreteVAE, VQGanVAE, distributed_utils  # noqa: F401
    from dalle_pytorch.dalle_pytorch import CLIP as CLIP2, DALLE as DALLE2, DiscreteVAE as VAE2
    from dalle_pytorch.loader import TextImageDataset  # noqa: F401
    from dalle_pytorch.tokenizer import ChineseTokenizer, HugTokenizer, SimpleTokenizer, YttmTokenizer, tokenizer  # noqa: F401
    from dalle_pytorch.vae import OpenAIDiscreteVAE as O2, VQGanVAE as V2

    assert (DALLE2, CLIP2, VAE2, O2, V2) == (DALLE, CLIP, DiscreteVAE, OpenAIDiscreteVAE, VQGanVAE)
    assert isinstance(tokenizer, SimpleTokenizer)
    assert distributed_utils is importlib.import_module("dalle_pytorch.compat.distributed_utils")


def test_readme_discrete_vae_dalle_and_clip_examples():
    """DALLE-pytorch's README examples, sizes shrunk: train a DiscreteVAE, a DALLE over it, sample, a CLIP.
    (Its README's placeholder images are torch.randn; a DALLE here takes pixels in [0, 1] only and says so in
    one line, so these are torch.rand: docs/migrating.md lists the difference.)"""
    from dalle_pytorch import CLIP, DALLE, DiscreteVAE

    torch.manual_seed(0)
    vae = DiscreteVAE(image_size=32, num_layers=2, num_tokens=64, codebook_dim=32, hidden_dim=16, num_resnet_blocks=1,
                      temperature=0.9, straight_through=False)
    images = torch.rand(2, 3, 32, 32)
    loss = vae(images, return_loss=True)
    loss.backward()
    dalle = DALLE(dim=32, vae=vae, num_text_tokens=100, text_seq_len=8, depth=2, heads=2, dim_head=16,
                  attn_dropout=0.1, ff_dropout=0.1)
    text = torch.randint(0, 100, (2, 8))
    loss = dalle(text, images, return_loss=True)
    loss.backward()
    out = dalle.generate_images(text)
    assert out.shape == (2, 3, 32, 32)
    primed = dalle.generate_images(text, img=images[:1], num_init_img_tokens=4 * 8)
    assert primed.shape == (2, 3, 32, 32)
    clip = CLIP(dim_text=32, dim_image=32, dim_latent=32, num_text_tokens=100, text_enc_depth=1, text_seq_len=8,
                text_heads=2, num_visual_tokens=64, visual_enc_depth=1, visual_image_size=32, visual_patch_size=8,
                visual_heads=2)
    mask = torch.ones_like(text).bool()
    loss = clip(text, images, text_mask=mask, return_loss=True)
    loss.backward()
    with pytest.raises(ValueError, match=r"pixels must be in \[0, 1\]"):  # the README's randn placeholder
        dalle(text, torch.randn(2, 3, 32, 32), return_loss=True)
    images, scores = dalle.generate_images(text, clip=clip)  # 1.6.6: with a clip, (images, scores)
    assert images.shape == (2, 3, 32, 32) and scores.shape == (2,)


@pytest.mark.parametrize("make,files", [("OpenAIDiscreteVAE()", ("encoder.pkl", "decoder.pkl")),
                                        ("VQGanVAE()", ("vqgan.1024.model.ckpt", "vqgan.1024.config.yml"))])
def test_readme_pretrained_vaes_without_their_files_name_them(make, files, tmp_path, monkeypatch):
    """Nothing is downloaded: the README's `OpenAIDiscreteVAE()` / `VQGanVAE()` without the files in
    ~/.cache/dalle stop with an error naming each file, where it goes and where DALLE-pytorch fetched it."""
    from dalle_pytorch.vae import OpenAIDiscreteVAE, VQGanVAE  # noqa: F401

    monkeypatch.setenv("HOME", str(tmp_path))  # an empty ~/.cache/dalle
    with pytest.raises(FileNotFoundError) as e:
        eval(make)
    message = str(e.value)
    assert all(str(tmp_path / ".cache" / "dalle" / f) in message for f in files), message


def test_the_module_level_tokenizer():
    """DALLE-pytorch's `tokenizer`: the default CLIP BPE, its encode / decode / tokenize (0 is padding)."""
    import dalle_pytorch.tokenizer as tk

    ids = tk.tokenizer.encode("a red circle")
    assert tk.tokenizer.decode(ids) == "a red circle"
    batch = tk.tokenizer.tokenize(["a red circle", "a blue square on a green background"], 5, truncate_text=True)
    assert batch.shape == (2, 5) and batch.dtype == torch.long
    assert (batch[0, len(ids):] == 0).all() and (batch[0, : len(ids)] == torch.tensor(ids)).all()
    assert tk.tokenizer is tk.tokenizer  # one shared instance
    assert tk.default_bpe().endswith("bpe_simple_vocab_16e6.txt.gz") and tk.SimpleTokenizer(tk.default_bpe()).encode("a") == tk.tokenizer.encode("a")
    with pytest.raises(AttributeError):
        tk.no_such_name  # noqa: B018


def test_text_image_dataset_from_the_loader_path(tmp_path):
    """`dalle_pytorch.loader.TextImageDataset` with DALLE-pytorch's arguments: (caption ids, image), a bad
    image skipped with a warning."""
    from dalle_pytorch.loader import TextImageDataset
    from dalle_pytorch.tokenizer import tokenizer

    for i, colour in enumerate(("red", "blue")):
        Image.new("RGB", (40, 40), colour).save(tmp_path / f"{i}.png")
        (tmp_path / f"{i}.txt").write_text(f"a {colour} picture\n")
    (tmp_path / "bad.png").write_bytes(b"not an image")
    (tmp_path / "bad.txt").write_text("a broken picture\n")
    ds = TextImageDataset(str(tmp_path), text_len=8, image_size=32, truncate_captions=True, resize_ratio=0.75,
                          tokenizer=tokenizer, shuffle=False)
    assert len(ds) == 3
    with pytest.warns(UserWarning, match="bad.png"):
        samples = [ds[i] for i in range(len(ds))]
    for text, image in samples:
        assert text.shape == (8,) and image.shape == (3, 32, 32) and 0 <= image.min() and image.max() <= 1


def _script_args(*argv):
    from dalle_pytorch import distributed_utils

    parser = argparse.ArgumentParser()
    parser.add_argument("--batch_size", type=int, default=4)
    parser = distributed_utils.wrap_arg_parser(parser)
    return parser.parse_args(list(argv))


def test_distributed_utils_as_dalle_pytorchs_scripts_call_it(monkeypatch, capsys):
    """wrap_arg_parser -> set_backend_from_args -> initialize -> the backend's methods, as train_dalle.py calls them."""
    from dalle_pytorch import distributed_utils

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    args = _script_args()
    backend = distributed_utils.set_backend_from_args(args)
    assert distributed_utils.backend is backend and distributed_utils.is_distributed is False
    assert distributed_utils.using_backend(distributed_utils.DummyBackend)
    assert not distributed_utils.using_backend(distributed_utils.DeepSpeedBackend)
    assert not distributed_utils.using_backend(distributed_utils.HorovodBackend)
    with pytest.raises(RuntimeError, match="initialize"):
        backend.get_rank()
    backend.initialize()
    assert backend.is_root_worker() and backend.is_local_root_worker()
    assert (backend.get_world_size(), backend.get_rank(), backend.get_local_rank()) == (1, 0, 0)
    backend.check_batch_size(args.batch_size)
    model, opt = torch.nn.Linear(2, 2), object()
    assert backend.distribute(args=args, model=model, optimizer=opt, model_parameters=model.parameters(),
                              training_data=[1], lr_scheduler=None) == (model, opt, [1], None)
    t = torch.tensor([3.0])
    assert torch.equal(backend.average_all(t), t)
    backend.local_barrier()
    torch_backend = distributed_utils.set_backend_from_args(_script_args("--distributed_backend", "torchrun"))
    assert "Using torchrun for distributed execution" in capsys.readouterr().out
    torch_backend.initialize()  # no torchrun here: one process
    assert distributed_utils.is_distributed and torch_backend.get_world_size() == 1
    assert torch.equal(torch_backend.average_all(t), t)


@pytest.mark.parametrize("argv", [["--deepspeed"], ["--distributed_backend", "deepspeed"], ["--distr_backend", "horovod"]])
def test_deepspeed_and_horovod_are_refused_in_one_line(argv):
    from dalle_pytorch import distributed_utils

    with pytest.raises(ValueError, match="torchrun") as e:
        distributed_utils.set_backend_from_args(_script_args(*argv))
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="unknown distributed backend"):
        distributed_utils.set_backend_from_args(_script_args("--distributed_backend", "mpi"))


def test_helpers_of_the_model_module():
    from dalle_pytorch.dalle_pytorch import default, eval_decorator, exists, gumbel_sample, masked_mean, top_k

    logits = torch.tensor([[0.0, 3.0, 1.0, 2.0]])
    assert torch.equal(top_k(logits, thres=0.5).isfinite(), torch.tensor([[False, True, False, True]]))
    assert gumbel_sample(torch.tensor([[0.0, 50.0, 0.0]])).item() == 1
    assert exists(0) and not exists(None) and default(None, 3) == 3
    t, mask = torch.ones(1, 3, 2), torch.tensor([[True, False, True]])
    assert torch.equal(masked_mean(t * torch.tensor([1.0, 5.0, 3.0])[None, :, None], mask), torch.full((1, 2), 2.0))

    class M(torch.nn.Module):
        @eval_decorator
        def mode(self):
            return self.training

    m = M().train()
    assert m.mode() is False and m.training
