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

import json
import warnings
from functools import lru_cache
from pathlib import Path
from typing import Union

from dalle_pytorch.errors import setting
from dalle_pytorch.formats.files import regular_file
from dalle_pytorch.text.base import BaseTokenizer
from dalle_pytorch.text.chinese import CHINESE_VOCAB_HELP, ChineseTokenizer
from dalle_pytorch.text.clip_bpe import SimpleTokenizer
from dalle_pytorch.text.hug import HugTokenizer
from dalle_pytorch.text.yttm import YttmTokenizer, is_yttm_model

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
    "select_tokenizer",
]

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
    path = regular_file(path, "tokenizer file")
    if hug or path.suffix.lower() == ".json":
        kind = HugTokenizer
    elif is_yttm_model(path):
        kind = YttmTokenizer
    elif chinese:
        return ChineseTokenizer(path)
    else:
        return SimpleTokenizer(path)
    if chinese:
        warnings.warn(f"chinese=True ({setting('chinese')}: the Chinese tokenizer) is ignored: {str(path)!r} is a "
                      f"{kind.__name__} file, which takes "
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
    # a description carries the tokenizer's content; a file path stored in a checkpoint is never followed
    content = {"simple": "merges", "hug": "json", "yttm": "model", "chinese": "vocab"}.get(kind)
    if content is not None and d.get(content) is None and (d.get("path") or d.get("bpe_path")):
        raise ValueError(f"a {kind!r} tokenizer description needs its {content!r} text: this one names a file "
                         f"({d.get('path') or d.get('bpe_path')!r}) instead, and files named inside a checkpoint are "
                         f"never read. Give the tokenizer file with {setting('bpe_path')}")
    if content is not None and d.get(content) is not None and not isinstance(d[content], str):
        raise ValueError(f"the stored {kind!r} tokenizer's {content!r} must be text")
    if kind == "simple":
        return SimpleTokenizer.from_str(d["merges"], path=d.get("path")) if d.get("merges") else get_default_tokenizer()
    if kind == "hug":
        if d.get("json") is None:
            raise ValueError("a 'hug' tokenizer description needs its 'json' text")
        return HugTokenizer.from_str(d["json"], path=d.get("path"))
    if kind == "yttm":
        if d.get("model") is None:
            raise ValueError("a 'yttm' tokenizer description needs its 'model' text")
        return YttmTokenizer.from_str(d["model"], path=d.get("path"))
    if kind == "chinese":
        if not isinstance(d.get("vocab"), str):
            raise ValueError("a 'chinese' tokenizer description needs its 'vocab' text")
        return ChineseTokenizer.from_str(d["vocab"], path=d.get("path"))
    raise ValueError(f"unknown tokenizer type {kind!r}; expected 'simple', 'hug', 'yttm' or 'chinese'")


def select_tokenizer(bpe_path: Union[str, Path, None] = None, *, hug: bool = False, chinese: bool = False,
                        stored: BaseTokenizer | None = None, model_text_tokens: int | None = None) -> BaseTokenizer:
    """The tokenizer `bpe_path`, `hug` and `chinese` select (the one rule behind every script's `--bpe_path` /
    `--hug` / `--chinese`, `cli.flags.tokenizer_for_flags`, and `Pipeline.from_checkpoint`).

    - `--bpe_path` given: the tokenizer that file holds (`tokenizer_from_file`, `hug` and `chinese`
      passed on: with `--chinese` the file is bert-base-chinese's vocab.txt).
    - otherwise the checkpoint's `stored` tokenizer, the one the model was trained with; `--hug` /
      `--chinese` do not change it (a warning when it is of another kind).
    - otherwise (a new model, or a DALLE-pytorch file, which stores none) the default CLIP BPE, as
      in DALLE-pytorch. `--chinese` then needs the vocab.txt. `--hug` is ignored there too (with a
      warning), except when the model's `model_text_tokens` is not the CLIP vocabulary's size: then
      the model was trained with another tokenizer, the CLIP ids would be wrong, and it is an error.

    Raises ValueError (naming the setting: `errors.setting`) for those and for a missing, unreadable or
    invalid file.
    """
    if bpe_path is None:
        if stored is not None:
            flag = None
            if chinese and not isinstance(stored, ChineseTokenizer):
                flag = setting("chinese")
            elif hug and not isinstance(stored, HugTokenizer):
                flag = setting("hug")
            if flag is not None:
                warnings.warn(f"{flag} without {setting('bpe_path')} is ignored: the checkpoint stores the tokenizer "
                              f"the model was trained with ({type(stored).__name__}), which is used", stacklevel=2)
            return stored
        if chinese:
            raise ValueError(f"{setting('chinese')}: {CHINESE_VOCAB_HELP}")
        default = get_default_tokenizer()
        if hug:
            if model_text_tokens is not None and model_text_tokens != default.vocab_size:
                raise ValueError(f"{setting('hug')} needs {setting('bpe_path')} (the tokenizers JSON file): without it "
                                 "the CLIP tokenizer "
                                 f"({default.vocab_size} tokens) would be used, as in DALLE-pytorch, but this model "
                                 f"has {model_text_tokens} text tokens, so it was trained with another tokenizer")
            warnings.warn(f"{setting('hug')} without {setting('bpe_path')} is ignored, as in DALLE-pytorch: the default "
                          f"CLIP tokenizer is used (pass the tokenizers JSON with {setting('bpe_path')} for a HuggingFace "
                          "tokenizer)", stacklevel=2)
        return default
    try:
        path = regular_file(bpe_path, setting("bpe_path"))
    except OSError as e:
        raise ValueError(str(e)) from None
    try:
        return tokenizer_from_file(path, hug=hug, chinese=chinese)
    except (ValueError, OSError) as e:
        raise ValueError(f"{setting('bpe_path')}: {e}") from None
