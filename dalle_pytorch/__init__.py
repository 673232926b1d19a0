from dalle_pytorch.version import __version__
