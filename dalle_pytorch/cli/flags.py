"""What every entry point shares: flag names for the library's settings, flags more than one tool
takes, and the program name (how the entry points show messages: `messages.py`).

The library names a setting in its messages with `errors.setting(name)`; the entry points run inside
`setting_names(FLAGS)`, so the same message says `--seed must be ...` here and `seed must be ...` to
a Python caller or an HTTP client.  A setting is the flag of its own name (`--seed`) except for
the aliases below.
"""
from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from typing import Iterator, Mapping, Optional

from dalle_pytorch.errors import setting_names
from dalle_pytorch.text.base import BaseTokenizer
from dalle_pytorch.text.factory import select_tokenizer

__all__ = ["FLAG_ALIASES", "flag", "flag_names", "add_vae_flags", "tokenizer_for_flags", "prog_name"]

#: settings whose flag is not `--<name>` (DALLE-pytorch's flag words for our settings)
FLAG_ALIASES = {"filter_thres": "--top_k"}


def flag(name: str, aliases: Mapping[str, str] = FLAG_ALIASES) -> str:
    """The command-line flag of the setting `name`."""
    return aliases.get(name, "--" + name)


@contextmanager
def flag_names(aliases: Optional[Mapping[str, str]] = None) -> Iterator[None]:
    """Within the block, library messages name settings by their flags (`setting_names`)."""
    table = FLAG_ALIASES if aliases is None else {**FLAG_ALIASES, **aliases}
    with setting_names(lambda name: flag(name, table)):
        yield


def add_vae_flags(group, taming_help: str) -> None:
    """DALLE-pytorch's pretrained-VAE flags (`checkpoint.pretrained.VAE_FLAGS`) on an argparse parser or group;
    `taming_help`: what --taming means to that script."""
    group.add_argument("--taming", action="store_true", help=taming_help)
    group.add_argument("--vqgan_model_path", default=None,
                       help="the VQGAN weights (a taming / Lightning .ckpt); implies --taming")
    group.add_argument("--vqgan_config_path", default=None, help="the VQGAN config (a taming .yaml); implies --taming")
    group.add_argument("--openai_encoder_path", default=None,
                       help="OpenAI's dVAE encoder.pkl, for a model over OpenAIDiscreteVAE (default ~/.cache/dalle)")
    group.add_argument("--openai_decoder_path", default=None, help="OpenAI's dVAE decoder.pkl (default ~/.cache/dalle)")


def tokenizer_for_flags(bpe_path=None, *, hug: bool = False, chinese: bool = False,
                        stored: Optional[BaseTokenizer] = None, model_text_tokens: Optional[int] = None) -> BaseTokenizer:
    """The tokenizer `--bpe_path` / `--hug` / `--chinese` select (`text.factory.select_tokenizer`), its errors and
    warnings naming the flags."""
    with flag_names():
        return select_tokenizer(bpe_path, hug=hug, chinese=chinese, stored=stored, model_text_tokens=model_text_tokens)


def prog_name(default: str) -> str:
    """The program name for usage lines: how it was started (dalle-generate, generate.py), or `default`
    for `python -m` (whose argv[0] is a module file)."""
    name = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    return default if name in ("", "__main__.py", "-c", "-m") else name
