"""DALLE-pytorch's module path `dalle_pytorch.reversible` (its names, over this package: dalle_pytorch.compat.reversible)."""
from dalle_pytorch.compat.reversible import *  # noqa: F401,F403
from dalle_pytorch.compat.reversible import __all__  # noqa: F401
