"""Convert a checkpoint (DALLE-pytorch `.pt` or ours) into this package's safetensors format, or back.

    python -m dalle_pytorch.cli.convert OLD.pt NEW.safetensors [--vae_path VAE.pt] [--force]
        [--bpe_path tokenizer.json|model.bpe|vocab.txt] [--hug] [--chinese]
    python -m dalle_pytorch.cli.convert OURS.safetensors THEIRS.pt --to dalle_pytorch [--old_axial_names]

`--to dalle_pytorch` writes what DALLE-pytorch 1.6.6's scripts write (train_dalle.py's / train_vae.py's dict,
its key layout: `checkpoint.legacy.dalle_pytorch_file`), which its own generate.py and `load_state_dict` read.

The input is read with `load_checkpoint` (strict, `torch.load(weights_only=True)` for `.pt` files)
and written with `save` (atomically), so the output reproduces the input model exactly.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Optional, Sequence

from dalle_pytorch.checkpoint.build import SOURCE_LEGACY, LoadedCheckpoint
from dalle_pytorch.checkpoint.legacy import save_dalle_pytorch
from dalle_pytorch.checkpoint.ours import load_checkpoint, save
from dalle_pytorch.checkpoint.pretrained import vae_flags, vae_from_flags
from dalle_pytorch.cli.flags import add_vae_flags, flag_names, prog_name, tokenizer_for_flags
from dalle_pytorch.errors import CheckpointError

__all__ = ["main", "summarize"]

_DALLE_SUMMARY_KEYS = ("dim", "depth", "heads", "dim_head", "num_text_tokens", "text_seq_len", "attn_types",
                       "reversible", "shift_tokens", "rotary_emb", "shared_attn_ids", "shared_ff_ids",
                       "share_input_output_emb", "conv_variant")
_VAE_SUMMARY_KEYS = ("image_size", "num_tokens", "codebook_dim", "num_layers", "num_resnet_blocks", "hidden_dim")


def _fmt(config: dict, keys: Sequence[str]) -> str:
    return " ".join(f"{k}={config[k]}" for k in keys if k in config and config[k] is not None)


def _vae_summary(vae) -> str:
    if isinstance(vae.config, dict) and "image_size" in vae.config:  # DiscreteVAE
        return _fmt(vae.config, _VAE_SUMMARY_KEYS)
    return (f"{type(vae).__name__} image_size={vae.image_size} num_tokens={vae.num_tokens} "
            f"num_layers={vae.num_layers}")


def summarize(loaded: LoadedCheckpoint) -> str:
    """A few lines on what `loaded` is: kind, origin (version, epoch), config and VAE summary."""
    if loaded.source == SOURCE_LEGACY:
        meta = loaded.metadata
        origin = f"DALLE-pytorch {meta.get('version') or '(version unknown)'}"
        if meta.get("epoch") is not None:
            origin += f", epoch {meta['epoch']}"
    else:
        origin = f"dalle_pytorch {loaded.package_version or '?'}"
    model = loaded.model
    n_params = sum(p.numel() for p in model.parameters())
    label = "DALLE" if loaded.kind == "dalle" else type(model).__name__
    lines = [f"{label} checkpoint from {origin}, {n_params:,} parameters"]
    if loaded.kind == "dalle":
        config = dict(loaded.config)
        if "conv_like" not in (config.get("attn_types") or ()):
            config.pop("conv_variant", None)
        lines.append(f"  model: {_fmt(config, _DALLE_SUMMARY_KEYS)}")
        lines.append(f"  vae:   {_vae_summary(model.vae)}")
    else:
        lines.append(f"  vae:   {_vae_summary(model)}")
    if loaded.tokenizer_description is not None:
        lines.append(f"  tokenizer: {loaded.tokenizer_description.get('type')}")
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog_name("dalle-convert"), allow_abbrev=False,
        description="Convert a DALLE-pytorch train_dalle.py / train_vae.py checkpoint (or one of ours) into a "
                    "dalle_pytorch .safetensors checkpoint.",
    )
    p.add_argument("input", help="checkpoint to read (.pt from DALLE-pytorch, or .safetensors)")
    p.add_argument("output", help="the file to write: .safetensors (ours), or with --to dalle_pytorch a .pt")
    p.add_argument("--to", choices=("ours", "dalle_pytorch"), default="ours",
                   help="the output format: ours (default) or DALLE-pytorch 1.6.6's .pt (its train_dalle.py / "
                        "train_vae.py dict and key layout, for its scripts and load_state_dict)")
    p.add_argument("--old_axial_names", action="store_true",
                   help="with --to dalle_pytorch: name the image position embeddings as axial_positional_embedding "
                        "<= 0.2.1 does (weights_0; 0.3 and later: weights.0)")
    p.add_argument("--vae_path", default=None,
                   help="separate VAE checkpoint, for DALLE files saved without VAE parameters")
    vae = p.add_argument_group("pretrained VAEs (DALLE-pytorch files over VQGanVAE / OpenAIDiscreteVAE; the output "
                               "stores the VAE whole)")
    add_vae_flags(vae, "the model is over a taming VQGAN (default files: ~/.cache/dalle/vqgan.1024.*)")
    p.add_argument("--bpe_path", default=None,
                   help="the tokenizer file the model was trained with, stored in the output: a HuggingFace "
                        "tokenizers JSON (*.json), a youtokentome BPE model (DALLE-pytorch's --bpe_path) or CLIP "
                        "BPE merges")
    p.add_argument("--hug", action="store_true", help="--bpe_path is a HuggingFace tokenizers JSON file")
    p.add_argument("--chinese", action="store_true",
                   help="the model was trained with DALLE-pytorch's --chinese: --bpe_path is bert-base-chinese's "
                        "vocab.txt")
    p.add_argument("--default_tokenizer", action="store_true",
                   help="record the default CLIP SimpleTokenizer as the model's tokenizer")
    p.add_argument("--force", action="store_true", help="overwrite the output if it exists")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command-line entry point; returns the exit status (0 done, 1 error)."""
    args = _parser().parse_args(argv)
    if os.path.exists(args.output) and not args.force:
        print(f"error: {args.output} exists; pass --force to overwrite it", file=sys.stderr)
        return 1
    if os.path.abspath(args.input) == os.path.abspath(args.output):
        print("error: the output must be another file than the input", file=sys.stderr)
        return 1
    if (args.bpe_path or args.chinese) and args.default_tokenizer:
        print("error: give either --bpe_path / --chinese or --default_tokenizer", file=sys.stderr)
        return 1
    try:
        with flag_names():
            return _convert(args)
    except (CheckpointError, ValueError, TypeError, OSError) as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 1


