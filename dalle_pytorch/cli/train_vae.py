"""Train a DiscreteVAE on a folder of images.

    python train_vae.py --image_folder ./images --image_size 128
    torchrun --nproc_per_node 8 train_vae.py --image_folder ./images

Flags follow DALLE-pytorch's train_vae.py; see docs/training.md. The training loop, distributed
setup, checkpoints and logging live in dalle_pytorch/train/ (shared with train_dalle.py); this
script parses its flags into a TrainConfig (cli/train_flags.config_from_flags) and runs its task,
dalle_pytorch.train.tasks.vae_task.
"""
from __future__ import annotations

import argparse
import sys

from dalle_pytorch.cli.train_flags import add_common_args, finish_flags, run_cli, train_from_flags
from dalle_pytorch.train.config import VaeConfig
from dalle_pytorch.train.tasks import vae_task


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Train a discrete VAE (image tokenizer) for DALL-E.",
                                     allow_abbrev=False)
    parser.add_argument("--image_folder", required=True,
                        help="folder of images, searched recursively (caption files are ignored)")
    parser.add_argument("--image_size", type=int, default=128, help="image side in pixels, a power of 2 (default 128)")
    parser.add_argument("--transparent", action="store_true", help="train on RGBA images (4 channels)")

    vae = parser.add_argument_group("VAE")
    vae.add_argument("--num_tokens", type=int, default=8192, help="codebook size (default 8192)")
    vae.add_argument("--num_layers", type=int, default=3,
                     help="down-sampling layers: codes grid = image_size / 2**num_layers (default 3)")
    vae.add_argument("--num_resnet_blocks", type=int, default=2, help="resnet blocks (default 2)")
    vae.add_argument("--smooth_l1_loss", action="store_true", help="smooth L1 instead of MSE reconstruction loss")
    vae.add_argument("--emb_dim", type=int, default=512, help="codebook vector size (codebook_dim) (default 512)")
    vae.add_argument("--hidden_dim", type=int, default=256, help="hidden channels (default 256)")
    vae.add_argument("--kl_loss_weight", type=float, default=0.0, help="KL divergence loss weight (default 0)")
    vae.add_argument("--straight_through", action="store_true", help="straight-through (hard) gumbel-softmax")
    vae.add_argument("--reinmax", action="store_true", help="ReinMax gradient estimator (hard samples)")
    vae.add_argument("--starting_temp", type=float, default=1.0, help="initial gumbel temperature (default 1.0)")
    vae.add_argument("--temp_min", type=float, default=0.5, help="lowest temperature (default 0.5)")
    vae.add_argument("--anneal_rate", type=float, default=1e-6,
                     help="DALLE-pytorch's annealing: after the first step of every epoch and every 100th step of "
                          "it, temperature = max(temperature * exp(-anneal_rate * step), temp_min) (default 1e-6)")
    vae.add_argument("--num_images_save", type=int, default=4,
                     help="images in each reconstruction grid (every --sample_every steps) (default 4)")

    add_common_args(parser, name="vae", learning_rate=1e-3, batch_size=8, clip_grad_norm=0.0,
                             lr_schedule="exponential", wandb_project="dalle_train_vae")
    return finish_flags(parser.parse_args(argv))


def main(args: argparse.Namespace) -> dict:
    """Train as the parsed flags say (`config_from_flags`); returns the run summary. Errors name the flags."""
    return train_from_flags(args, VaeConfig, vae_task)


def cli(argv=None) -> int:
    """The command line: parse `argv` (default sys.argv), train, map errors to one line and an exit status."""
    return run_cli(main, lambda: parse_args(argv))


if __name__ == "__main__":
    sys.exit(cli())
