"""DALLE-pytorch's module path `dalle_pytorch.dalle_pytorch` (its names, over this package: dalle_pytorch.compat.dalle_pytorch)."""
from dalle_pytorch.compat.dalle_pytorch import *  # noqa: F401,F403
from dalle_pytorch.compat.dalle_pytorch import __all__  # noqa: F401
