"""What quantized decoding costs in quality, on the demo model and on a model trained on real photos.

    python benchmarks/quantize_quality.py                                    # the demo model
    python benchmarks/quantize_quality.py --checkpoint runs/photos/dalle/dalle.safetensors \\
        --data runs/photos/data                                              # benchmarks/photo_model.py's model

For each mode (fp32, bf16, int8, int4):
- the demo: background and shape colour accuracy over all 90 captions x 4 images, for several seeds
  (tests/pipeline/test_demo.py's measure), and the share of sampled codes equal to fp32's (same seed);
- a model with data (an image-text folder it was trained on): the mean negative log-likelihood of the
  images' codes given their captions (nats per code, teacher forced, the VAE's codes of the images),
  the share of codes whose most likely prediction is fp32's, and the share of sampled codes equal to
  fp32's for the folder's captions (same seed).
"""
from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

MODES = ("fp32", "bf16", "int8", "int4")


def variant(model, mode: str):
    from dalle_pytorch import quantize

    if mode == "fp32":
        return model
    if mode == "bf16":
        return copy.deepcopy(model).to(torch.bfloat16)
    return quantize(copy.deepcopy(model), mode)


def demo(seeds: int) -> None:
    from dalle_pytorch.checkpoint import load_checkpoint
    from dalle_pytorch.pipeline.text_to_image import demo_path
    from dalle_pytorch.synthetic import caption, combinations
    from tests.pipeline.test_demo import _check

    loaded = load_checkpoint(demo_path())
    model, tok = loaded.model, loaded.tokenizer
    captions = [caption(*c) for c in combinations()]
    text = tok.tokenize(captions, model.text_seq_len)
    print(f"demo model, {len(captions)} captions x 4 images, seeds 1..{seeds}")
    print("| mode | background right | shape colour right | codes equal to fp32's |")
    print("| --- | --- | --- | --- |")
    reference = {}
    for mode in MODES:
        m = variant(model, mode)
        bg = fg = same = 0.0
        for seed in range(1, seeds + 1):
            codes = m.generate_images(text, num_images=4, filter_thres=0.9, return_codes=True,
                                      generator=torch.Generator().manual_seed(seed))
            report = _check(model.vae.decode(codes).clamp(0, 1), captions, 4)
            bg += sum(r[0] for r in report.values()) / len(report) / seeds
            fg += sum(r[1] for r in report.values()) / len(report) / seeds
            reference.setdefault(seed, codes)
            same += (codes == reference[seed]).float().mean().item() / seeds
        print(f"| {mode} | {bg:.1%} | {fg:.1%} | {same:.1%} |", flush=True)


def with_data(checkpoint: str, data: str, samples: int, batch: int) -> None:
    from PIL import Image

    from dalle_pytorch.checkpoint import load_checkpoint
    from dalle_pytorch.train.datasets import image_to_tensor

    loaded = load_checkpoint(checkpoint)
    model, tok = loaded.model.eval(), loaded.tokenizer
    size = model.vae.image_size
    files = sorted(Path(data).glob("*.png"))[:samples]
    images = torch.stack([image_to_tensor(Image.open(f).convert("RGB").resize((size, size))) for f in files])
    captions = [f.with_suffix(".txt").read_text().splitlines()[0] for f in files]
    text = tok.tokenize(captions, model.text_seq_len)
    with torch.no_grad():
        codes = torch.cat([model.vae.get_codebook_indices(images[i : i + batch]) for i in range(0, len(files), batch)])
    print(f"{checkpoint}: {len(files)} images of {data}, {codes.shape[1]} codes each")
    print("| mode | NLL (nats / code) | top-1 prediction = fp32's | sampled codes equal to fp32's |")
    print("| --- | --- | --- | --- |")
    ref_top, ref_codes = None, None
    v, t0 = model.num_text_tokens, model.text_len - 1
    for mode in MODES:
        m = variant(model, mode)
        nll, tops = 0.0, []
        with torch.no_grad():
            for i in range(0, len(files), batch):
                logits = m(text[i : i + batch], codes[i : i + batch])[:, t0 : t0 + codes.shape[1], v:].float()
                nll += F.cross_entropy(logits.flatten(0, 1), codes[i : i + batch].flatten(), reduction="sum").item()
                tops.append(logits.argmax(-1))
        top = torch.cat(tops)
        sampled = m.generate_images(text[:64], filter_thres=0.9, return_codes=True, generator=torch.Generator().manual_seed(0))
        ref_top = top if ref_top is None else ref_top
        ref_codes = sampled if ref_codes is None else ref_codes
        print(f"| {mode} | {nll / codes.numel():.4f} | {(top == ref_top).float().mean().item():.1%} | "
              f"{(sampled == ref_codes).float().mean().item():.1%} |", flush=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", help="a DALLE checkpoint with --data (default: the demo model's colour measure)")
    p.add_argument("--data", help="the image-text folder the checkpoint's model was trained on")
    p.add_argument("--samples", type=int, default=512, help="images of --data scored (default 512)")
    p.add_argument("--seeds", type=int, default=5, help="the demo's seeds (default 5)")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    from benchmarks.generate import cpu_name

    print(f"torch {torch.__version__}, {args.threads} threads, {cpu_name()}")
    if args.checkpoint:
        if not args.data:
            p.error("--checkpoint needs --data")
        with_data(args.checkpoint, args.data, args.samples, 64)
    else:
        demo(args.seeds)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
