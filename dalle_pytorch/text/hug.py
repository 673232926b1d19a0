"""`HugTokenizer`: a HuggingFace `tokenizers` JSON file (DALLE-pytorch's `--hug`)."""
from __future__ import annotations

from pathlib import Path
from typing import Union

from dalle_pytorch.formats.files import read_bytes
from dalle_pytorch.text.base import MAX_TOKENIZER_BYTES, BaseTokenizer


class HugTokenizer(BaseTokenizer):
    """Wraps a HuggingFace `tokenizers` JSON file.

    Like DALLE-pytorch, the tokenizer's post-processor is replaced by a plain ByteLevel one, so no
    template special tokens are added by `encode`.

    Args:
        bpe_path: path to a `tokenizer.json` saved by the `tokenizers` library.
    """

    def __init__(self, bpe_path: Union[str, Path, None] = None, *, json_str: str | None = None):
        if json_str is not None:
            self.bpe_path = str(bpe_path) if bpe_path is not None else None
        else:
            if bpe_path is None:
                raise ValueError("HugTokenizer needs the path of a tokenizers JSON file")
            path = Path(bpe_path)
            raw = read_bytes(path, "tokenizer JSON file", MAX_TOKENIZER_BYTES)
            try:
                json_str = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise ValueError(f"tokenizer JSON file {str(path)!r} is not UTF-8 text") from None
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
