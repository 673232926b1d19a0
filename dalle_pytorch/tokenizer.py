"""Text tokenizers with one shared interface.

Every tokenizer here offers

    tokenize(texts, context_length=256, truncate_text=False) -> LongTensor (b, context_length)
    encode(text) -> list[int]
    decode(tokens, pad_tokens=frozenset()) -> str
    vocab_size: int
    describe() -> dict            (JSON-serialisable; see `tokenizer_from_description`)

Token id 0 is the padding id throughout (DALLE-pytorch convention): `tokenize` pads with 0 on the
right and `decode` drops 0s.

- `SimpleTokenizer`: OpenAI CLIP's byte-level BPE (vocab 49408), the default.
- `HugTokenizer`: wraps a HuggingFace `tokenizers` JSON file.
- `YttmTokenizer`: reads a youtokentome (YTTM) BPE model file (`model.bpe`) and encodes / decodes like
  `youtokentome.BPE` 1.0.6 with its defaults. Pure Python: youtokentome itself is not needed (it is
  unmaintained and hard to build); the results were checked against youtokentome 1.0.6
  (`tests/fixtures/yttm/`). `is_yttm_model(path)` tells a YTTM model file apart by its content.
- `ChineseTokenizer`: BERT WordPiece with bert-base-chinese's settings (DALLE-pytorch's `--chinese`),
  read from a local `vocab.txt` (never downloaded) and run by the `tokenizers` package.

Nothing is read from disk at import time: the BPE vocabulary is loaded when a tokenizer is built.
"""

from __future__ import annotations

import gzip
import html
import heapq
import json
import os
import re
import stat
import unicodedata
import warnings
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Iterable, Sequence, Union

import torch
from torch import Tensor

__all__ = [
    "BaseTokenizer",
    "SimpleTokenizer",
    "HugTokenizer",
    "YttmTokenizer",
    "ChineseTokenizer",
    "get_default_tokenizer",
    "tokenizer_from_description",
    "is_yttm_model",
    "tokenizer_from_file",
    "tokenizer_for_flags",
]

TokenIds = Union[Sequence[int], Tensor]

# helpers


def exists(val) -> bool:
    return val is not None


def default(val, d):
    return val if exists(val) else d


def _shorten(text: str, max_chars: int = 60) -> str:
    text = " ".join(text.split())
    return text if len(text) <= max_chars else text[: max_chars - 3] + "..."


def _to_id_list(tokens: TokenIds) -> list[int]:
    if torch.is_tensor(tokens):
        if tokens.ndim != 1:
            raise ValueError(f"decode expects a 1-d sequence of token ids, got a tensor of shape {tuple(tokens.shape)}")
        return tokens.tolist()
    return [int(t) for t in tokens]


# shared interface


class BaseTokenizer:
    """Common `tokenize` / `decode` plumbing; subclasses implement `encode`, `_decode_ids`, `describe`."""

    vocab_size: int

    def encode(self, text: str) -> list[int]:
        """Encode one caption into a list of token ids (no padding, no special tokens)."""
        raise NotImplementedError

    def _decode_ids(self, ids: list[int]) -> str:
        raise NotImplementedError

    def describe(self) -> dict:
        """A JSON-serialisable description from which `tokenizer_from_description` rebuilds this tokenizer."""
        raise NotImplementedError

    def decode(self, tokens: TokenIds, pad_tokens: Iterable[int] = frozenset()) -> str:
        """Decode token ids (list or 1-d tensor of shape (n,)) to text, dropping 0s and `pad_tokens`."""
        ignore = set(int(t) for t in pad_tokens) | {0}
        ids = [t for t in _to_id_list(tokens) if t not in ignore]
        return self._decode_ids(ids)

    def tokenize(
        self,
        texts: Union[str, Sequence[str]],
        context_length: int = 256,
        truncate_text: bool = False,
    ) -> torch.LongTensor:
        """Tokenize captions into a zero-padded LongTensor of shape (b, context_length).

        A caption longer than `context_length` tokens is cut when `truncate_text` is set, and otherwise
        raises a ValueError naming the caption.
        """
        if isinstance(texts, str):
            texts = [texts]
        if context_length < 1:
            raise ValueError(f"context_length must be >= 1, got {context_length}")

        result = torch.zeros(len(texts), context_length, dtype=torch.long)
        for i, text in enumerate(texts):
            ids = self.encode(text)
            if len(ids) > context_length:
                if not truncate_text:
                    raise ValueError(
                        f"caption {_shorten(text)!r} is {len(ids)} tokens long, longer than the context length "
                        f"{context_length}; shorten it or pass truncate_text=True"
                    )
                ids = ids[:context_length]
            if len(ids) > 0:
                result[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        return result

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}(vocab_size={self.vocab_size})"


