"""Generate images from captions: DALLE-pytorch's command line, `python generate.py ...`, the same as `dalle-generate`
(dalle_pytorch/cli/generate.py)."""
import sys

from dalle_pytorch.cli.generate import cli

if __name__ == "__main__":
    sys.exit(cli())
