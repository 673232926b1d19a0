"""`ChineseTokenizer`: BERT WordPiece with bert-base-chinese's settings (DALLE-pytorch's `--chinese`),
read from a local `vocab.txt` (never downloaded); BERT's basic tokenization in Python, WordPiece
matching by the `tokenizers` package."""
from __future__ import annotations

import os
import re
import stat
import unicodedata
from pathlib import Path
from typing import Union

from dalle_pytorch.text.base import BaseTokenizer, shorten

BERT_SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")  # BertTokenizer's five special tokens
MAX_VOCAB_BYTES = 8 * 2**20  # bert-base-chinese's vocab.txt is ~110 KB; the largest BERT vocabularies ~1 MB
MAX_VOCAB_TOKENS = 2**20
_BERT_SPECIAL_SPLIT = re.compile("(" + "|".join(re.escape(t) for t in BERT_SPECIAL_TOKENS) + ")")
# BERT's "Chinese characters": the CJK Unified Ideographs blocks and extensions A-E, and the compatibility
# ideographs (not Hangul, kana or CJK punctuation)
_BERT_CJK_RANGES = ((0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F), (0x2B740, 0x2B81F),
                    (0x2B820, 0x2CEAF), (0xF900, 0xFAFF), (0x2F800, 0x2FA1F))
CHINESE_VOCAB_HELP = (
    "ChineseTokenizer needs the WordPiece vocabulary of bert-base-chinese, its `vocab.txt` (21128 lines, one "
    "token per line, [PAD] first). DALLE-pytorch's --chinese fetched it at run time from the Hugging Face hub "
    "(model bert-base-chinese, now google-bert/bert-base-chinese); nothing is downloaded here. Take vocab.txt "
    "from that model repository or from a transformers cache "
    "(~/.cache/huggingface/hub/models--bert-base-chinese/snapshots/<hash>/vocab.txt) and pass its path "
    "(scripts: --chinese --bpe_path path/to/vocab.txt)"
)


def _read_vocab_file(path: Union[str, Path]) -> str:
    """The text of a vocabulary file: a regular file of at most MAX_VOCAB_BYTES bytes of UTF-8."""
    path = Path(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"vocabulary file {str(path)!r} does not exist") from None
    if not stat.S_ISREG(st.st_mode):
        raise ValueError(f"vocabulary file {str(path)!r} is not a regular file")
    with open(path, "rb") as f:
        raw = f.read(MAX_VOCAB_BYTES + 1)  # the file may grow after the stat: never read more than the limit
    if len(raw) > MAX_VOCAB_BYTES:
        raise ValueError(f"vocabulary file {str(path)!r} is larger than {MAX_VOCAB_BYTES} bytes; is it a vocab.txt?")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"vocabulary file {str(path)!r} is not UTF-8 text (bad byte at offset {e.start})") from None


def parse_wordpiece_vocab(text: str, source: str = "the vocabulary") -> list[str]:
    """Tokens of a BERT `vocab.txt` text, indexed by id (line number).

    Lines end with \\n, \\r\\n or \\r (what `transformers`' `load_vocab` reads in text mode); a final
    line break is optional. Raises ValueError for an empty or oversized vocabulary, an empty line,
    a token listed twice (BertTokenizer would silently give it the later id and shrink vocab_size),
    a missing special token, or [PAD] not at id 0 (the padding id of every tokenizer here).
    """
    if len(text) > MAX_VOCAB_BYTES:
        raise ValueError(f"{source} is longer than {MAX_VOCAB_BYTES} characters")
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the final line break
    if not lines:
        raise ValueError(f"{source} is empty; expected one WordPiece token per line")
    if len(lines) > MAX_VOCAB_TOKENS:
        raise ValueError(f"{source} has {len(lines)} lines, more than {MAX_VOCAB_TOKENS}")
    seen: dict[str, int] = {}
    for i, token in enumerate(lines):
        if token == "":
            raise ValueError(f"{source}: line {i + 1} is empty; expected one WordPiece token per line")
        if token in seen:
            raise ValueError(f"{source}: token {shorten(token, 20)!r} is on lines {seen[token] + 1} and {i + 1}")
        seen[token] = i
    missing = [t for t in BERT_SPECIAL_TOKENS if t not in seen]
    if missing:
        raise ValueError(f"{source} lacks the special tokens {', '.join(missing)}; is it a BERT vocab.txt?")
    if seen["[PAD]"] != 0:
        raise ValueError(f"{source}: [PAD] is on line {seen['[PAD]'] + 1}; it must be the first token (id 0, padding)")
    return lines


