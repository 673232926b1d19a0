"""Train DALL-E (a transformer over caption tokens and a frozen VAE's image codes).

    python train_dalle.py --vae_path runs/vae/vae.safetensors --image_text_folder ./data
    torchrun --nproc_per_node 8 train_dalle.py --vae_path vae.safetensors --image_text_folder ./data

Flags follow DALLE-pytorch's train_dalle.py; see docs/training.md. The training loop, distributed
setup, checkpoints and logging live in dalle_pytorch/train/ (shared with train_vae.py); this
script parses its flags into a TrainConfig (cli/train_flags.config_from_flags) and runs its task,
dalle_pytorch.train.tasks.dalle_task.
"""
from __future__ import annotations

import argparse
import sys

from dalle_pytorch.cli.flags import add_vae_flags
from dalle_pytorch.cli.train_flags import add_common_args, finish_flags, run_cli, train_from_flags
from dalle_pytorch.train.config import DalleConfig
from dalle_pytorch.train.tasks import dalle_task


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Train DALL-E on captioned images.", allow_abbrev=False)
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--vae_path", help="trained DiscreteVAE (ours or a DALLE-pytorch vae.pt) to build a new DALLE on")
    source.add_argument("--dalle_path", help="DALLE to continue training from: a DALLE-pytorch dalle.pt (weights, "
                        "optimizer, --lr_decay state and epoch, as DALLE-pytorch resumes), one of ours (weights; this "
                        "run's newest model continues the run exactly, as --resume)")
    pretrained = parser.add_argument_group(
        "pretrained VAEs (without --vae_path, as DALLE-pytorch: the VQGAN with --taming, else OpenAI's dVAE; their "
        "files from these flags or ~/.cache/dalle, never downloaded)")
    add_vae_flags(pretrained, "taming-transformers' VQGAN as the VAE")

    data = parser.add_argument_group("data")
    data.add_argument("--image_text_folder", default="",
                      help="folder of images with same-named .txt captions; with --wds: tar shards (dir, glob, URL)")
    data.add_argument("--codes", default=None,
                      help="train on codes pre-encoded by dalle-encode instead of images: its output folder (exact "
                           "resume), or its shards as a pattern / URL list with --codes_manifest (streamed); the VAE "
                           "(--vae_path etc., else the folder's copy) must be the one that made them")
    data.add_argument("--codes_manifest", default=None, help="the manifest.json of --codes given as shards")
    data.add_argument("--wds", default="", help="read webdataset shards; value: image and caption keys, e.g. jpg,txt")
    data.add_argument("--truncate_captions", action="store_true",
                      help="cut captions longer than --text_seq_len tokens (otherwise they raise)")
    data.add_argument("--resize_ratio", "--random_resize_crop_lower_ratio", dest="resize_ratio", type=float,
                      default=0.75, help="smallest image area fraction kept by the random crop (default 0.75)")
    data.add_argument("--transparent", action="store_true", help="RGBA images (needs a 4-channel VAE)")
    data.add_argument("--bpe_path", help="tokenizer file: a tokenizers JSON (with --hug, or *.json), a youtokentome "
                                         "BPE model (e.g. model.bpe, recognised by its content) or CLIP BPE merges")
    data.add_argument("--hug", action="store_true", help="--bpe_path is a HuggingFace tokenizers JSON file")
    data.add_argument("--chinese", action="store_true",
                      help="Chinese captions: --bpe_path is bert-base-chinese's vocab.txt (BERT WordPiece)")

    model = parser.add_argument_group("model (ignored with --dalle_path / --resume: the checkpoint's config is used)")
    model.add_argument("--dim", type=int, default=512, help="model dimension (default 512)")
    model.add_argument("--text_seq_len", type=int, default=256, help="caption length in tokens (default 256)")
    model.add_argument("--depth", type=int, default=2, help="transformer layers (default 2)")
    model.add_argument("--heads", type=int, default=8, help="attention heads (default 8)")
    model.add_argument("--dim_head", type=int, default=64, help="attention head dimension (default 64)")
    model.add_argument("--reversible", action="store_true", help="reversible layers (less activation memory)")
    model.add_argument("--loss_img_weight", type=int, default=7, help="image loss weight (default 7)")
    model.add_argument("--attn_types", default="full",
                       help="comma list cycled over the layers: full, axial_row, axial_col, conv_like, sparse "
                            "(default full)")
    model.add_argument("--shift_tokens", dest="shift_tokens", action="store_true", default=False,
                       help="token shift (default off, as in DALLE-pytorch's script)")
    model.add_argument("--no_shift_tokens", dest="shift_tokens", action="store_false", help=argparse.SUPPRESS)
    model.add_argument("--rotary_emb", dest="rotary_emb", action="store_true", default=False,
                       help="rotary position embeddings (default off, as in DALLE-pytorch's script: learned text "
                            "positions and axial image positions)")
    model.add_argument("--no_rotary_emb", dest="rotary_emb", action="store_false", help=argparse.SUPPRESS)
    model.add_argument("--shared_attn_ids", default=None, help="comma list of attention ids per layer (share weights)")
    model.add_argument("--shared_ff_ids", default=None, help="comma list of feed-forward ids per layer (share weights)")
    model.add_argument("--share_input_output_emb", action="store_true", help="tie token embeddings to the output layer")
    model.add_argument("--stable", "--stable_softmax", dest="stable", action="store_true",
                       help="numerically stable attention softmax / embedding gradient scaling")
    model.add_argument("--sandwich_norm", action="store_true", help="extra LayerNorm after each branch")
    model.add_argument("--attn_kernel", choices=("auto", "pattern", "masked"), default="auto",
                       help="how sparse patterns train: auto = the measured faster kernel per pattern, pattern = "
                            "the pattern's own kernel (less memory), masked = dense masked attention (default auto)")
    model.add_argument("--ff_dropout", type=float, default=0.0, help="feed-forward dropout (default 0)")
    model.add_argument("--attn_dropout", type=float, default=0.0, help="attention dropout (default 0)")
    model.add_argument("--null_cond_prob", type=float, default=0.0,
                       help="probability of dropping a caption (for classifier-free guidance) (default 0)")
    model.add_argument("--optimize_for_inference", action="store_true",
                       help="accepted for compatibility; has no effect on training (a note is printed)")

    samples = parser.add_argument_group("samples")
    samples.add_argument("--sample_caption", default=None,
                         help="caption of the sample grid written every --sample_every steps "
                              "(default: the first caption of the dataset)")
    samples.add_argument("--num_sample_images", type=int, default=4,
                         help="images in each sample grid; 0 disables samples (default 4)")
    samples.add_argument("--sample_filter_thres", type=float, default=0.9,
                         help="top-k filter for the samples, DALLE-pytorch's filter_thres: keep the top (1 - thres) "
                              "of the model's whole vocabulary (default 0.9)")

    parser.add_argument("--lr_decay", action="store_true",
                        help="DALLE-pytorch's ReduceLROnPlateau: halve the lr after 11 epochs without a 1e-4 relative "
                             "improvement of the last step's loss, then 10 epochs of cooldown; never below 1e-6")
    add_common_args(parser, name="dalle", learning_rate=3e-4, batch_size=4, clip_grad_norm=0.5,
                             lr_schedule="constant", wandb_project="dalle_train_transformer")
    parser.add_argument("--dalle_output_file_name", dest="name", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    return finish_flags(parser.parse_args(argv))


def main(args: argparse.Namespace) -> dict:
    """Train as the parsed flags say (`config_from_flags`); returns the run summary. Errors name the flags."""
    return train_from_flags(args, DalleConfig, dalle_task)


def cli(argv=None) -> int:
    """The command line: parse `argv` (default sys.argv), train, map errors to one line and an exit status."""
    return run_cli(main, lambda: parse_args(argv))


if __name__ == "__main__":
    sys.exit(cli())
