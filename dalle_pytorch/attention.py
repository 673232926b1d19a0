"""DALLE-pytorch's module path `dalle_pytorch.attention` (its names, over this package: dalle_pytorch.compat.attention)."""
from dalle_pytorch.compat.attention import *  # noqa: F401,F403
from dalle_pytorch.compat.attention import __all__  # noqa: F401
