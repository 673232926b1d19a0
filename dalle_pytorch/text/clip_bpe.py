"""`SimpleTokenizer`: OpenAI CLIP's byte-level BPE (vocab 49408), the default tokenizer; its merges
ship as package data (`dalle_pytorch/data/bpe_simple_vocab_16e6.txt.gz`, read when a tokenizer is built)."""
from __future__ import annotations

import gzip
import html
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Iterable, Union

from dalle_pytorch.text.base import BaseTokenizer, TokenIds


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
    if bpe_path is not None:
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

        self.bpe_path = str(bpe_path) if bpe_path is not None else None
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
        if self.bpe_path is not None:
            d["bpe_path"] = self.bpe_path
        return d