def _is_bert_cjk(cp: int) -> bool:
    return any(lo <= cp <= hi for lo, hi in _BERT_CJK_RANGES)


def _is_bert_punctuation(ch: str) -> bool:
    """Unicode punctuation (P*) and every ASCII character that is not a letter, digit, space or control."""
    cp = ord(ch)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(ch).startswith("P")


def bert_basic_tokenize(text: str) -> list[str]:
    """BERT's basic tokenization with bert-base-chinese's settings (no lowercasing, no accent stripping).

    As transformers' BasicTokenizer, with the running Python's `unicodedata` tables: drop NUL, U+FFFD
    and other characters (category C*, except tab / newline / carriage return, which are spaces); make
    whitespace (those and category Zs) a space; put spaces around CJK ideographs; NFC; split on
    whitespace; split every punctuation character off as a word of its own.
    """
    chars = []
    for ch in text:
        cp = ord(ch)
        if ch in " \t\n\r":
            chars.append(" ")
            continue
        category = unicodedata.category(ch)
        if cp == 0 or cp == 0xFFFD or category.startswith("C"):
            continue
        if category == "Zs":
            chars.append(" ")
        elif _is_bert_cjk(cp):
            chars.append(f" {ch} ")
        else:
            chars.append(ch)
    words: list[str] = []
    for chunk in unicodedata.normalize("NFC", "".join(chars)).split():  # str.split: also U+2028, U+2029, ...
        start = 0
        for i, ch in enumerate(chunk):
            if _is_bert_punctuation(ch):
                if i > start:
                    words.append(chunk[start:i])
                words.append(ch)
                start = i + 1
        if start < len(chunk):
            words.append(chunk[start:])
    return words


