"""Reranking (dalle_pytorch.models.rerank): a pretrained open_clip model against the real open_clip (its
preprocessing, its cosine similarities, the ranking they give, generate.py end to end), our own CLIP
behind the same interface, and the errors (missing file, wrong architecture, missing open_clip, hub
tokenizers, unsafe files)."""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from dalle_pytorch import CLIP, Pipeline
from dalle_pytorch.checkpoint.clip_weights import load_open_clip, open_clip_config
from dalle_pytorch.cli.flags import flag_names
from dalle_pytorch.errors import CheckpointError, GenerationError
from dalle_pytorch.formats.images import tensor_to_pil
from dalle_pytorch.models.rerank import CLIPReranker, ImagePreprocess, as_reranker, import_open_clip, open_clip_model
from tests.oracles.clip_oracles import TINY, TINY_CUSTOM_TEXT, oracle_model
from tests.oracles.clip_oracles import import_open_clip as import_oracle
from tests.helpers import demo_tokenizer, tiny_dalle

ROOT = Path(__file__).resolve().parents[2]
CAPTIONS = ["a red circle on a blue background", "a green square", "a yellow triangle on a black background",
            "white", "a blue circle on a red background", "something else entirely"]


def _load_generate():
    import dalle_pytorch.cli.generate as module

    return module


generate = _load_generate()


def run(*argv) -> list:
    return generate.main(generate.parse_args([str(a) for a in argv] + ["--no_progress"]))


@pytest.fixture(scope="module")
def oc():
    return import_oracle()


@pytest.fixture(scope="module")
def tiny_files(oc, tmp_path_factory):
    """{'json', 'bin', 'safetensors', 'model'}: the tiny random open_clip model's config and weights."""
    folder = tmp_path_factory.mktemp("open_clip")
    config, model = oracle_model(oc, TINY, folder, "tiny_rerank")
    state = model.state_dict()
    torch.save(state, folder / "tiny.bin")
    save_file({k: v.contiguous() for k, v in state.items()}, folder / "tiny.safetensors")
    return {"json": config, "bin": folder / "tiny.bin", "safetensors": folder / "tiny.safetensors", "model": model}


def oracle_scores(oc, model, preprocess, tokenizer, captions, pil_images) -> torch.Tensor:
    """open_clip's own cosine similarity of each image with its caption."""
    with torch.no_grad():
        image = model.encode_image(torch.stack([preprocess(im) for im in pil_images]), normalize=True)
        text = model.encode_text(tokenizer(captions), normalize=True)
        return (image @ text.T).diagonal()


# ------------------------------------------------------------------------------------------------
# preprocessing
# ------------------------------------------------------------------------------------------------


SQUARE = [(3, 32, 32), (3, 64, 64), (3, 40, 40), (3, 17, 17), (1, 32, 32), (4, 32, 32)]
CONFIGS = [{}, {"interpolation": "bilinear", "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]},
           {"interpolation": "random", "mean": 0.4, "std": 0.3}]


@pytest.mark.parametrize("shape, cfg", [(shape, cfg) for shape in SQUARE for cfg in CONFIGS]
                         + [(shape, cfg) for shape in [(3, 20, 36), (3, 45, 28)] for cfg in CONFIGS]  # shortest side
                         + [(shape, {"resize_mode": mode}) for shape in SQUARE for mode in ("squash", "longest")])
def test_preprocess_equals_open_clip(oc, shape, cfg):
    """Our PIL/torch preprocessing gives exactly open_clip's (torchvision's) tensors for the same 8-bit image:
    down, up or no resizing, odd sizes, grey and RGBA images, other interpolations and normalisations; the
    'shortest' mode (open_clip's default) on any shape, 'squash' and 'longest' on square images."""
    ours = ImagePreprocess.from_config(40, cfg)
    theirs = oc.image_transform(40, is_train=False, **cfg)
    images = torch.rand(3, *shape, generator=torch.Generator().manual_seed(sum(shape)))
    expected = torch.stack([theirs(tensor_to_pil(im)) for im in images])
    assert torch.equal(ours(images), expected)


def test_preprocess_validation():
    with pytest.raises(ValueError, match="non-square"):
        ImagePreprocess.from_config((32, 48))
    with pytest.raises(ValueError, match="std > 0"):
        ImagePreprocess.from_config(32, {"std": [0.5, 0.0, 0.5]})
    with pytest.raises(ValueError, match="interpolation"):
        ImagePreprocess.from_config(32, {"interpolation": "lanczos"})
    with pytest.raises(ValueError, match="RGB"):
        ImagePreprocess.from_config(32, {"mode": "L"})
    assert ImagePreprocess(8)(torch.zeros(0, 3, 8, 8)).shape == (0, 3, 8, 8)


# ------------------------------------------------------------------------------------------------
# scores and ranking
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["bin", "safetensors"])
def test_scores_equal_open_clip(oc, tiny_files, fmt):
    """Our scores are open_clip's cosine similarities (its model, its preprocess, its tokenizer, loading
    the same file), so the ranking is the order of open_clip's similarities."""
    reranker = load_open_clip(str(tiny_files["json"]), tiny_files[fmt])
    model, _, preprocess = oc.create_model_and_transforms("tiny_rerank", pretrained=str(tiny_files[fmt]))
    images = torch.rand(len(CAPTIONS), 3, 32, 32, generator=torch.Generator().manual_seed(1))
    ours = reranker.score(CAPTIONS, images)
    expected = oracle_scores(oc, model.eval(), preprocess, oc.get_tokenizer("tiny_rerank"), CAPTIONS,
                             [tensor_to_pil(im) for im in images])
    assert ours.dtype == torch.float32 and ours.shape == (len(CAPTIONS),)
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=0)
    assert ours.argsort(descending=True).tolist() == expected.argsort(descending=True).tolist()
    assert expected.max() - expected.min() > 1e-3  # the images are told apart, so the order means something
    # the logit scale is not part of the score (the model's is exp(log(1/0.07)) here, not 1)
    assert ours.abs().max() <= 1.0 + 1e-6 and model.logit_scale.exp() > 10