# OpenAI CLIP byte-level BPE


@lru_cache()
def bytes_to_unicode() -> dict[int, str]:
    """Reversible map from the 256 byte values to printable unicode characters (GPT-2 / CLIP scheme).

    Printable latin-1 bytes map to themselves; the rest are shifted to code points from 256 upwards, so
    no byte becomes whitespace or a control character that the BPE would trip over.
    """
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    mapping = {b: chr(b) for b in printable}
    shift = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + shift)
            shift += 1
    return mapping  # insertion order (printable bytes first) defines the base vocabulary order


def _pairs(word: tuple[str, ...]) -> set[tuple[str, str]]:
    return set(zip(word[:-1], word[1:]))


def _basic_clean(text: str) -> str:
    import ftfy  # imported lazily: only needed when text is encoded

    text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text))
    return text.strip()


def _whitespace_clean(text: str) -> str:
    import regex

    return regex.sub(r"\s+", " ", text).strip()


def _read_bpe_merges(bpe_path: Union[str, Path, None]) -> list[str]:
    if exists(bpe_path):
        path = Path(bpe_path)
        if not path.exists():
            raise FileNotFoundError(f"BPE merges file {str(path)!r} does not exist")
        raw = path.read_bytes()
    else:
        raw = resources.files("dalle_pytorch").joinpath("data", "bpe_simple_vocab_16e6.txt.gz").read_bytes()
    if raw[:2] == b"\x1f\x8b":  # gzip magic
        raw = gzip.decompress(raw)
    return raw.decode("utf-8").split("\n")


