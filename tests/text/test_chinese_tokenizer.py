"""ChineseTokenizer (DALLE-pytorch's --chinese) against transformers' Python BertTokenizer.

DALLE-pytorch built `BertTokenizer.from_pretrained('bert-base-chinese')`: in transformers 4.x the
pure-Python ("slow") class, with bert-base-chinese's do_lower_case=False, and called
`encode(text, add_special_tokens=False)` / `decode(ids)`. transformers 5 keeps that class as
`BertTokenizerLegacy`. The real bert-base-chinese vocab.txt cannot be downloaded here, so both sides
read the committed stand-in tests/fixtures/bert_chinese/vocab.txt (same layout, ~2,900 tokens).
"""
import importlib.util
import json
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dalle_pytorch.text.factory import (CHINESE_VOCAB_HELP, ChineseTokenizer, HugTokenizer, YttmTokenizer,
                                        tokenizer_from_description, tokenizer_from_file)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
VOCAB = FIXTURES / "bert_chinese" / "vocab.txt"


def _reference_class():
    transformers = pytest.importorskip("transformers")
    try:  # transformers >= 5: the Python implementation DALLE-pytorch ran is BertTokenizerLegacy
        from transformers.models.bert.tokenization_bert_legacy import BertTokenizerLegacy

        return BertTokenizerLegacy
    except ImportError:  # transformers 4.x: BertTokenizer is the Python implementation
        return transformers.BertTokenizer


@pytest.fixture(scope="module")
def ours():
    return ChineseTokenizer(VOCAB)


@pytest.fixture(scope="module")
def ref():
    tok = _reference_class()(str(VOCAB), do_lower_case=False)  # bert-base-chinese's tokenizer_config
    assert not getattr(tok, "is_fast", False)
    return tok


def ref_decode(ref, ids, pad_tokens=frozenset()):
    """DALLE-pytorch's ChineseTokenizer.decode: drop 0 and pad_tokens, then BertTokenizer.decode."""
    ignore = set(pad_tokens) | {0}
    return ref.decode([t for t in ids if t not in ignore])


CASES = [
    "追老鼠的猫",  # DALLE-pytorch's README example
    "一只猫在追老鼠。",
    "蓝色的圆形在绿色的方块上",
    "你好，世界！Hello World",
    "a red circle on the blue square, ok?",
    "A Red Circle",  # no lowercasing: capitals are tokens of their own or [UNK]
    "unaffable playing runs",
    "don't it's we're I'm",
    "2021年100只猫",
    "「你好」『世界』《书》【图】～，。！？：；",
    "ｆｕｌｌ　ｗｉｄｔｈ１２３，ＡＢＣ",  # full-width letters / digits / ideographic space
    "café naïve über",  # precomposed accents: kept (no strip_accents without lowercasing)
    "cafe\u0301 nai\u0308ve",  # decomposed accents: NFC makes them the precomposed tokens
    "😀 emoji 龘 unknown ∑",  # unknown characters and a character outside the vocabulary
    "",
    "   \t\n  ",
    "[MASK]的猫[UNK]x[CLS] [SEP]y[PAD]",  # special tokens written in the text stay one token
    "[mask] [Mask",  # not special tokens (case-sensitive)
    "a" * 100,  # the longest word WordPiece splits
    "a" * 101 + " b",  # one character more: [UNK]
    "x\x00y\ufffdz\u200b\u2028w\x85v\x0bu\u3000t",  # NUL, U+FFFD, format/control chars, odd whitespace
    "\U00020000\U0002b820\U0002b91f\U0002b920\U0002ceaf\U0002ceb0",  # CJK extension boundaries
    "\uf900\ufa0e\u3400\u4dbf\u9fff\ua000",  # compatibility ideographs (NFC) and block edges
    "hello...world!!! ???",
    "$100 & 50% @home #tag ^_^ `x` ~y~ |z|",
    "un##able ##s",
]


@pytest.mark.parametrize("text", CASES)
def test_encode_and_decode_match_bert_tokenizer(ours, ref, text):
    ids = ours.encode(text)
    assert ids == ref.encode(text, add_special_tokens=False)
    assert ours.decode(ids) == ref_decode(ref, ids)


def test_known_ids(ours):
    tokens = ours.id_to_token
    ids = ours.encode("追老鼠的猫")
    assert [tokens[i] for i in ids] == ["追", "老", "鼠", "的", "猫"]
    assert ours.decode(ids) == "追 老 鼠 的 猫"  # BertTokenizer puts spaces between the characters
    assert [tokens[i] for i in ours.encode("playing unaffable")] == ["play", "##ing", "un", "##aff", "##able"]
    assert ours.decode(ours.encode("playing unaffable, ok?")) == "playing unaffable, ok?"
    assert ours.encode("😀") == [tokens.index("[UNK]")] == [100]