@pytest.mark.parametrize("name", ["ViT-B-32", "ViT-B-32-quickgelu", "RN50", "coca_ViT-B-32", "ViT-L-14-336"])
def test_builtin_models_build_as_open_clip_does(oc, name):
    """For open_clip's own model names: the class, every module (QuickGELU included), every parameter's name
    and shape, and the preprocessing are those of open_clip.create_model / its preprocess config (built on
    the meta device: no memory, no time)."""
    with torch.device("meta"):
        ours = open_clip_model(oc, open_clip_config(name)[1])
        theirs = oc.create_model(name, device="meta")
    assert repr(ours) == repr(theirs)
    assert [(k, v.shape) for k, v in ours.state_dict().items()] == [(k, v.shape) for k, v in theirs.state_dict().items()]
    expected = oc.get_model_preprocess_cfg(theirs)
    ours_pre = ImagePreprocess.from_config(ours.visual.image_size)
    assert (ours_pre.size,) * 2 == tuple(oc.image_transform(expected["size"], is_train=False).transforms[1].size)
    assert (ours_pre.mean, ours_pre.std, ours_pre.interpolation, ours_pre.resize_mode) == (
        tuple(expected["mean"]), tuple(expected["std"]), expected["interpolation"], expected["resize_mode"])


def test_custom_text_model_and_training_checkpoint(oc, tiny_files, tmp_path):
    """A custom-text-tower config reads old-format weights (open_clip renames them), and an open_clip
    training checkpoint ({'state_dict': {'module.' + name: ...}}) reads as its weights."""
    config, _ = oracle_model(oc, TINY_CUSTOM_TEXT, tmp_path, "tiny_rerank_custom")
    state = tiny_files["model"].state_dict()
    checkpoint = tmp_path / "epoch_3.pt"
    torch.save({"epoch": 3, "name": "run", "state_dict": {f"module.{k}": v for k, v in state.items()}}, checkpoint)
    reranker = load_open_clip(str(config), checkpoint)
    model = oc.create_model("tiny_rerank_custom", pretrained=str(checkpoint)).eval()
    assert type(reranker.model).__name__ == type(model).__name__ == "CustomTextCLIP"
    _, _, preprocess = oc.create_model_and_transforms("tiny_rerank_custom", pretrained=None)
    images = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    expected = oracle_scores(oc, model, preprocess, oc.get_tokenizer("tiny_rerank_custom"), CAPTIONS[:4],
                             [tensor_to_pil(im) for im in images])
    torch.testing.assert_close(reranker.score(CAPTIONS[:4], images), expected, atol=1e-5, rtol=0)


def test_hub_style_config_with_its_preprocessing(oc, tiny_files, tmp_path):
    """A hub-style open_clip_config.json ({'model_cfg', 'preprocess_cfg'}) sets the normalisation and
    interpolation, as open_clip's own loading of such a folder does."""
    folder = tmp_path / "hub"
    folder.mkdir()
    pre = {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "interpolation": "bilinear", "resize_mode": "squash"}
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY, "preprocess_cfg": pre}))
    torch.save(tiny_files["model"].state_dict(), folder / "open_clip_pytorch_model.bin")
    reranker = load_open_clip(str(folder / "open_clip_config.json"), folder / "open_clip_pytorch_model.bin")
    assert reranker.describe()["preprocess"] == {"size": 40, "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5),
                                                 "interpolation": "bilinear", "resize_mode": "squash"}
    model, _, preprocess = oc.create_model_and_transforms(f"local-dir:{folder}")
    images = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    pil = [tensor_to_pil(im) for im in images]
    assert torch.equal(reranker.preprocess(images), torch.stack([preprocess(im) for im in pil]))
    expected = oracle_scores(oc, model.eval(), preprocess, oc.get_tokenizer(f"local-dir:{folder}"), CAPTIONS[:4], pil)
    torch.testing.assert_close(reranker.score(CAPTIONS[:4], images), expected, atol=1e-5, rtol=0)


