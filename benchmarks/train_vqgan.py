"""What a train_dalle.py step over a VQGAN spends its time on, at 256 px, on this machine.

    python benchmarks/train_vqgan.py               # batch 4, dim 512, depth 4 (a few minutes on 2 cores)
    python benchmarks/train_vqgan.py --batch 2 --depth 2

A DALLE-pytorch-sized VQGAN f16 (ch 128, ch_mult 1,1,2,2,4, 2 resnet blocks, attention at 16, 1024
codes, random weights) under a DALLE (dim 512, 8 heads of 64, text_seq_len 128, 16 x 16 image codes).
One training step is timed in parts, side by side, best of --repeat:
  * encode: VQGanVAE.get_codebook_indices of the batch of 256 x 256 images (what DALLE.forward does
    with pixels; the VAE is frozen, so no gradient flows into it);
  * transformer: DALLE.forward on the codes + the loss + backward + an AdamW step;
and their sum is reported as images/s. docs/training.md records a run and what dominates.
"""
from __future__ import annotations

import argparse
import os
import platform
import time

import torch

from dalle_pytorch import DALLE, VQGanVAE

F16 = {"target": "taming.models.vqgan.VQModel",
       "params": {"embed_dim": 256, "n_embed": 1024,
                  "ddconfig": {"double_z": False, "z_channels": 256, "resolution": 256, "in_channels": 3, "out_ch": 3,
                               "ch": 128, "ch_mult": [1, 1, 2, 2, 4], "num_res_blocks": 2, "attn_resolutions": [16],
                               "dropout": 0.0}}}


def best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args()
    torch.manual_seed(0)
    vae = VQGanVAE.from_config(F16).eval()
    model = DALLE(dim=args.dim, vae=vae, num_text_tokens=10000, text_seq_len=128, depth=args.depth, heads=8,
                  dim_head=64, attn_types=("full",))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    images = torch.rand(args.batch, 3, 256, 256)
    text = torch.randint(1, 10000, (args.batch, 128))
    codes = vae.get_codebook_indices(images)

    def encode():
        vae.get_codebook_indices(images)

    def transformer():
        loss = model(text, codes, return_loss=True)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    encode(), transformer()  # warm up
    t_enc, t_tr = best(encode, args.repeat), best(transformer, args.repeat)
    total = t_enc + t_tr
    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, {torch.get_num_threads()} "
          f"threads, load average {os.getloadavg()[0]:.2f}; batch {args.batch} of 256x256 images; VQGAN f16 "
          f"{sum(p.numel() for p in vae.parameters()) / 1e6:.1f}M parameters; DALLE dim {args.dim} depth {args.depth} "
          f"({n_params / 1e6:.1f}M trainable), 128 text + 256 image tokens")
    print(f"VQGAN encode:               {t_enc:7.3f} s  ({t_enc / total:5.1%} of a step)")
    print(f"transformer fwd+bwd+AdamW:  {t_tr:7.3f} s  ({t_tr / total:5.1%})")
    print(f"step: {total:.3f} s -> {args.batch / total:.2f} images/s")


if __name__ == "__main__":
    main()