def test_vocab_size(ours, ref):
    assert ours.vocab_size == ref.vocab_size == len(VOCAB.read_text(encoding="utf-8").splitlines())


ALPHABET = list(
    "的一是不了人我猫追老鼠蓝色圆形龘丂"  # in and out of the vocabulary
    "abcxyzABC0123 éüñ"
    ".,!?'\"-_[]()#@&~"
    "，。！？「」、（）～　"
    "\t\n\r\x00\x0b\x85\u200b\u2028\ufffd\u00a0\u2003"
    "\u0301\u0308\u0327"  # combining marks
    "\uf900\U0002b820\U00020001😀∑"
)
WORDS = ["[MASK]", "[UNK]", "[CLS]", "[SEP]", "[PAD]", "##", "playing", "unaffable", "don't", "a" * 99]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.one_of(st.sampled_from(ALPHABET), st.sampled_from(WORDS)), max_size=40).map("".join))
def test_random_text_matches_bert_tokenizer(ours, ref, text):
    ids = ours.encode(text)
    assert ids == ref.encode(text, add_special_tokens=False)
    assert ours.decode(ids) == ref_decode(ref, ids)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.integers(0, 2862), max_size=30))
def test_decode_of_any_ids_matches(ours, ref, ids):
    # generated captions (--gentxt) are arbitrary id sequences: ## pieces first, after [CLS], ...
    assert ours.vocab_size == 2863
    assert ours.decode(ids) == ref_decode(ref, ids)
    assert ours.decode(torch.tensor(ids, dtype=torch.long)) == ref_decode(ref, ids)


def test_decode_drops_padding_and_pad_tokens(ours, ref):
    ids = ours.encode("蓝色的圆形")
    padded = ids + [0, 0, 0]
    assert ours.decode(padded) == ours.decode(ids) == "蓝 色 的 圆 形"
    assert ours.decode(padded, pad_tokens={ids[0]}) == ref_decode(ref, padded, {ids[0]}) == "色 的 圆 形"
    with pytest.raises(ValueError, match="outside the vocabulary"):
        ours.decode([ids[0], ours.vocab_size])
    with pytest.raises(ValueError, match="outside the vocabulary"):
        ours.decode([-1])


def test_tokenize_pads_and_truncates(ours, ref):
    long_text = "一只猫在追老鼠。" * 40 + "hello world playing"
    ref_ids = ref.encode(long_text, add_special_tokens=False)
    assert len(ref_ids) > 300
    out = ours.tokenize([long_text, "猫", ""], context_length=256, truncate_text=True)
    assert out.shape == (3, 256) and out.dtype == torch.long
    assert out[0].tolist() == ref_ids[:256]
    assert out[1].tolist() == ref.encode("猫", add_special_tokens=False) + [0] * 255
    assert out[2].tolist() == [0] * 256
    assert ours.tokenize("猫").shape == (1, 256)
    with pytest.raises(ValueError, match="longer than the context length 256"):
        ours.tokenize(long_text, context_length=256)


def test_describe_round_trip(ours, tmp_path):
    copy = tmp_path / "vocab.txt"
    copy.write_bytes(VOCAB.read_bytes())
    tok = ChineseTokenizer(copy)
    d = json.loads(json.dumps(tok.describe()))
    assert d["type"] == "chinese" and d["vocab"] == VOCAB.read_text(encoding="utf-8")
    copy.unlink()  # the description carries the vocabulary itself, not just the path
    rebuilt = tokenizer_from_description(d)
    assert isinstance(rebuilt, ChineseTokenizer) and rebuilt.vocab_size == tok.vocab_size
    for text in CASES:
        assert rebuilt.encode(text) == ours.encode(text)
    with pytest.raises(ValueError, match="needs its 'vocab' text"):
        tokenizer_from_description({"type": "chinese", "path": str(VOCAB)})  # a stored path is never followed


def test_checkpoint_carries_the_tokenizer(ours, tmp_path):
    from dalle_pytorch.checkpoint import load_checkpoint, save
    from tests.helpers import tiny_dalle

    model = tiny_dalle(num_text_tokens=ours.vocab_size)
    path = tmp_path / "dalle.safetensors"
    save(model, path, tokenizer=ours)
    loaded = load_checkpoint(path)
    assert isinstance(loaded.tokenizer, ChineseTokenizer)
    assert loaded.tokenizer.encode("追老鼠的猫 hello") == ours.encode("追老鼠的猫 hello")


