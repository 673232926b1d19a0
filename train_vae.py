"""Train a DiscreteVAE on a folder of images: DALLE-pytorch's command line, `python train_vae.py ...`, the same as `dalle-train-vae`
(dalle_pytorch/cli/train_vae.py)."""
import sys

from dalle_pytorch.cli.train_vae import cli

if __name__ == "__main__":
    sys.exit(cli())
