"""train_dalle.py over a VQGAN f16 at 256 x 256: images/s training on images against on codes pre-encoded
by dalle-encode, and dalle-encode's own images/s (one process, and two under torchrun), side by side.

    python benchmarks/train_codes.py                      # depth 4 and 16 (about 10 minutes on 2 cores)
    python benchmarks/train_codes.py --depths 4 --steps 3

The VQGAN is DALLE-pytorch's default size (benchmarks/train_vqgan.py's F16: 1024 codes, random weights,
written as taming's .yaml + .ckpt and given by --taming --vqgan_model_path --vqgan_config_path); the DALLE
is dim 512, 8 heads of 64, 128 text tokens, batch 4, full attention. The shapes data (64 px, cropped and
resized to 256 like any folder) runs through the real scripts: train_dalle.py --image_text_folder, then
dalle-encode, then train_dalle.py --codes. A training rate is the median of the steps' samples_per_sec
after the first step. docs/training.md ("Encode once, train on codes") records a run.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.generate import cpu_name  # noqa: E402
from benchmarks.train_vqgan import F16  # noqa: E402
from dalle_pytorch import VQGanVAE  # noqa: E402
from dalle_pytorch.cli import encode as encode_cli  # noqa: E402
from dalle_pytorch.cli import train_dalle  # noqa: E402
from dalle_pytorch.synthetic import make_dataset  # noqa: E402


def rate(run_dir: Path) -> float:
    with open(run_dir / "log.jsonl", encoding="utf-8") as f:
        steps = [r for r in map(json.loads, f) if r["event"] == "step"]
    return statistics.median(r["samples_per_sec"] for r in steps[1:])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--depths", default="4,16")
    p.add_argument("--steps", type=int, default=3, help="training steps per run (the first is not counted)")
    p.add_argument("--images", type=int, default=32, help="images in the dataset (and encoded)")
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="train_codes_"))
    torch.manual_seed(0)
    vae = VQGanVAE.from_config(F16)
    config = work / "vqgan.yaml"
    config.write_text(yaml.safe_dump({"model": F16}))
    ckpt = work / "vqgan.ckpt"
    torch.save({"state_dict": {k[len("model."):]: v for k, v in vae.state_dict().items()}}, ckpt)
    data = work / "data"
    make_dataset(data, args.images, image_size=64, seed=0)
    vqgan = ["--taming", "--vqgan_model_path", str(ckpt), "--vqgan_config_path", str(config)]
    print(f"torch {torch.__version__}, {cpu_name()}, {torch.get_num_threads()} threads, "
          f"load average {os.getloadavg()[0]:.2f}; VQGAN f16 {sum(p.numel() for p in vae.parameters()) / 1e6:.1f}M "
          f"parameters at 256 x 256; {args.images} images", flush=True)

    t0 = time.perf_counter()
    summary = encode_cli.main(encode_cli.parse_args([*vqgan, "--image_text_folder", str(data), "--output_dir",
                                                     str(work / "codes"), "--no_progress", "--batch_size", "8"]))
    one = summary["images_encoded"] / (time.perf_counter() - t0)  # whole command: VAE load and hashing included
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
           "dalle_pytorch.cli.encode", *vqgan, "--image_text_folder", str(data), "--output_dir", str(work / "codes2"),
           "--no_progress", "--batch_size", "8", "--device", "cpu", "--shard_size", str(max(1, args.images // 4))]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, env={**os.environ, "OMP_NUM_THREADS": "1",
                                                              "PYTHONPATH": str(ROOT)})
    two = args.images / (time.perf_counter() - t0)
    print(f"dalle-encode: 1 process {one:.2f} images/s, 2 processes (torchrun, 1 thread each) {two:.2f} images/s "
          f"({two / one:.2f}x); whole commands, start-up included", flush=True)

    common = ["--dim", "512", "--heads", "8", "--dim_head", "64", "--text_seq_len", "128", "--truncate_captions",
              "--batch_size", "4", "--max_steps", str(args.steps), "--no_progress", "--sample_every", "0",
              "--bpe_path", str(ROOT / "dalle_pytorch" / "demo" / "tokenizer.json"), *vqgan]
    print("| DALLE depth | on images (images/s) | on codes (images/s) | codes / images |")
    print("| --- | --- | --- | --- |")
    for depth in (int(d) for d in args.depths.split(",")):
        runs = {}
        for name, source in (("images", ["--image_text_folder", str(data)]), ("codes", ["--codes", str(work / "codes")])):
            out = work / f"run_{name}_{depth}"
            train_dalle.main(train_dalle.parse_args([*common, "--depth", str(depth), *source, "--output_dir", str(out)]))
            runs[name] = rate(out)
        print(f"| {depth} | {runs['images']:.3f} | {runs['codes']:.3f} | {runs['codes'] / runs['images']:.2f}x |",
              flush=True)


if __name__ == "__main__":
    main()
