"""Decoding codes to 256 x 256 images with the pretrained VAEs: ours against the real modules.

    python benchmarks/vae_decode.py            # about five minutes on 2 otherwise idle CPU cores

Two models with random weights (no download), each also copied into the reference implementation
and decoded the way DALLE-pytorch 1.6.6 decodes (tests/oracles/vae_oracles.py):
  * VQGAN f16 as DALLE-pytorch's default (ch 128, ch_mult 1,1,2,2,4, 2 resnet blocks, attention at
    16, 1024 codes): 16 x 16 codes per image, VQGanVAE.decode vs taming's VQModel.decode;
  * OpenAI's dVAE at its real size (n_hid 256, 2 blocks per group, 8192 codes): 32 x 32 codes,
    OpenAIDiscreteVAE.decode vs dall_e's Decoder on the one-hot codes.
1. Seconds per image, ours and theirs interleaved (ratios are what compares across runs).
2. The most activation memory alive at once during a decode (tensor storages created by the
   decode and not yet freed, counted exactly by a dispatch mode), batches 1 and 4, against the
   largest single activation of that batch: decoding without autograd keeps only the current
   layers' outputs alive.
docs/benchmarks.md records a run. Needs the test oracles (taming-transformers-rom1504, dall-e).
"""
from __future__ import annotations

import argparse
import sys
import time
import weakref
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the oracles of the test suite, one source for both

from dalle_pytorch import OpenAIDiscreteVAE, VQGanVAE  # noqa: E402
from tests.vae_oracles import dalle_pytorch_dvae_decode, dalle_pytorch_vqgan_decode, taming_models  # noqa: E402

F16 = {"target": "taming.models.vqgan.VQModel",
       "params": {"embed_dim": 256, "n_embed": 1024,
                  "ddconfig": {"double_z": False, "z_channels": 256, "resolution": 256, "in_channels": 3, "out_ch": 3,
                               "ch": 128, "ch_mult": [1, 1, 2, 2, 4], "num_res_blocks": 2, "attn_resolutions": [16],
                               "dropout": 0.0}}}
DVAE = {"encoder": {"n_hid": 256, "n_blk_per_group": 2, "input_channels": 3, "vocab_size": 8192},
        "decoder": {"n_init": 128, "n_hid": 256, "n_blk_per_group": 2, "output_channels": 3, "vocab_size": 8192}}
# the largest single activation of one image's decode, in MB: (128 ch or n_hid 256) x 256 x 256 fp32
LARGEST_MB = {"vqgan": 128 * 256 * 256 * 4 / 2**20, "dvae": 256 * 256 * 256 * 4 / 2**20}


def build(model: str, impl: str):
    """(decode function codes -> images, codes per image) for `impl` 'ours' or 'theirs'."""
    torch.manual_seed(0)
    if model == "vqgan":
        vae = VQGanVAE.from_config(F16)
        if impl == "ours":
            return vae.decode, 256
        VQModel, _ = taming_models()
        theirs = VQModel(**F16["params"], lossconfig={"target": "torch.nn.Identity"})
        theirs.load_state_dict({k[len("model."):]: v for k, v in vae.state_dict().items()})
        theirs.eval().requires_grad_(False)  # DALLE freezes its VAE
        return (lambda codes: dalle_pytorch_vqgan_decode(theirs, codes, 1024, False)), 256
    from dall_e import Decoder

    vae = OpenAIDiscreteVAE.from_config(DVAE)
    if impl == "ours":
        return vae.decode, 1024
    theirs = Decoder(**{k: v for k, v in DVAE["decoder"].items() if k != "output_channels"})
    theirs.load_state_dict({k[len("dec."):]: v for k, v in vae.state_dict().items() if k.startswith("dec.")})
    return (lambda codes: dalle_pytorch_dvae_decode(theirs, codes, 8192)), 1024


class LiveBytes(TorchDispatchMode):
    """Counts the bytes of tensor storages created inside the `with` and still alive; keeps the peak."""

    def __init__(self):
        super().__init__()
        self.live, self.peak, self.seen = 0, 0, set()

    def _free(self, key: int, nbytes: int) -> None:
        self.live -= nbytes
        self.seen.discard(key)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                storage = t.untyped_storage()  # views share it: counted once, freed with the last view
                if id(storage) not in self.seen and storage.nbytes():
                    self.seen.add(id(storage))
                    self.live += storage.nbytes()
                    self.peak = max(self.peak, self.live)
                    weakref.finalize(storage, self._free, id(storage), storage.nbytes())
        return out


def peak_mb(decode, codes: torch.Tensor) -> float:
    """The most MB of activations alive at once while decoding `codes` (weights not counted)."""
    with LiveBytes() as live:
        decode(codes)
    return live.peak / 2**20


def timings(reps: int) -> dict:
    out = {}
    for model in ("vqgan", "dvae"):
        fns = {impl: build(model, impl) for impl in ("ours", "theirs")}
        n = fns["ours"][1]
        codes = torch.randint(0, 1024 if model == "vqgan" else 8192, (1, n), generator=torch.Generator().manual_seed(1))
        same = (fns["ours"][0](codes) - fns["theirs"][0](codes)).abs().max().item()
        times = {"ours": [], "theirs": []}
        for _ in range(reps):  # interleaved: both see the same machine load
            for impl, (fn, _) in fns.items():
                t0 = time.perf_counter()
                fn(codes)
                times[impl].append(time.perf_counter() - t0)
        out[model] = {impl: min(t) for impl, t in times.items()}
        out[model]["max_abs_diff"] = same
        del fns
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args(argv)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    t = timings(args.reps)
    print("\ns per 256 x 256 image (batch 1, best of", args.reps, "interleaved)")
    print(f"{'model':8} {'ours':>8} {'theirs':>8} {'theirs/ours':>12} {'max |diff|':>11}")
    for model, r in t.items():
        print(f"{model:8} {r['ours']:8.3f} {r['theirs']:8.3f} {r['theirs'] / r['ours']:12.2f} {r['max_abs_diff']:11.1e}")
    print("\npeak MB of activations alive at once during a decode; the largest single activation in brackets")
    print(f"{'model':8} {'batch':>5} {'ours':>8} {'theirs':>8}")
    for model in ("vqgan", "dvae"):
        fns = {impl: build(model, impl) for impl in ("ours", "theirs")}
        for batch in (1, 4):
            codes = torch.randint(0, 1024 if model == "vqgan" else 8192, (batch, fns["ours"][1]))
            peaks = {impl: peak_mb(fn, codes) for impl, (fn, _) in fns.items()}
            print(f"{model:8} {batch:5d} {peaks['ours']:8.0f} {peaks['theirs']:8.0f}   [{LARGEST_MB[model] * batch:.0f}]")
        del fns

if __name__ == "__main__":
    main()
