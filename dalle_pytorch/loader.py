"""DALLE-pytorch's module path `dalle_pytorch.loader` (its names, over this package: dalle_pytorch.compat.loader)."""
from dalle_pytorch.compat.loader import *  # noqa: F401,F403
from dalle_pytorch.compat.loader import __all__  # noqa: F401