class SimpleTokenizer(BaseTokenizer):
    """OpenAI CLIP's BPE tokenizer (lowercasing, byte-level BPE with `</w>` word ends).

    `<|startoftext|>` (49406) and `<|endoftext|>` (49407) are in the vocabulary but `tokenize` does not
    add them, like DALLE-pytorch. Note that id 0 (`!`) doubles as padding, so `decode` drops it.

    Args:
        bpe_path: merges file (plain or gzipped); defaults to the packaged `bpe_simple_vocab_16e6.txt.gz`.
    """

    num_merges = 49152 - 256 - 2
    start_token = 49406
    end_token = 49407

    def __init__(self, bpe_path: Union[str, Path, None] = None):
        import regex

        self.bpe_path = str(bpe_path) if exists(bpe_path) else None
        self.byte_encoder = bytes_to_unicode()
        self.byte_decoder = {v: k for k, v in self.byte_encoder.items()}

        lines = _read_bpe_merges(bpe_path)
        merges = [tuple(line.split()) for line in lines[1 : self.num_merges + 1]]  # line 0 is a version header

        base = list(self.byte_encoder.values())
        vocab = base + [ch + "</w>" for ch in base] + ["".join(m) for m in merges]
        vocab += ["<|startoftext|>", "<|endoftext|>"]

        self.encoder = {tok: i for i, tok in enumerate(vocab)}
        self.decoder = {i: tok for tok, i in self.encoder.items()}
        self.bpe_ranks = {m: i for i, m in enumerate(merges)}
        self.vocab_size = len(vocab)  # 49408 for the CLIP vocabulary
        self.cache = {"<|startoftext|>": "<|startoftext|>", "<|endoftext|>": "<|endoftext|>"}
        self.pat = regex.compile(
            r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
            regex.IGNORECASE,
        )

    def bpe(self, token: str) -> str:
        """Apply the BPE merges to one pre-token (byte-mapped); returns space-separated sub-words."""
        if token in self.cache:
            return self.cache[token]

        word = tuple(token[:-1]) + (token[-1] + "</w>",)
        pairs = _pairs(word)
        if not pairs:
            return token + "</w>"

        while True:
            bigram = min(pairs, key=lambda p: self.bpe_ranks.get(p, float("inf")))
            if bigram not in self.bpe_ranks:
                break
            first, second = bigram
            merged: list[str] = []
            i = 0
            while i < len(word):
                if i < len(word) - 1 and word[i] == first and word[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = tuple(merged)
            if len(word) == 1:
                break
            pairs = _pairs(word)

        out = " ".join(word)
        self.cache[token] = out
        return out

    def encode(self, text: str) -> list[int]:
        """Clean (ftfy, html unescape, whitespace), lowercase and BPE-encode `text` into token ids."""
        text = _whitespace_clean(_basic_clean(text)).lower()
        ids: list[int] = []
        for token in self.pat.findall(text):
            token = "".join(self.byte_encoder[b] for b in token.encode("utf-8"))
            ids.extend(self.encoder[piece] for piece in self.bpe(token).split(" "))
        return ids

    def decode(
        self,
        tokens: TokenIds,
        pad_tokens: Iterable[int] = frozenset(),
        remove_start_end: bool = True,
    ) -> str:
        """Decode ids (list or (n,) tensor) to text, dropping 0s, `pad_tokens` and (by default) start/end tokens."""
        pad_tokens = set(int(t) for t in pad_tokens)
        if remove_start_end:
            pad_tokens |= {self.start_token, self.end_token}
        return super().decode(tokens, pad_tokens=pad_tokens)

    def _decode_ids(self, ids: list[int]) -> str:
        unknown = [t for t in ids if t not in self.decoder]
        if unknown:
            raise ValueError(f"token ids {unknown[:5]} are outside the vocabulary (size {self.vocab_size})")
        text = "".join(self.decoder[t] for t in ids)
        raw = bytearray(self.byte_decoder[c] for c in text)
        return raw.decode("utf-8", errors="replace").replace("</w>", " ").strip()

    def describe(self) -> dict:
        """{"type": "simple"} (plus "bpe_path" when a non-default merges file was used)."""
        d: dict = {"type": "simple"}
        if exists(self.bpe_path):
            d["bpe_path"] = self.bpe_path
        return d


# HuggingFace tokenizers


class HugTokenizer(BaseTokenizer):
    """Wraps a HuggingFace `tokenizers` JSON file.

    Like DALLE-pytorch, the tokenizer's post-processor is replaced by a plain ByteLevel one, so no
    template special tokens are added by `encode`.

    Args:
        bpe_path: path to a `tokenizer.json` saved by the `tokenizers` library.
    """

    def __init__(self, bpe_path: Union[str, Path, None] = None, *, json_str: str | None = None):
        if exists(json_str):
            self.bpe_path = str(bpe_path) if exists(bpe_path) else None
        else:
            if not exists(bpe_path):
                raise ValueError("HugTokenizer needs the path of a tokenizers JSON file")
            path = Path(bpe_path)
            if not path.exists():
                raise FileNotFoundError(f"tokenizer JSON file {str(path)!r} does not exist")
            json_str = path.read_text(encoding="utf-8")
            self.bpe_path = str(path)

        from tokenizers import Tokenizer
        from tokenizers.processors import ByteLevel

        self.json_str = json_str
        tokenizer = Tokenizer.from_str(json_str)
        tokenizer.post_processor = ByteLevel(trim_offsets=True)
        self.tokenizer = tokenizer
        self.vocab_size = tokenizer.get_vocab_size()

    @classmethod
    def from_str(cls, json_str: str, path: str | None = None) -> "HugTokenizer":
        """Build from the JSON text of a `tokenizers` file (as stored by `describe()`)."""
        return cls(path, json_str=json_str)

    def encode(self, text: str) -> list[int]:
        """Token ids of `text` (no padding)."""
        return list(self.tokenizer.encode(text).ids)

    def _decode_ids(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def describe(self) -> dict:
        """{"type": "hug", "path": <original path or None>, "json": <tokenizer JSON text>}."""
        return {"type": "hug", "path": self.bpe_path, "json": self.json_str}


# youtokentome (YTTM) BPE, pure Python

YTTM_SPACE = "\u2581"  # "▁": YTTM marks the start of every word with this character
_YTTM_SPECIAL_PIECES = ("<UNK>", "<PAD>", "<BOS>", "<EOS>")  # what decode writes for unk / pad / bos / eos
# YTTM splits words on the C-locale isspace() characters and on its own "▁" marker; nothing else (not
# U+00A0, U+0085, U+3000, ...) counts as a space.
_YTTM_WORD_SPLIT = re.compile("[ \t\n\v\f\r\u2581]+")
_YTTM_NUMBER = re.compile(r"-?[0-9]+")
_YTTM_HEADER = re.compile(rb"\A[ \t\r]*\d+[ \t]+\d+[ \t\r]*(\n|\Z)")
_YTTM_EXPECTED = (
    "expected the model file written by youtokentome.BPE.train: a first line 'N M', then N lines "
    "'codepoint id', M merge lines 'left right merged' and a last line 'unk_id pad_id bos_id eos_id'"
)


def is_yttm_model(path: Union[str, Path]) -> bool:
    """True when `path` is a file that starts like a youtokentome BPE model (first line: two integers).

    Only the first line is looked at, so a corrupted YTTM model still counts as one (and `YttmTokenizer`
    then says what is wrong with it). CLIP merges (`#version` header, or gzip) and JSON files do not.
    """
    try:
        with open(path, "rb") as f:
            head = f.read(256)
    except OSError:
        return False
    return bool(_YTTM_HEADER.match(head))


def _not_yttm(source: str, why: str) -> ValueError:
    return ValueError(f"{source} is not a valid youtokentome BPE model ({why}); {_YTTM_EXPECTED}")


def _parse_yttm_model(text: str, source: str):
    """Parse the text of a YTTM model file into (char2id, rules, (unk, pad, bos, eos))."""

    def bad(why: str) -> ValueError:
        return _not_yttm(source, why)

    fields = text.split()
    for field in fields:
        if not _YTTM_NUMBER.fullmatch(field):
            raise bad(f"found {_shorten(field, 20)!r} where a number was expected")
    nums = [int(f) for f in fields]
    if len(nums) < 2:
        raise bad("the 'N M' header is missing")
    n_chars, n_rules = nums[0], nums[1]
    if n_chars < 1 or n_rules < 0:
        raise bad(f"bad header '{n_chars} {n_rules}'")
    expected = 2 + 2 * n_chars + 3 * n_rules + 4
    if len(nums) != expected:
        raise bad(f"the header '{n_chars} {n_rules}' needs {expected} numbers, the file has {len(nums)}")

    char2id: dict[str, int] = {}
    pos = 2
    for _ in range(n_chars):
        cp, idx = nums[pos], nums[pos + 1]
        pos += 2
        if not (0 <= cp < 0x110000) or 0xD800 <= cp <= 0xDFFF:
            raise bad(f"{cp} is not a unicode code point")
        if chr(cp) in char2id:
            raise bad(f"character {cp} is listed twice")
        char2id[chr(cp)] = idx
    rules = [tuple(nums[pos + 3 * i : pos + 3 * i + 3]) for i in range(n_rules)]
    specials = tuple(nums[-4:])  # unk, pad, bos, eos (the order YTTM writes them)

    unk_id = specials[0]
    vocab_size = n_chars + n_rules + sum(1 for s in specials if s != -1)
    if YTTM_SPACE not in char2id:
        raise bad("the word-start character '▁' (9601) is missing")
    if unk_id < 0:
        raise bad(f"unk_id is {unk_id}")
    taken = [s for s in specials if s != -1]
    known: set[int] = set()
    for idx in list(char2id.values()) + taken:
        if idx in known:
            raise bad(f"id {idx} is used twice")
        known.add(idx)
    for x, y, z in rules:
        if x not in known or y not in known or z in known:
            raise bad(f"merge rule '{x} {y} {z}' does not fit the ids defined before it")
        known.add(z)
    if known != set(range(vocab_size)):
        raise bad(f"the ids are not exactly 0..{vocab_size - 1}")
    return char2id, rules, specials


class YttmTokenizer(BaseTokenizer):
    """A youtokentome (YTTM) BPE model, read and applied in pure Python (youtokentome is not needed).

    Encodes and decodes exactly like `youtokentome.BPE` 1.0.6 with its defaults (ids, no BPE dropout,
    no bos / eos), which DALLE-pytorch's `YttmTokenizer` used:

    - text is split into words on ASCII whitespace (space, \\t, \\n, \\v, \\f, \\r) and on "▁"; every
      word starts with the "▁" marker, so leading, trailing and repeated spaces leave no trace;
    - a run of characters missing from the model's alphabet becomes one `unk_id` token;
    - merges are applied lowest rule index first (leftmost occurrence first);
    - `decode` writes "▁" as a space (dropping the first one), and unk / pad / bos / eos as
      `<UNK>` / `<PAD>` / `<BOS>` / `<EOS>`; like DALLE-pytorch it drops 0 and `pad_tokens`.

    Args:
        bpe_path: the model file written by `youtokentome.BPE.train` (e.g. `model.bpe`).
        model_str: the text of such a file instead of a path (see `from_str`).
    """

    def __init__(self, bpe_path: Union[str, Path, None] = None, *, model_str: str | None = None):
        if exists(model_str):
            self.bpe_path = str(bpe_path) if exists(bpe_path) else None
            source = "the YTTM model text"
        else:
            if not exists(bpe_path):
                raise ValueError("YttmTokenizer needs the path of a youtokentome BPE model file")
            path = Path(bpe_path)
            if not path.exists():
                raise FileNotFoundError(f"youtokentome BPE model file {str(path)!r} does not exist")
            raw = path.read_bytes()
            source = repr(str(path))
            try:
                model_str = raw.decode("ascii")
            except UnicodeDecodeError:
                why = "it is gzip-compressed" if raw[:2] == b"\x1f\x8b" else "it is not plain ASCII text"
                raise _not_yttm(source, why) from None
            self.bpe_path = str(path)

        self.model_str = model_str
        char2id, rules, specials = _parse_yttm_model(model_str, source)
        self.unk_id, self.pad_id, self.bos_id, self.eos_id = specials
        self.char2id = char2id
        self.space_id = char2id[YTTM_SPACE]
        self.vocab_size = len(char2id) + len(rules) + sum(1 for s in specials if s != -1)
        # (left id, right id) -> (rule index = priority, merged id); a later duplicate rule wins, like YTTM
        self.merges: dict[tuple[int, int], tuple[int, int]] = {(x, y): (i, z) for i, (x, y, z) in enumerate(rules)}

        pieces: dict[int, str] = {idx: ch for ch, idx in char2id.items()}
        for x, y, z in rules:
            pieces[z] = pieces[x] + pieces[y]
        self.pieces = pieces  # id -> subword with "▁" (not for special ids)
        self.special_pieces = {
            idx: name for idx, name in reversed(list(zip(specials, _YTTM_SPECIAL_PIECES))) if idx != -1
        }  # reversed: where ids coincide, unk wins (YTTM checks unk first)
        self._cache: dict[str, tuple[int, ...]] = {}

    @classmethod
    def from_str(cls, model_str: str, path: str | None = None) -> "YttmTokenizer":
        """Build from the text of a YTTM model file (as stored by `describe()`)."""
        return cls(path, model_str=model_str)

    def _encode_word(self, word: str) -> tuple[int, ...]:
        """Ids of one word (no spaces in it): "▁" + its characters, merged by rule priority."""
        # symbols: model ids, or negative placeholders, one per run of unknown characters
        symbols: list[int] = [self.space_id]
        unknown = 0
        for ch in word:
            idx = self.char2id.get(ch)
            if idx is not None:
                symbols.append(idx)
            elif symbols[-1] >= 0 or len(symbols) == 1:
                unknown -= 1
                symbols.append(unknown)
            # else: this character extends the run of unknown characters just seen

        n = len(symbols)
        nxt = list(range(1, n)) + [-1]
        prv = list(range(-1, n - 1))
        alive = [True] * n
        merges = self.merges
        heap: list[tuple[int, int]] = []  # (rule index, left position)

        def push(pos: int) -> None:
            right = nxt[pos]
            if right != -1:
                rule = merges.get((symbols[pos], symbols[right]))
                if rule is not None:
                    heap.append((rule[0], pos))

        for pos in range(n - 1):
            push(pos)
        heapq.heapify(heap)
        while heap:
            rule_index, left = heapq.heappop(heap)
            right = nxt[left]
            if not alive[left] or right == -1:
                continue
            rule = merges.get((symbols[left], symbols[right]))
            if rule is None or rule[0] != rule_index:
                continue  # stale: this pair has changed since it was queued
            symbols[left] = rule[1]
            alive[right] = False
            after = nxt[right]
            nxt[left] = after
            if after != -1:
                prv[after] = left
            before = prv[left]
            if before != -1:
                rule_before = merges.get((symbols[before], symbols[left]))
                if rule_before is not None:
                    heapq.heappush(heap, (rule_before[0], before))
            if after != -1:
                rule_after = merges.get((symbols[left], symbols[after]))
                if rule_after is not None:
                    heapq.heappush(heap, (rule_after[0], left))

        out = [symbols[pos] for pos in range(n) if alive[pos]]
        # YTTM quirk: its merge list marks dead nodes with id 0, so a word's leading tokens whose id is 0
        # (possible only in models trained with pad_id=-1) are left out of the output.
        start = 0
        while start < len(out) and out[start] == 0:
            start += 1
        return tuple(self.unk_id if t < 0 else t for t in out[start:])

    def encode(self, text: str) -> list[int]:
        """Token ids of `text` (no padding, no bos / eos), as `youtokentome.BPE.encode` returns them."""
        text.encode("utf-8")  # like youtokentome: lone surrogates raise UnicodeEncodeError
        ids: list[int] = []
        cache = self._cache
        for word in _YTTM_WORD_SPLIT.split(text):
            if not word:
                continue
            word_ids = cache.get(word)
            if word_ids is None:
                word_ids = self._encode_word(word)
                if len(cache) < 100_000:
                    cache[word] = word_ids
            ids.extend(word_ids)
        return ids

    def id_to_subword(self, idx: int) -> str:
        """The subword of an id, with its "▁", or `<UNK>` / `<PAD>` / `<BOS>` / `<EOS>` for special ids."""
        idx = int(idx)
        if not 0 <= idx < self.vocab_size:
            raise ValueError(f"id must be in the range [0, vocab_size - 1] = [0, {self.vocab_size - 1}], got {idx}")
        if idx in self.special_pieces:
            return self.special_pieces[idx]
        return self.pieces[idx]

    def vocab(self) -> list[str]:
        """All subwords, indexed by id (like `youtokentome.BPE.vocab()`)."""
        return [self.id_to_subword(i) for i in range(self.vocab_size)]

    def _decode_ids(self, ids: list[int]) -> str:
        parts = []
        for idx in ids:
            piece = self.id_to_subword(idx)
            if idx not in self.special_pieces and piece.startswith(YTTM_SPACE):
                piece = " " + piece[1:]
            parts.append(piece)
        text = "".join(parts)
        return text[1:] if parts and parts[0].startswith(" ") else text

    def describe(self) -> dict:
        """{"type": "yttm", "path": <original path or None>, "model": <the model file's text>}."""
        return {"type": "yttm", "path": self.bpe_path, "model": self.model_str}


# BERT WordPiece (bert-base-chinese), DALLE-pytorch's --chinese

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
            raise ValueError(f"{source}: token {_shorten(token, 20)!r} is on lines {seen[token] + 1} and {i + 1}")
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
        if exists(vocab_str):
            if not isinstance(vocab_str, str):
                raise TypeError(f"vocab_str must be a str, got {type(vocab_str).__name__}")
            self.vocab_path = str(vocab_path) if exists(vocab_path) else None
            source = "the stored vocabulary"
        else:
            if not exists(vocab_path):
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


# factory helpers


@lru_cache(maxsize=1)
def get_default_tokenizer() -> SimpleTokenizer:
    """The default CLIP `SimpleTokenizer`, built on first use and cached."""
    return SimpleTokenizer()


def tokenizer_from_file(path: Union[str, Path, None], *, hug: bool = False, chinese: bool = False) -> BaseTokenizer:
    """The tokenizer a `--bpe_path` file holds (the one rule every script uses).

    `hug=True` or a `*.json` file: `HugTokenizer`; a youtokentome model (`is_yttm_model`, by content,
    which is what DALLE-pytorch's `--bpe_path` without `--hug` means): `YttmTokenizer`; anything else:
    CLIP BPE merges for `SimpleTokenizer`.

    `chinese=True` (DALLE-pytorch's `--chinese`): `path` is bert-base-chinese's `vocab.txt` for a
    `ChineseTokenizer`; without a path, ValueError saying where that file comes from. As in
    DALLE-pytorch, where `--bpe_path` wins over `--chinese`, a tokenizers JSON (or `hug=True`) or a
    youtokentome model still gives `HugTokenizer` / `YttmTokenizer` (with a warning that `chinese`
    is ignored).

    Raises FileNotFoundError for a missing file and ValueError for a file that is not what it claims to be.
    """
    if path is None:
        if chinese:
            raise ValueError(CHINESE_VOCAB_HELP)
        raise ValueError("tokenizer_from_file needs the path of a tokenizer file")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"tokenizer file {str(path)!r} does not exist")
    if hug or path.suffix.lower() == ".json":
        kind = HugTokenizer
    elif is_yttm_model(path):
        kind = YttmTokenizer
    elif chinese:
        return ChineseTokenizer(path)
    else:
        return SimpleTokenizer(path)
    if chinese:
        warnings.warn(f"chinese=True (--chinese) is ignored: {str(path)!r} is a {kind.__name__} file, which takes "
                      "precedence as in DALLE-pytorch; pass bert-base-chinese's vocab.txt for the Chinese tokenizer",
                      stacklevel=2)
    return kind(path)


def tokenizer_from_description(d: dict) -> BaseTokenizer:
    """Rebuild a tokenizer from the dict produced by its `describe()` method."""
    if isinstance(d, str):
        d = json.loads(d)
    if not isinstance(d, dict) or "type" not in d:
        raise ValueError(f"a tokenizer description must be a dict with a 'type' key, got {d!r}")

    kind = d["type"]
    if kind == "simple":
        bpe_path = d.get("bpe_path")
        return SimpleTokenizer(bpe_path) if exists(bpe_path) else get_default_tokenizer()
    if kind == "hug":
        if exists(d.get("json")):
            return HugTokenizer.from_str(d["json"], path=d.get("path"))
        if exists(d.get("path")):
            return HugTokenizer(d["path"])
        raise ValueError("a 'hug' tokenizer description needs a 'json' or a 'path' entry")
    if kind == "yttm":
        if exists(d.get("model")):
            return YttmTokenizer.from_str(d["model"], path=d.get("path"))
        if exists(d.get("path")):
            return YttmTokenizer(d["path"])
        raise ValueError("a 'yttm' tokenizer description needs a 'model' or a 'path' entry")
    if kind == "chinese":
        # only the stored vocabulary: a path stored in a file is never followed
        if not isinstance(d.get("vocab"), str):
            raise ValueError("a 'chinese' tokenizer description needs its 'vocab' text")
        return ChineseTokenizer.from_str(d["vocab"], path=d.get("path"))
    raise ValueError(f"unknown tokenizer type {kind!r}; expected 'simple', 'hug', 'yttm' or 'chinese'")


def tokenizer_for_flags(bpe_path: Union[str, Path, None] = None, *, hug: bool = False,
                        stored: BaseTokenizer | None = None) -> BaseTokenizer:
    """The tokenizer the scripts' `--bpe_path` / `--hug` flags select (one rule for every script).

    `--bpe_path` given: the tokenizer that file holds (`tokenizer_from_file`); otherwise the
    checkpoint's `stored` tokenizer, else the default CLIP BPE.  Raises ValueError (naming the
    flag) for `--hug` without `--bpe_path` and for a missing, unreadable or invalid file.
    """
    if bpe_path is None:
        if hug:
            raise ValueError("--hug needs --bpe_path (the tokenizers JSON file)")
        return stored if stored is not None else get_default_tokenizer()
    path = Path(bpe_path)
    if not path.exists():
        raise ValueError(f"--bpe_path {str(bpe_path)!r} does not exist")
    if path.is_dir():
        raise ValueError(f"--bpe_path {str(bpe_path)!r} is a directory; give the tokenizer file")
    try:
        return tokenizer_from_file(path, hug=hug)
    except (ValueError, OSError) as e:
        raise ValueError(f"--bpe_path: {e}") from None