def test_generate_reranks_with_open_clip(oc, tiny_files, tmp_path):
    """generate.py --clip_model tiny.json --clip_path tiny.bin with the demo model: the files are ordered by
    open_clip's own similarity of each written PNG with the caption, best first, and generation.json
    records those scores, the original positions and the reranker."""
    caption, argv = CAPTIONS[0], ["--dalle_path", "demo", "--seed", "3", "--num_images", "4", "--batch_size", "2"]
    [plain] = run(*argv, "--text", caption, "--outputs_dir", tmp_path / "plain")
    [ranked] = run(*argv, "--text", caption, "--outputs_dir", tmp_path / "ranked",
                   "--clip_model", tiny_files["json"], "--clip_path", tiny_files["bin"])
    model, _, preprocess = oc.create_model_and_transforms("tiny_rerank", pretrained=str(tiny_files["bin"]))
    tokenizer = oc.get_tokenizer("tiny_rerank")

    def scores_of(result):
        return oracle_scores(oc, model.eval(), preprocess, tokenizer, [caption] * len(result.files),
                             [Image.open(p) for p in result.files])

    unranked = scores_of(plain)  # open_clip's similarities in sampling order
    order = unranked.argsort(descending=True).tolist()
    record = json.loads((ranked.folder / "generation.json").read_text())
    assert record["clip_original_index"] == order
    torch.testing.assert_close(torch.tensor(record["clip_scores"]), unranked[order], atol=1e-5, rtol=0)
    torch.testing.assert_close(scores_of(ranked), unranked[order], atol=1e-5, rtol=0)  # the files, best first
    assert record["seeds"] == [plain.seeds[i] for i in order]
    assert record["clip_model"] == str(tiny_files["json"]) and record["clip_path"] == str(tiny_files["bin"])
    assert record["reranker"]["kind"] == "open_clip" and record["reranker"]["model"] == "tiny_rerank"


# ------------------------------------------------------------------------------------------------
# our own CLIP behind the same interface
# ------------------------------------------------------------------------------------------------


def tiny_clip(seed: int = 0) -> CLIP:
    torch.manual_seed(seed)
    return CLIP(dim_text=32, dim_image=32, dim_latent=16, num_text_tokens=64, text_enc_depth=1, text_seq_len=8,
                text_heads=2, visual_enc_depth=1, visual_heads=2, visual_image_size=32, visual_patch_size=8)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_our_clip_reranks_in_the_pipeline(dtype):
    """Pipeline(clip=CLIP) scores each image with our CLIP on the DALLE's caption tokens (in the model's
    dtype: float32 pixels go into a bf16 CLIP) and orders the images best first."""
    model, clip = tiny_dalle(num_text_tokens=64, text_seq_len=8).to(dtype), tiny_clip().to(dtype)
    pipe = Pipeline(model, demo_tokenizer(), clip=clip)
    assert isinstance(pipe.clip, CLIPReranker) and as_reranker(pipe.clip) is pipe.clip
    caption = "a red circle on a blue background"
    plain = Pipeline(model, demo_tokenizer()).generate(caption, num_images=3, seed=0, batch_size=2)
    ranked = pipe.generate(caption, num_images=3, seed=0, batch_size=2)
    tokens = pipe.tokenize([caption]).repeat(3, 1)
    with torch.inference_mode():
        expected = clip(tokens, plain.images.to(dtype)).float()
    order = expected.argsort(descending=True).tolist()
    assert ranked.order == order and torch.equal(ranked.images, plain.images[order])
    torch.testing.assert_close(torch.tensor(ranked.scores), expected[order])
    assert pipe.clip.describe()["kind"] == "dalle_pytorch"
    with pytest.raises(TypeError, match="score"):
        Pipeline(model, demo_tokenizer(), clip=torch.nn.Linear(2, 2))


# ------------------------------------------------------------------------------------------------
# errors
# ------------------------------------------------------------------------------------------------


