"""The interface every tokenizer offers (`BaseTokenizer`): tokenize / encode / decode / vocab_size /
describe.  Token id 0 is the padding id (DALLE-pytorch's convention)."""
from __future__ import annotations

from typing import Iterable, Sequence, Union

import torch
from torch import Tensor

TokenIds = Union[Sequence[int], Tensor]

#: the largest tokenizer file (or stored tokenizer content) read; real ones are a few MB at most
MAX_TOKENIZER_BYTES = 64 * 2**20

def shorten(text: str, max_chars: int = 60) -> str:
    text = " ".join(text.split())
    return text if len(text) <= max_chars else text[: max_chars - 3] + "..."


def to_id_list(tokens: TokenIds) -> list[int]:
    if torch.is_tensor(tokens):
        if tokens.ndim != 1:
            raise ValueError(f"decode expects a 1-d sequence of token ids, got a tensor of shape {tuple(tokens.shape)}")
        return tokens.tolist()
    return [int(t) for t in tokens]


# shared interface


class CaptionTooLongError(ValueError):
    """A caption with more tokens than fit; `hint` says what to do (callers without truncation replace it)."""

    def __init__(self, caption: str, tokens: int, context_length: int,
                 hint: str = "shorten it or pass truncate_text=True"):
        self.caption, self.tokens, self.context_length = caption, tokens, context_length
        super().__init__(f"caption {shorten(caption)!r} is {tokens} tokens long, longer than the context length "
                         f"{context_length}; {hint}")

    def with_hint(self, hint: str) -> "CaptionTooLongError":
        """The same error with another `hint` (e.g. "shorten it" where nothing truncates)."""
        return CaptionTooLongError(self.caption, self.tokens, self.context_length, hint)


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
        ids = [t for t in to_id_list(tokens) if t not in ignore]
        return self._decode_ids(ids)

    def tokenize(
        self,
        texts: Union[str, Sequence[str]],
        context_length: int = 256,
        truncate_text: bool = False,
    ) -> torch.LongTensor:
        """Tokenize captions into a zero-padded LongTensor of shape (b, context_length).

        A caption longer than `context_length` tokens is cut when `truncate_text` is set, and otherwise
        raises a `CaptionTooLongError` (a ValueError) naming the caption.
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
                    raise CaptionTooLongError(text, len(ids), context_length)
                ids = ids[:context_length]
            if len(ids) > 0:
                result[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        return result

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}(vocab_size={self.vocab_size})"
