"""DALLE-pytorch's module path `dalle_pytorch.transformer` (its names, over this package: dalle_pytorch.compat.transformer)."""
from dalle_pytorch.compat.transformer import *  # noqa: F401,F403
from dalle_pytorch.compat.transformer import __all__  # noqa: F401
