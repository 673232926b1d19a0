"""DALLE-pytorch's module path for the tokenizers (`from dalle_pytorch.tokenizer import ...`): the
names of `dalle_pytorch.text.factory`, where the tokenizers and the rules that choose them live."""
from dalle_pytorch.text.factory import *  # noqa: F401,F403
from dalle_pytorch.text.factory import __all__  # noqa: F401
