"""Encode a captioned-image dataset once, for `train_dalle.py --codes` (docs/training.md, "Encode once,
train on codes").

    dalle-encode --vae_path runs/vae/vae.safetensors --image_text_folder ./data --output_dir ./codes
    dalle-encode --taming --vqgan_model_path vqgan.ckpt --vqgan_config_path vqgan.yaml \\
        --wds jpg,txt --image_text_folder shards/ --output_dir ./codes
    torchrun --nproc_per_node 2 -m dalle_pytorch.cli.encode ...        (each process its own shards)

The VAE flags are train_dalle.py's (--vae_path, else --taming / --vqgan_* for taming's VQGAN, else OpenAI's
dVAE from --openai_*_path or ~/.cache/dalle), and so are the data flags. Run again after a kill: finished
shards are kept. The work is dalle_pytorch.train.encode.encode_dataset.
"""
from __future__ import annotations

import argparse
import os
import sys

from torch import nn

from dalle_pytorch.checkpoint.build import vae_class_name
from dalle_pytorch.checkpoint.ours import load_checkpoint
from dalle_pytorch.checkpoint.pretrained import VAE_FLAGS, asks_for_vqgan, vae_flags, vae_from_flags
from dalle_pytorch.cli.flags import add_vae_flags, flag_names, prog_name
from dalle_pytorch.cli.messages import flag_errors
from dalle_pytorch.cli.train_flags import non_negative_int, parse_wds, positive_int, run_cli
from dalle_pytorch.distributed import init_distributed
from dalle_pytorch.errors import TrainingError
from dalle_pytorch.train.encode import EncodeConfig, encode_dataset

__all__ = ["parse_args", "main", "cli", "vae_of_flags"]


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=prog_name("dalle-encode"), allow_abbrev=False,
                                     description="Encode captioned images once into code shards for "
                                                 "train_dalle.py --codes.")
    parser.add_argument("--vae_path", help="a trained DiscreteVAE (ours or a DALLE-pytorch vae.pt), or a DALLE "
                                           "whose VAE to use")
    pretrained = parser.add_argument_group(
        "pretrained VAEs (without --vae_path, as train_dalle.py: the VQGAN with --taming, else OpenAI's dVAE; their "
        "files from these flags or ~/.cache/dalle, never downloaded)")
    add_vae_flags(pretrained, "taming-transformers' VQGAN as the VAE")
    data = parser.add_argument_group("data (as train_dalle.py)")
    data.add_argument("--image_text_folder", required=True,
                      help="folder of images with same-named .txt captions; with --wds: tar shards (dir, glob, URL)")
    data.add_argument("--wds", default="", help="read webdataset shards; value: image and caption keys, e.g. jpg,txt")
    data.add_argument("--resize_ratio", "--random_resize_crop_lower_ratio", dest="resize_ratio", type=float,
                      default=1.0, help="smallest image area fraction of a crop (default 1: the deterministic crop "
                                        "train_dalle.py takes at --resize_ratio 1; below 1 with --crops: random crops)")
    data.add_argument("--transparent", action="store_true", help="RGBA images (needs a 4-channel VAE)")
    out = parser.add_argument_group("output")
    out.add_argument("--output_dir", required=True, help="the codes folder (an unfinished one resumes)")
    out.add_argument("--crops", type=positive_int, default=1,
                     help="crops stored per image; training picks one per epoch (default 1)")
    out.add_argument("--shard_size", type=positive_int, default=1000,
                     help="samples per shard for folder input (default 1000; --wds input keeps its shards)")
    out.add_argument("--no_save_vae", dest="save_vae", action="store_false",
                     help="do not copy the VAE into the folder (train_dalle.py --codes then needs the VAE flags)")
    run = parser.add_argument_group("running")
    run.add_argument("--batch_size", type=positive_int, default=16, help="images per encoder batch (default 16)")
    run.add_argument("--num_workers", type=non_negative_int, default=0,
                     help="processes decoding images (folder input) (default 0)")
    run.add_argument("--max_bad_fraction", type=float, default=0.01,
                     help="share of samples that may be unreadable before the encode stops (default 0.01)")
    run.add_argument("--seed", type=int, default=0, help="seed of the random crops and of a GumbelVQ's draws")
    run.add_argument("--device", choices=("auto", "cpu", "cuda", "mps"), default="auto",
                     help="where the VAE runs (default auto: CUDA when available)")
    run.add_argument("--no_progress", dest="progress", action="store_false", help="no progress bar")
    run.add_argument("--debug", action="store_true", help="show tracebacks")
    return parser.parse_args(argv)


def vae_of_flags(args: argparse.Namespace) -> tuple[nn.Module, str]:
    """The VAE the flags select, as train_dalle.py selects it for a new model, and how it was given (the flags)."""
    if args.vae_path:
        loaded = load_checkpoint(args.vae_path, map_location="cpu")
        if loaded.kind not in ("vae", "dalle"):
            raise TrainingError(f"--vae_path {args.vae_path!r} holds a {loaded.kind} model, not a VAE")
        return (loaded.model.vae if loaded.kind == "dalle" else loaded.model), f"--vae_path {args.vae_path}"
    given = [f"--{name}" + ("" if name == "taming" else f" {getattr(args, name)}")
             for name in VAE_FLAGS if getattr(args, name)]
    flags = vae_flags(args)
    try:  # as train_dalle.py: the VQGAN when asked for, else OpenAI's dVAE
        vae = vae_from_flags(openai=not asks_for_vqgan(flags), **flags)
    except ValueError as e:
        raise TrainingError(str(e)) from None
    return vae, " ".join(given) or "OpenAI's dVAE from ~/.cache/dalle (no VAE flags)"


def main(args: argparse.Namespace) -> dict:
    """Encode as the flags say; prints and returns the summary (`encode_dataset`)."""
    with flag_names(), flag_errors():
        config = EncodeConfig(source=args.image_text_folder, output_dir=args.output_dir, wds=parse_wds(args.wds),
                              batch_size=args.batch_size, shard_size=args.shard_size, crops=args.crops,
                              resize_ratio=args.resize_ratio, seed=args.seed, num_workers=args.num_workers,
                              max_bad_fraction=args.max_bad_fraction, transparent=args.transparent,
                              save_vae=args.save_vae, progress=args.progress)
        if not config.wds and not os.path.isdir(config.source):
            raise TrainingError(f"--image_text_folder {config.source!r} is not a directory")
        env = init_distributed(args.device)
        try:
            vae, given = vae_of_flags(args)
            summary = encode_dataset(config, vae, vae_class=vae_class_name(vae), vae_description=given, env=env)
            vae = None
            env.barrier()  # every rank reaches teardown together
        finally:
            env.close()
    if env.is_main:
        print(f"encoded {summary['samples']:,} samples ({summary['skipped']:,} skipped) into {summary['shards']} "
              f"shards ({summary['shards_resumed']} already done): {summary['images_encoded']:,} images in "
              f"{summary['seconds']:.1f} s, {summary['images_per_sec']:.2f} images/s -> {summary['manifest']}",
              flush=True)
    return summary


def cli(argv=None) -> int:
    """The command line: parse `argv` (default sys.argv), encode, errors as one line and an exit status."""
    return run_cli(main, lambda: parse_args(argv), interrupted="interrupted; run the same command again to resume (finished "
                                                             "shards are kept)")


if __name__ == "__main__":
    sys.exit(cli())
