"""DALLE-pytorch's module path `dalle_pytorch.vae` (its names, over this package: dalle_pytorch.compat.vae)."""
from dalle_pytorch.compat.vae import *  # noqa: F401,F403
from dalle_pytorch.compat.vae import __all__  # noqa: F401
