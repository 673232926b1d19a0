"""Train a DALLE on captioned images: DALLE-pytorch's command line, `python train_dalle.py ...`, the same as `dalle-train`
(dalle_pytorch/cli/train_dalle.py)."""
import sys

from dalle_pytorch.cli.train_dalle import cli

if __name__ == "__main__":
    sys.exit(cli())