def _convert(args) -> int:
    vae = vae_from_flags(**vae_flags(args))
    loaded = load_checkpoint(args.input, vae=vae, vae_path=args.vae_path)
    tokenizer = loaded.tokenizer_description
    if args.bpe_path or args.chinese or args.hug:
        stored = loaded.tokenizer if loaded.kind == "dalle" else None
        model_tokens = loaded.model.num_user_text_tokens if loaded.kind == "dalle" else None
        tokenizer = tokenizer_for_flags(args.bpe_path, hug=args.hug, chinese=args.chinese, stored=stored,
                                        model_text_tokens=model_tokens)
    elif args.default_tokenizer:
        tokenizer = {"type": "simple"}
    if args.to == "dalle_pytorch":
        if tokenizer is not None and args.bpe_path is None:
            print("note: DALLE-pytorch files hold no tokenizer: pass its --bpe_path (and --hug / --chinese) to its scripts")
        save_dalle_pytorch(loaded.model, args.output, old_axial_names=args.old_axial_names)
        print(f"converted {args.input} -> {args.output} (DALLE-pytorch 1.6.6's format)")
        print(summarize(loaded))
        return 0
    metadata = dict(loaded.metadata) if loaded.source == "dalle_pytorch" else {}
    if loaded.source != "dalle_pytorch":
        metadata["converted_from"] = {"file": os.path.basename(args.input), "source": loaded.source,
                                      **{k: v for k, v in loaded.metadata.items() if v is not None}}
    save(loaded.model, args.output, tokenizer=tokenizer, metadata=metadata)
    print(f"converted {args.input} -> {args.output}")
    print(summarize(loaded))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
