"""`SimpleTokenizer`: OpenAI CLIP's byte-level BPE (vocab 49408), the default tokenizer; its merges
ship as package data (`dalle_pytorch/data/bpe_simple_vocab_16e6.txt.gz`, read when a tokenizer is built)."""
from __future__ import annotations

import gzip
import html
import io
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Iterable, Union

from dalle_pytorch.formats.files import read_bytes
from dalle_pytorch.text.base import MAX_TOKENIZER_BYTES, BaseTokenizer, TokenIds


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


def _merges_text(raw: bytes, source: str) -> str:
    """The text of a merges file's bytes (gzip or plain), decompressing at most MAX_TOKENIZER_BYTES."""
    if raw[:2] == b"\x1f\x8b":  # gzip magic
        try:
            with gzip.GzipFile(fileobj=io.BytesIO(raw)) as f:
                raw = f.read(MAX_TOKENIZER_BYTES + 1)
        except (OSError, EOFError) as e:
            raise ValueError(f"{source} is not a valid gzip file ({e})") from None
        if len(raw) > MAX_TOKENIZER_BYTES:
            raise ValueError(f"{source} decompresses to more than {MAX_TOKENIZER_BYTES:,} bytes; refusing it")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{source} is not UTF-8 text (CLIP BPE merges were expected)") from None


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

    def __init__(self, bpe_path: Union[str, Path, None] = None, *, merges_str: str | None = None):
        import regex

        self.bpe_path = str(bpe_path) if bpe_path is not None else None
        if merges_str is None and bpe_path is not None:
            merges_str = _merges_text(read_bytes(bpe_path, "BPE merges file", MAX_TOKENIZER_BYTES),
                                      repr(str(bpe_path)))
        #: the merges of a non-default vocabulary (stored whole by `describe`); None for CLIP's own
        self.merges_str = merges_str
        if merges_str is None:
            raw = resources.files("dalle_pytorch").joinpath("data", "bpe_simple_vocab_16e6.txt.gz").read_bytes()
            merges_str = _merges_text(raw, "the packaged CLIP merges")
        self.byte_encoder = bytes_to_unicode()
        self.byte_decoder = {v: k for k, v in self.byte_encoder.items()}

        lines = merges_str.split("\n")
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

    @classmethod
    def from_str(cls, merges_str: str, path: str | None = None) -> "SimpleTokenizer":
        """Build from the text of a merges file (as stored by `describe()`)."""
        return cls(path, merges_str=merges_str)

    def describe(self) -> dict:
        """{"type": "simple"} for CLIP's own merges; with other merges also their text ("merges") and
        the file they came from ("path", informative only: it is never read back)."""
        d: dict = {"type": "simple"}
        if self.merges_str is not None:
            d.update(path=self.bpe_path, merges=self.merges_str)
        return d
