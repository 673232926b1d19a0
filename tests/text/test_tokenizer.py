import json
import random
import shutil
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dalle_pytorch.text.factory import (HugTokenizer, SimpleTokenizer, YttmTokenizer, get_default_tokenizer,
                                        is_yttm_model, tokenizer_from_description)

CAPTION = "a red circle on a blue background"
ROOT = Path(__file__).resolve().parents[2]
YTTM_DIR = Path(__file__).resolve().parents[1] / "fixtures" / "yttm"
YTTM_MODELS = ("en.bpe", "mixed.bpe", "custom_ids.bpe")


@pytest.fixture(scope="module")
def simple():
    return get_default_tokenizer()


@pytest.fixture
def hug_path(tmp_path):
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace

    words = ["[PAD]", "[UNK]", "a", "red", "circle", "on", "blue", "background", "green", "square"]
    vocab = {w: i for i, w in enumerate(words)}
    tok = Tokenizer(WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = Whitespace()
    path = tmp_path / "tok.json"
    tok.save(str(path))
    return path


def test_default_tokenizer_is_cached(simple):
    assert get_default_tokenizer() is simple
    assert isinstance(simple, SimpleTokenizer)
    assert simple.vocab_size == 49408


def test_simple_round_trip(simple):
    ids = simple.encode(CAPTION)
    assert ids == [320, 736, 7117, 525, 320, 1746, 5994]  # CLIP's ids
    assert simple.decode(ids) == CAPTION
    assert simple.decode(torch.tensor(ids)) == CAPTION
    # CLIP lowercases and cleans whitespace / html entities
    assert simple.decode(simple.encode("A  Red &amp; Blue\n Circle")) == "a red & blue circle"


def test_simple_decode_drops_padding_and_specials(simple):
    ids = simple.encode(CAPTION)
    seq = [simple.start_token, *ids, simple.end_token, 0, 0, 123]
    assert simple.decode(seq, pad_tokens={123}) == CAPTION


def test_tokenize_shape_and_padding(simple):
    out = simple.tokenize([CAPTION, "a"], context_length=16)
    assert out.shape == (2, 16) and out.dtype == torch.long
    n = len(simple.encode(CAPTION))
    assert out[0, :n].tolist() == simple.encode(CAPTION)
    assert (out[0, n:] == 0).all() and (out[1, 1:] == 0).all()
    assert simple.tokenize(CAPTION, context_length=8).shape == (1, 8)


def test_tokenize_truncation(simple):
    out = simple.tokenize(CAPTION, context_length=3, truncate_text=True)
    assert out[0].tolist() == simple.encode(CAPTION)[:3]
    with pytest.raises(ValueError, match=r"a red circle.*7 tokens.*context length 3"):
        simple.tokenize(CAPTION, context_length=3)


def test_simple_describe_round_trip(simple):
    d = simple.describe()
    assert d == {"type": "simple"}
    rebuilt = tokenizer_from_description(json.loads(json.dumps(d)))
    assert rebuilt.encode(CAPTION) == simple.encode(CAPTION)


def test_hug_round_trip(hug_path):
    tok = HugTokenizer(hug_path)
    assert tok.vocab_size == 10
    ids = tok.encode("a green square on a red circle")
    assert ids == [2, 8, 9, 5, 2, 3, 4]
    assert tok.decode(ids) == "a green square on a red circle"
    assert tok.decode(torch.tensor(ids + [0, 0]), pad_tokens={9}) == "a green on a red circle"
    out = tok.tokenize(["a red circle", "blue"], context_length=5)
    assert out.tolist() == [[2, 3, 4, 0, 0], [6, 0, 0, 0, 0]]
    with pytest.raises(ValueError, match="too long|context length"):
        tok.tokenize("a red circle", context_length=2)


def test_hug_describe_is_self_contained(hug_path):
    tok = HugTokenizer(hug_path)
    d = json.loads(json.dumps(tok.describe()))
    assert d["type"] == "hug" and isinstance(d["json"], str)
    hug_path.unlink()  # the description must not need the file
    rebuilt = tokenizer_from_description(d)
    assert rebuilt.encode(CAPTION) == tok.encode(CAPTION)
    assert rebuilt.vocab_size == tok.vocab_size


def test_hug_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        HugTokenizer(tmp_path / "nope.json")


# youtokentome (YTTM): reference outputs of youtokentome 1.0.6 in tests/fixtures/yttm (see its README)


@pytest.fixture(scope="module")
def yttm_reference():
    data = json.loads((YTTM_DIR / "reference.json").read_text(encoding="utf-8"))
    assert data["youtokentome_version"] == "1.0.6"
    return {m["model"]: m for m in data["models"]}


@pytest.mark.parametrize("name", YTTM_MODELS)
def test_yttm_matches_youtokentome_encode(name, yttm_reference):
    ref = yttm_reference[name]
    tok = YttmTokenizer(YTTM_DIR / name)
    assert tok.vocab_size == ref["vocab_size"]
    assert tok.vocab() == ref["vocab"]
    got = [tok.encode(c["text"]) for c in ref["encode"]]
    mismatches = [(c["text"], ids, c["ids"]) for c, ids in zip(ref["encode"], got) if ids != c["ids"]]
    assert not mismatches, mismatches[:3]


@pytest.mark.parametrize("name", YTTM_MODELS)
def test_yttm_matches_youtokentome_decode(name, yttm_reference):
    tok = YttmTokenizer(YTTM_DIR / name)
    for case in yttm_reference[name]["decode"]:
        ids, pad_tokens = case["ids"], set(case["pad_tokens"])
        # DALLE-pytorch's YttmTokenizer.decode: youtokentome's decode ignoring pad_tokens | {0}
        assert tok.decode(ids, pad_tokens=pad_tokens) == case["decoded"], case
        assert tok.decode(torch.tensor(ids), pad_tokens=pad_tokens) == case["decoded"], case
        # youtokentome's own decode, nothing ignored (<PAD>, <UNK>, ... for special ids)
        assert tok._decode_ids(ids) == case["decoded_raw"], case


@pytest.mark.parametrize("name", YTTM_MODELS)
def test_yttm_tokenize_matches_padded_reference_ids(name, yttm_reference):
    tok = YttmTokenizer(YTTM_DIR / name)
    cases = [c for c in yttm_reference[name]["encode"] if len(c["ids"]) <= 64]
    out = tok.tokenize([c["text"] for c in cases], context_length=64)
    assert out.shape == (len(cases), 64) and out.dtype == torch.long
    for row, case in zip(out.tolist(), cases):
        assert row == case["ids"] + [0] * (64 - len(case["ids"]))

    long_case = next(c for c in yttm_reference[name]["encode"] if len(c["ids"]) > 64)
    cut = tok.tokenize(long_case["text"], context_length=64, truncate_text=True)
    assert cut[0].tolist() == long_case["ids"][:64]
    with pytest.raises(ValueError, match="context length 64"):
        tok.tokenize(long_case["text"], context_length=64)


def test_yttm_word_splitting_and_unknown_characters():
    tok = YttmTokenizer(YTTM_DIR / "en.bpe")
    assert (tok.pad_id, tok.unk_id, tok.bos_id, tok.eos_id) == (0, 1, 2, 3)
    ids = tok.encode(CAPTION)
    # leading / trailing / repeated whitespace of any ASCII kind, and the "▁" marker, only separate words
    for variant in ["  " + CAPTION + " \n", CAPTION.replace(" ", "\t\n\r\v\f "), CAPTION.replace(" ", "\u2581")]:
        assert tok.encode(variant) == ids
    assert tok.decode(ids) == CAPTION
    assert tok.encode("") == tok.encode(" \t\n ") == tok.encode("\u2581") == []
    # other unicode spaces are ordinary (unknown) characters; a run of unknown characters is one unk
    space, unk = tok.space_id, tok.unk_id
    assert tok.encode("\u00a0") == tok.encode("\u3000\u00a0☃") == [space, unk]
    assert tok.encode("☃ ☃") == [space, unk, space, unk]
    assert tok.decode(tok.encode("☃ ☃")) == "<UNK> <UNK>"
    assert tok.decode(tok.encode("☃ ☃"), pad_tokens={unk}) == " "  # like youtokentome with ignore_ids
    with pytest.raises(UnicodeEncodeError):  # lone surrogates, as in youtokentome
        tok.encode("\ud800")
    with pytest.raises(ValueError, match="range"):
        tok.decode([tok.vocab_size])


def test_yttm_custom_special_ids():
    """pad_id=-1, unk_id=3: no pad / bos / eos tokens and "▁" gets id 0, which youtokentome leaves out
    at the start of every word (its merge list marks dead nodes with 0)."""
    tok = YttmTokenizer(YTTM_DIR / "custom_ids.bpe")
    assert (tok.pad_id, tok.unk_id, tok.bos_id, tok.eos_id) == (-1, 3, -1, -1)
    assert tok.space_id == 0 and tok.vocab()[0] == "\u2581" and tok.vocab()[3] == "<UNK>"
    ids = tok.encode("qqq ☃ red")
    assert 0 not in ids and ids[-1] == tok.encode("red")[0]


EN_ALPHABET = ",abcdefghiklnopqrstuwxy"  # the characters of tests/fixtures/yttm/captions_en.txt


@settings(max_examples=50, deadline=None)
@given(st.lists(st.text(alphabet=EN_ALPHABET, min_size=1, max_size=15), max_size=10),
       st.sampled_from([" ", "  ", "\t", "\n", " \u2581"]))
def test_yttm_round_trip_of_known_characters(words, sep):
    tok = _yttm_en()
    assert set(EN_ALPHABET) == set(tok.char2id) - {"\u2581"}
    text = sep.join(words)
    assert tok.decode(tok.encode(text)) == " ".join(text.replace("\u2581", " ").split())


def _yttm_en():
    return YttmTokenizer(YTTM_DIR / "en.bpe")


def test_yttm_describe_is_self_contained(tmp_path):
    path = tmp_path / "model.bpe"
    shutil.copy(YTTM_DIR / "mixed.bpe", path)
    tok = YttmTokenizer(path)
    d = json.loads(json.dumps(tok.describe()))
    assert d == {"type": "yttm", "path": str(path), "model": path.read_text()}
    path.unlink()  # the description must not need the file
    rebuilt = tokenizer_from_description(d)
    assert isinstance(rebuilt, YttmTokenizer) and rebuilt.vocab_size == tok.vocab_size
    text = "a red 東京 circle 😀 ☃"
    assert rebuilt.encode(text) == tok.encode(text)
    assert rebuilt.describe() == d

    from_str = YttmTokenizer.from_str(d["model"])
    assert from_str.encode(text) == tok.encode(text) and from_str.describe()["path"] is None


def test_descriptions_must_carry_content_not_paths():
    """A description stored in a checkpoint is untrusted: one that only names a file (which the loader
    would read: /etc/passwd, /dev/zero, ...) is refused for every tokenizer type, and nothing is opened."""
    for kind in ("simple", "hug", "yttm", "chinese"):
        for key in ("path", "bpe_path"):
            with pytest.raises(ValueError, match="never read"):
                tokenizer_from_description({"type": kind, key: "/dev/zero"})
    with pytest.raises(ValueError, match="never read"):
        tokenizer_from_description({"type": "simple", "bpe_path": "/etc/passwd"})
    with pytest.raises(ValueError, match="needs its 'model' text"):
        tokenizer_from_description({"type": "yttm"})
    with pytest.raises(ValueError, match="must be text"):
        tokenizer_from_description({"type": "hug", "json": 123})
    # the content is what counts: a stored path next to it is informative only
    en = (YTTM_DIR / "en.bpe").read_text()
    tok = tokenizer_from_description({"type": "yttm", "path": "/nonexistent/en.bpe", "model": en})
    assert isinstance(tok, YttmTokenizer) and tok.encode(CAPTION) == _yttm_en().encode(CAPTION)


def test_custom_clip_merges_are_stored_whole(tmp_path):
    """A SimpleTokenizer over non-default merges stores their text, so it rebuilds without the file."""
    merges = tmp_path / "merges.txt.gz"
    merges.write_bytes((ROOT / "dalle_pytorch" / "data" / "bpe_simple_vocab_16e6.txt.gz").read_bytes())
    tok = SimpleTokenizer(merges)
    d = tok.describe()
    assert d["type"] == "simple" and isinstance(d["merges"], str) and "bpe_path" not in d
    merges.unlink()
    rebuilt = tokenizer_from_description(d)
    assert rebuilt.encode(CAPTION) == get_default_tokenizer().encode(CAPTION)
    assert get_default_tokenizer().describe() == {"type": "simple"}


def test_yttm_tokenizer_survives_a_checkpoint(tmp_path):
    from dalle_pytorch import DALLE, DiscreteVAE
    from dalle_pytorch.checkpoint import load_checkpoint, save

    model_file = tmp_path / "model.bpe"
    shutil.copy(YTTM_DIR / "en.bpe", model_file)
    tok = YttmTokenizer(model_file)
    vae = DiscreteVAE(image_size=16, num_layers=1, num_tokens=16, codebook_dim=8, hidden_dim=8)
    dalle = DALLE(dim=16, vae=vae, num_text_tokens=tok.vocab_size, text_seq_len=8, depth=1, heads=1, dim_head=8)
    save(dalle, tmp_path / "dalle.safetensors", tokenizer=tok)
    model_file.unlink()
    loaded = load_checkpoint(tmp_path / "dalle.safetensors")
    assert isinstance(loaded.tokenizer, YttmTokenizer)
    assert loaded.tokenizer.encode(CAPTION) == tok.encode(CAPTION)


def test_yttm_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.bpe"):
        YttmTokenizer(tmp_path / "nope.bpe")
    with pytest.raises(ValueError, match="needs the path"):
        YttmTokenizer()

    clip_merges = ROOT / "dalle_pytorch" / "data" / "bpe_simple_vocab_16e6.txt.gz"
    with pytest.raises(ValueError, match="not a valid youtokentome BPE model.*gzip"):
        YttmTokenizer(clip_merges)
    text_file = tmp_path / "merges.txt"
    text_file.write_text("#version: 0.2\nt h\n")
    with pytest.raises(ValueError, match=r"merges.txt.*not a valid youtokentome BPE model.*'#version:'.*N M"):
        YttmTokenizer(text_file)

    good = (YTTM_DIR / "en.bpe").read_text()
    lines = good.splitlines()
    broken = {
        "truncated": "\n".join(lines[:-3]),
        "bad id": good.replace("\n9601 4\n", "\n9601 400\n"),
        "no word marker": good.replace("\n9601 4\n", "\n9602 4\n"),
        "unk -1": "\n".join(lines[:-1] + ["-1 0 2 3"]),
        "empty": "",
    }
    for why, text in broken.items():
        with pytest.raises(ValueError, match="not a valid youtokentome BPE model"):
            YttmTokenizer.from_str(text)
        path = tmp_path / f"{why}.bpe"
        path.write_text(text)
        with pytest.raises(ValueError, match=f"{why}.bpe"):
            YttmTokenizer(path)


def test_is_yttm_model(tmp_path, hug_path):
    for name in YTTM_MODELS:
        assert is_yttm_model(YTTM_DIR / name) and is_yttm_model(str(YTTM_DIR / name))
    assert not is_yttm_model(ROOT / "dalle_pytorch" / "data" / "bpe_simple_vocab_16e6.txt.gz")
    assert not is_yttm_model(hug_path)
    assert not is_yttm_model(YTTM_DIR / "captions_en.txt")
    assert not is_yttm_model(tmp_path / "missing.bpe")
    assert not is_yttm_model(tmp_path)  # a folder
    (tmp_path / "empty.bpe").write_text("")
    assert not is_yttm_model(tmp_path / "empty.bpe")


def test_scripts_pick_yttm_for_a_yttm_model(tmp_path, hug_path):
    """generate.py and train_dalle.py pick their tokenizer with one rule (tokenizer_for_flags): a YTTM
    --bpe_path without --hug is read as YTTM; each script reports a bad file as its own one-line error."""
    from dalle_pytorch.errors import GenerationError, TrainingError
    from dalle_pytorch.pipeline.text_to_image import Pipeline
    from dalle_pytorch.cli.flags import tokenizer_for_flags
    from dalle_pytorch.train.config import DalleConfig, TrainConfig
    from dalle_pytorch.train.tasks import dalle_task

    model = tmp_path / "model.bpe"  # the name does not matter: the content does
    shutil.copy(YTTM_DIR / "en.bpe", model)
    bad = tmp_path / "bad.bpe"
    bad.write_text("3 1\n9601 4\n")

    def pick(bpe_path, hug=False):
        return (tokenizer_for_flags(str(bpe_path), hug=hug),)

    for tok in pick(model):
        assert isinstance(tok, YttmTokenizer) and tok.encode(CAPTION) == _yttm_en().encode(CAPTION)
    for tok in pick(hug_path):
        assert isinstance(tok, HugTokenizer)
    clip = ROOT / "dalle_pytorch" / "data" / "bpe_simple_vocab_16e6.txt.gz"
    for tok in pick(clip):
        assert isinstance(tok, SimpleTokenizer)

    with pytest.raises(GenerationError, match="bad.bpe.*not a valid youtokentome"):
        Pipeline.from_checkpoint(None, bpe_path=str(bad))
    args = TrainConfig(task=DalleConfig(image_text_folder="unused", bpe_path=str(bad), hug=False, chinese=False,
                                        dalle_path=None))
    with pytest.raises(TrainingError, match="bad.bpe.*not a valid youtokentome"):
        dalle_task(args, None, None)


def _random_strings(rng, n):
    chars = ("abcdefghijklmnopqrstuvwxyzABCXYZ0123456789 .,;:!?'()-_&  éèàçïöüñßå東京日本語猫犬赤い丸中文汉字"
             "한국어😀🎉🐱❤👍🏽▁ \t\n\r\v\f\u00a0\u3000\u200b\u0085\x00☃")
    words = CAPTION.split() + ["café", "naïve", "東京", "日本語", "😀", "straße", "circlecircle", "redred"]
    out = []
    for _ in range(n):
        kind = rng.random()
        if kind < 0.4:
            seps = [" ", "  ", "\n", "", "▁", ","]
            out.append("".join(rng.choice(words) + rng.choice(seps) for _ in range(rng.randint(0, 8))))
        elif kind < 0.8:
            out.append("".join(rng.choice(chars) for _ in range(rng.randint(0, 50))))
        else:
            cps = [rng.choice([rng.randint(1, 0x7FF), rng.randint(0x800, 0xD7FF), rng.randint(0xE000, 0x10FFFF)])
                   for _ in range(rng.randint(0, 20))]
            out.append("".join(map(chr, cps)))
    return out


@pytest.mark.parametrize("name", YTTM_MODELS)
def test_yttm_against_live_youtokentome(name):
    yttm = pytest.importorskip("youtokentome")
    ref = yttm.BPE(str(YTTM_DIR / name))
    tok = YttmTokenizer(YTTM_DIR / name)
    assert tok.vocab_size == ref.vocab_size() and tok.vocab() == ref.vocab()
    rng = random.Random(name)
    texts = _random_strings(rng, 300)
    for text, ids in zip(texts, ref.encode(texts, output_type=yttm.OutputType.ID)):
        assert tok.encode(text) == ids, text
    for _ in range(300):
        ids = [rng.randrange(tok.vocab_size) for _ in range(rng.randint(1, 15))]
        pad_tokens = set(rng.sample(range(tok.vocab_size), rng.randint(0, 3)))
        assert [tok.decode(ids, pad_tokens=pad_tokens)] == ref.decode(ids, ignore_ids=pad_tokens | {0}), ids


def test_unknown_description():
    with pytest.raises(ValueError, match="'simple', 'hug', 'yttm' or 'chinese'"):
        tokenizer_from_description({"type": "bogus"})


@settings(max_examples=25, deadline=None)
@given(st.lists(st.text(alphabet="abcdefghijklmnopqrstuvwxyz", min_size=1, max_size=12), min_size=1, max_size=8))
def test_simple_round_trip_lowercase_words(words):
    tok = get_default_tokenizer()
    text = " ".join(words)
    assert tok.decode(tok.encode(text)) == text