def test_line_breaks_are_read_like_transformers(ours, ref, tmp_path):
    lines = VOCAB.read_text(encoding="utf-8").splitlines()
    for name, text in [("crlf.txt", "\r\n".join(lines) + "\r\n"), ("cr.txt", "\r".join(lines)),
                       ("no_final_newline.txt", "\n".join(lines))]:
        path = tmp_path / name
        path.write_bytes(text.encode("utf-8"))
        tok = ChineseTokenizer(path)
        ref_tok = _reference_class()(str(path), do_lower_case=False)
        assert tok.id_to_token == ours.id_to_token
        assert tok.vocab_size == ref_tok.vocab_size
        assert tok.encode("追老鼠的猫 playing") == ref_tok.encode("追老鼠的猫 playing", add_special_tokens=False)


def test_without_a_vocab_says_which_file_is_needed():
    with pytest.raises(ValueError) as e:
        ChineseTokenizer()
    message = str(e.value)
    assert message == CHINESE_VOCAB_HELP
    assert "vocab.txt" in message and "bert-base-chinese" in message and "nothing is downloaded" in message
    with pytest.raises(ValueError, match="bert-base-chinese"):
        tokenizer_from_file(None, chinese=True)


def _write(tmp_path, name, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def test_untrusted_vocab_files_are_refused(tmp_path, monkeypatch):
    import dalle_pytorch.text.chinese as tokenizer_module

    good = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "猫"]
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ChineseTokenizer(tmp_path / "missing.txt")
    with pytest.raises(ValueError, match="not a regular file"):
        ChineseTokenizer(tmp_path)
    with pytest.raises(ValueError, match="not UTF-8"):
        ChineseTokenizer(_write(tmp_path, "latin1.txt", "\n".join(good[:5] + ["café"]).encode("latin-1")))
    with pytest.raises(ValueError, match="empty"):
        ChineseTokenizer(_write(tmp_path, "empty.txt", b""))
    with pytest.raises(ValueError, match="line 3 is empty"):
        ChineseTokenizer(_write(tmp_path, "blank.txt", "\n".join(good[:2] + [""] + good[2:]).encode()))
    with pytest.raises(ValueError, match="lines 6 and 7"):
        ChineseTokenizer(_write(tmp_path, "dup.txt", "\n".join(good + ["猫"]).encode()))
    with pytest.raises(ValueError, match=r"lacks the special tokens \[MASK\]"):
        ChineseTokenizer(_write(tmp_path, "no_mask.txt", "\n".join(good[:4] + good[5:]).encode()))
    with pytest.raises(ValueError, match=r"\[PAD\] is on line 2"):
        ChineseTokenizer(_write(tmp_path, "pad_second.txt", "\n".join([good[1], good[0]] + good[2:]).encode()))
    monkeypatch.setattr(tokenizer_module, "MAX_VOCAB_BYTES", 20)
    with pytest.raises(ValueError, match="larger than 20 bytes"):
        ChineseTokenizer(_write(tmp_path, "big.txt", "\n".join(good).encode()))
    with pytest.raises(ValueError, match="longer than 20 characters"):  # a stored description is untrusted too
        ChineseTokenizer(vocab_str="\n".join(good))
    monkeypatch.undo()
    with pytest.raises(TypeError):
        ChineseTokenizer(vocab_str=b"[PAD]")
    assert ChineseTokenizer(vocab_str="\n".join(good)).encode("猫猫") == [5, 5]


def test_tokenizer_from_file_chinese(tmp_path, recwarn):
    tok = tokenizer_from_file(VOCAB, chinese=True)
    assert isinstance(tok, ChineseTokenizer) and tok.vocab_path == str(VOCAB)
    assert len(recwarn) == 0
    # as in DALLE-pytorch, a youtokentome model or a tokenizers JSON in --bpe_path wins over --chinese
    with pytest.warns(UserWarning, match="chinese=True .* is ignored"):
        assert isinstance(tokenizer_from_file(FIXTURES / "yttm" / "en.bpe", chinese=True), YttmTokenizer)
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel

    json_path = tmp_path / "tok.json"
    Tokenizer(WordLevel({"[PAD]": 0, "[UNK]": 1}, unk_token="[UNK]")).save(str(json_path))
    with pytest.warns(UserWarning, match="is ignored"):
        assert isinstance(tokenizer_from_file(json_path, chinese=True), HugTokenizer)
    # a CLIP merges file is not a vocab.txt: a clear error, not a silent SimpleTokenizer
    merges = tmp_path / "merges.txt"
    merges.write_text("#version: 0.2\nt h\n", encoding="utf-8")
    with pytest.raises(ValueError, match="lacks the special tokens"):
        tokenizer_from_file(merges, chinese=True)


def test_package_exports():
    import dalle_pytorch

    assert dalle_pytorch.ChineseTokenizer is ChineseTokenizer


def test_fixture_vocab_is_what_its_script_writes(tmp_path):
    spec = importlib.util.spec_from_file_location("make_vocab", FIXTURES / "bert_chinese" / "make_vocab.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert "\n".join(module.vocab_tokens()) + "\n" == VOCAB.read_text(encoding="utf-8")
