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
- `YttmTokenizer`: a stub; youtokentome is not supported (convert the model to a `tokenizers` JSON).

Nothing is read from disk at import time: the BPE vocabulary is loaded when a tokenizer is built.
"""

from __future__ import annotations

import gzip
import html
import json
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
    "get_default_tokenizer",
    "tokenizer_from_description",
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


# youtokentome (unsupported)


class YttmTokenizer:
    """Placeholder for DALLE-pytorch's youtokentome tokenizer, which is not supported here.

    youtokentome does not build on current Python versions. Convert the YTTM model to a HuggingFace
    `tokenizers` JSON file and use `HugTokenizer` instead.
    """

    def __init__(self, bpe_path: Union[str, Path, None] = None, *args, **kwargs):
        raise ImportError(
            "YttmTokenizer is unsupported: youtokentome cannot be installed for this package. "
            "Convert your YTTM BPE model to a HuggingFace `tokenizers` JSON file and load it with "
            f"HugTokenizer instead (got bpe_path={bpe_path!r})."
        )


# factory helpers


@lru_cache(maxsize=1)
def get_default_tokenizer() -> SimpleTokenizer:
    """The default CLIP `SimpleTokenizer`, built on first use and cached."""
    return SimpleTokenizer()


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
        return YttmTokenizer(d.get("path"))
    raise ValueError(f"unknown tokenizer type {kind!r}; expected 'simple' or 'hug'")
