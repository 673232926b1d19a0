"""DALLE-pytorch's module path for the tokenizers (`from dalle_pytorch.tokenizer import ...`): the
names of `dalle_pytorch.text.factory`, where the tokenizers and the rules that choose them live, and
DALLE-pytorch's module-level `tokenizer` (the default CLIP `SimpleTokenizer`, built at its first use,
not at import: reading the vocabulary is a file read) and `default_bpe()`."""
from importlib import resources

from dalle_pytorch.text.factory import *  # noqa: F401,F403
from dalle_pytorch.text.factory import __all__ as _factory_names
from dalle_pytorch.text.factory import get_default_tokenizer

__all__ = [*_factory_names, "tokenizer", "default_bpe"]


def default_bpe() -> str:
    """The path of the packaged CLIP BPE vocabulary (gzipped; every tokenizer here reads it as it is)."""
    return str(resources.files("dalle_pytorch").joinpath("data", "bpe_simple_vocab_16e6.txt.gz"))


def __getattr__(name: str):
    if name == "tokenizer":  # DALLE-pytorch's `tokenizer = SimpleTokenizer()`, made on first use and shared
        return get_default_tokenizer()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
