import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dalle_pytorch.tokenizer import (
    HugTokenizer,
    SimpleTokenizer,
    YttmTokenizer,
    get_default_tokenizer,
    tokenizer_from_description,
)

CAPTION = "a red circle on a blue background"


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


def test_yttm_unsupported():
    with pytest.raises(ImportError, match="youtokentome"):
        YttmTokenizer("model.bpe")


def test_unknown_description():
    with pytest.raises(ValueError):
        tokenizer_from_description({"type": "bogus"})


@settings(max_examples=25, deadline=None)
@given(st.lists(st.text(alphabet="abcdefghijklmnopqrstuvwxyz", min_size=1, max_size=12), min_size=1, max_size=8))
def test_simple_round_trip_lowercase_words(words):
    tok = get_default_tokenizer()
    text = " ".join(words)
    assert tok.decode(tok.encode(text)) == text