def _bert_clean_up_spaces(text: str) -> str:
    """transformers' `clean_up_tokenization` (on by default for BertTokenizer.decode)."""
    for before, after in ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"),
                          (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re")):
        text = text.replace(before, after)
    return text


class ChineseTokenizer(BaseTokenizer):
    """BERT WordPiece with bert-base-chinese's settings: DALLE-pytorch's `--chinese` tokenizer.

    DALLE-pytorch built `transformers.BertTokenizer.from_pretrained('bert-base-chinese')` (the Python
    "slow" BertTokenizer of transformers 4.x, with bert-base-chinese's `do_lower_case=False`) and used
    `encode(text, add_special_tokens=False)` and `decode(ids)`. This class gives the same ids and text
    from a local `vocab.txt`; the WordPiece matching is done by the `tokenizers` package:

    - text is cleaned (NUL, U+FFFD and control characters dropped, whitespace made spaces), every CJK
      ideograph becomes a word of its own, then Unicode NFC; no lowercasing and no accent stripping;
    - words split on whitespace and punctuation (Unicode P* and all ASCII non-alphanumerics), then
      greedy longest-match WordPiece with `##` continuations; a word that cannot be matched, or is
      longer than 100 characters, becomes [UNK]; [PAD] [UNK] [CLS] [SEP] [MASK] written in the text
      stay single tokens (`bert_basic_tokenize` does the first steps with Python's `unicodedata`, as
      BertTokenizer does: the `tokenizers` BertNormalizer / BertPreTokenizer use other Unicode tables
      and differ on unassigned code points and CJK Extension E);
    - `decode` drops 0 ([PAD]) and `pad_tokens`, joins the rest with spaces, glues `##` pieces to the
      previous token and applies BertTokenizer's clean-up (" ." -> ".", " 's" -> "'s", ...).
      Chinese text comes back with spaces between the characters, as in DALLE-pytorch; [UNK], [CLS],
      [SEP] and [MASK] are kept. Ids outside the vocabulary raise ValueError (BertTokenizer wrote
      [UNK] for them).

    `describe()` stores the vocabulary itself, so a checkpoint rebuilds this tokenizer on any machine.

    Args:
        vocab_path: bert-base-chinese's `vocab.txt` (one token per line; see `parse_wordpiece_vocab`).
        vocab_str: the text of such a file instead of a path (see `from_str`).
    """

    max_input_chars_per_word = 100  # BertTokenizer's WordpieceTokenizer default

    def __init__(self, vocab_path: Union[str, Path, None] = None, *, vocab_str: str | None = None):
        if vocab_str is not None:
            if not isinstance(vocab_str, str):
                raise TypeError(f"vocab_str must be a str, got {type(vocab_str).__name__}")
            self.vocab_path = str(vocab_path) if vocab_path is not None else None
            source = "the stored vocabulary"
        else:
            if vocab_path is None:
                raise ValueError(CHINESE_VOCAB_HELP)
            vocab_str = _read_vocab_file(vocab_path)
            self.vocab_path = str(vocab_path)
            source = f"vocabulary file {str(vocab_path)!r}"

        from tokenizers import Tokenizer
        from tokenizers.models import WordPiece

        tokens = parse_wordpiece_vocab(vocab_str, source)
        self.id_to_token = tokens
        self.vocab_size = len(tokens)
        self.vocab_str = "\n".join(tokens) + "\n"  # normalised line breaks: what describe() stores

        self.special_ids = {t: tokens.index(t) for t in BERT_SPECIAL_TOKENS}
        # WordPiece alone (no normalizer / pre-tokenizer): it gets the words of `bert_basic_tokenize`
        self.tokenizer = Tokenizer(WordPiece({t: i for i, t in enumerate(tokens)}, unk_token="[UNK]",
                                             max_input_chars_per_word=self.max_input_chars_per_word))

    @classmethod
    def from_str(cls, vocab_str: str, path: str | None = None) -> "ChineseTokenizer":
        """Build from the text of a `vocab.txt` (as stored by `describe()`)."""
        return cls(path, vocab_str=vocab_str)

    def encode(self, text: str) -> list[int]:
        """Token ids of `text` (no [CLS] / [SEP], no padding), as BertTokenizer.encode(text, add_special_tokens=False)."""
        if not isinstance(text, str):
            raise TypeError(f"encode expects a str, got {type(text).__name__}")
        ids: list[int] = []
        # special tokens written in the text are found first, in the raw text (as BertTokenizer does)
        for i, part in enumerate(_BERT_SPECIAL_SPLIT.split(text)):
            if i % 2:
                ids.append(self.special_ids[part])
                continue
            words = bert_basic_tokenize(part)
            if words:
                ids.extend(self.tokenizer.encode(words, is_pretokenized=True, add_special_tokens=False).ids)
        return ids

    def _decode_ids(self, ids: list[int]) -> str:
        bad = [t for t in ids if not 0 <= t < self.vocab_size]
        if bad:
            raise ValueError(f"token ids {bad[:5]} are outside the vocabulary (size {self.vocab_size})")
        text = " ".join(self.id_to_token[t] for t in ids).replace(" ##", "").strip()
        return _bert_clean_up_spaces(text)

    def describe(self) -> dict:
        """{"type": "chinese", "path": <original path or None>, "vocab": <the vocabulary, one token per line>}."""
        return {"type": "chinese", "path": self.vocab_path, "vocab": self.vocab_str}