def test_missing_weights_file_is_named(tmp_path):
    """No file: one line naming it and where such weights come from (open_clip installed or not)."""
    missing = tmp_path / "open_clip_pytorch_model.bin"
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing)) + ".*does not exist.*Hugging Face hub"):
        load_open_clip("ViT-B-32", missing)
    with pytest.raises(GenerationError, match="open_clip_pytorch_model.bin' does not exist. OpenCLIP weights are"):
        run("--dalle_path", "demo", "--text", CAPTIONS[0], "--outputs_dir", tmp_path, "--clip_model", "ViT-B-32",
            "--clip_path", missing)
    with pytest.raises(GenerationError, match="--clip_model needs --clip_path"):
        run("--dalle_path", "demo", "--text", CAPTIONS[0], "--outputs_dir", tmp_path, "--clip_model", "ViT-B-32")


def test_missing_open_clip_names_the_extra(tmp_path, monkeypatch):
    weights = tmp_path / "w.bin"
    torch.save({"x": torch.zeros(1)}, weights)
    monkeypatch.setitem(sys.modules, "open_clip", None)  # `import open_clip` raises ImportError
    with pytest.raises(ImportError, match=re.escape("it is not installed: pip install open_clip_torch (this package's "
                                                    "clip extra)")):
        import_open_clip()
    with pytest.raises(GenerationError, match=re.escape("pip install open_clip_torch")):
        run("--dalle_path", "demo", "--text", CAPTIONS[0], "--outputs_dir", tmp_path, "--clip_model", "ViT-B-32",
            "--clip_path", weights)
    # an open_clip whose import fails (a torchvision built for another torch) is one line too
    fake = tmp_path / "fake" / "open_clip"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise RuntimeError('operator torchvision::nms does not exist\\nmore')\n")
    monkeypatch.delitem(sys.modules, "open_clip")
    monkeypatch.syspath_prepend(str(fake.parent))
    with pytest.raises(ImportError, match=r"importing it failed \(operator torchvision::nms does not exist\): pip"):
        import_open_clip()


@pytest.mark.parametrize("content, message", [
    ("{not json", "is not a JSON model config"),
    (json.dumps({"embed_dim": 8}), "needs 'embed_dim', 'vision_cfg' and 'text_cfg'"),
    (json.dumps({**TINY, "text_cfg": {**TINY["text_cfg"], "hf_tokenizer_name": "org/tok"}}),
     "would download its tokenizer ('org/tok')"),
    (json.dumps({"model_cfg": {**TINY, "text_cfg": {"hf_model_name": "roberta-base"}}}),
     "would download its text tower"),
])
def test_bad_config_files(tmp_path, content, message):
    path = tmp_path / "model.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=re.escape(message)):
        open_clip_config(str(path))


def test_hub_and_unknown_model_names_are_refused(oc, tiny_files):
    with pytest.raises(ValueError, match="would download its tokenizer"):
        open_clip_config("ViT-B-16-SigLIP")
    with pytest.raises(ValueError, match="hub and folder schemas are not used"):
        open_clip_config("hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K")
    with pytest.raises(ValueError, match="not an open_clip model name.*ViT-B-32"):
        open_clip_config("ViT-B-99")
    assert open_clip_config("ViT-B-32")[1] == oc.get_model_config("ViT-B-32")


@pytest.mark.parametrize("change, message", [
    ({"vision_cfg": {**TINY["vision_cfg"], "width": 48}}, "of another shape (e.g. visual.class_embedding: file (32,)"),
    ({"text_cfg": {**TINY["text_cfg"], "layers": 2}}, "missing (e.g. transformer.resblocks.1."),
    ({"vision_cfg": {**TINY["vision_cfg"], "image_size": 48}}, "visual.positional_embedding: file (26, 32) vs model (37, 32)"),
])
def test_weights_of_another_architecture(oc, tiny_files, tmp_path, change, message):
    """Weights that do not fit --clip_model are refused with what differs (no interpolation, no partial load)."""
    config = tmp_path / "other.json"
    config.write_text(json.dumps({**TINY, **change}))
    with pytest.raises(CheckpointError, match="does not fit this --clip_model: .*" + re.escape(message)), flag_names():
        load_open_clip(str(config), tiny_files["safetensors"])


def test_unsafe_and_foreign_files(oc, tiny_files, tmp_path):
    scripted = tmp_path / "ViT-B-32.pt"
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), scripted)
    with pytest.raises(CheckpointError, match="TorchScript archive"):
        load_open_clip(str(tiny_files["json"]), scripted)
    pickled = tmp_path / "code.bin"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "opt": Path("x")}, pickled)
    with pytest.raises(CheckpointError, match="refusing to unpickle arbitrary code"):
        load_open_clip(str(tiny_files["json"]), pickled)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{" + b"x" * 20)
    with pytest.raises(CheckpointError, match="cannot read this safetensors file"):
        load_open_clip(str(tiny_files["json"]), junk)
    not_weights = tmp_path / "list.bin"
    torch.save([torch.zeros(1)], not_weights)
    with pytest.raises(CheckpointError, match="holds no state dict"):
        load_open_clip(str(tiny_files["json"]), not_weights)
