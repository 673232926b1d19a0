"""generate.py on one process against torchrun on N processes, side by side in one run.

    python benchmarks/generate_ranks.py                 # 16 captions, 2 processes, the benchmark model
    python benchmarks/generate_ranks.py --captions 8 --procs 2 --fmap 8

The model is benchmarks/generate.py's (dim 256, depth 4, random weights) saved with a word-level
tokenizer; the captions come from the synthetic shapes vocabulary. One process gets all the CPU
threads (--threads); each of the N torchrun processes gets threads / N. Both runs write the same
files (tests/cli/test_generate.py checks that); this prints their images/s and the ratio.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dalle_pytorch import DALLE, DiscreteVAE, save  # noqa: E402
from dalle_pytorch.synthetic import sample_captions  # noqa: E402
from dalle_pytorch.text.factory import HugTokenizer  # noqa: E402


def build(fmap: int, path: Path) -> None:
    """The benchmark model over a VAE of grid `fmap`, with the demo model's word-level tokenizer."""
    tokenizer = HugTokenizer(ROOT / "dalle_pytorch" / "demo" / "tokenizer.json")
    torch.manual_seed(0)
    vae = DiscreteVAE(image_size=fmap * 2, num_layers=1, num_tokens=512, codebook_dim=16, hidden_dim=8)
    model = DALLE(dim=256, vae=vae, num_text_tokens=tokenizer.vocab_size, text_seq_len=32, depth=4, heads=4,
                  dim_head=64).eval()
    save(model, path, tokenizer=tokenizer)


def run(argv: list[str], threads: int, out: Path) -> float:
    """Seconds the run reported in its index line (sampling and writing, all ranks)."""
    # PASSIVE: on a shared machine OpenMP threads spinning on descheduled ones distort both runs
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "OMP_WAIT_POLICY": "PASSIVE"}
    proc = subprocess.run(argv + ["--outputs_dir", str(out)], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(proc.stderr)
    record = json.loads((out / "generate-index.jsonl").read_text().splitlines()[-1])
    return record["seconds"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--captions", type=int, default=16)
    p.add_argument("--num_images", type=int, default=4)
    p.add_argument("--procs", type=int, default=2)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 2, help="CPU threads in all (default: all)")
    p.add_argument("--fmap", type=int, default=16, help="image grid side (default 16: 256 codes)")
    args = p.parse_args()
    per_proc = max(1, args.threads // args.procs)
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; "
          f"{args.captions} captions x {args.num_images} images, {args.fmap}x{args.fmap} codes; "
          f"1 process x {args.threads} threads vs {args.procs} processes x {per_proc} threads; "
          f"load average {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        build(args.fmap, tmp / "model.safetensors")
        prompts = tmp / "prompts.txt"
        prompts.write_text("\n".join(sample_captions(args.captions, seed=0)) + "\n", encoding="utf-8")
        common = ["generate.py", "--dalle_path", str(tmp / "model.safetensors"), "--prompts_file", str(prompts),
                  "--num_images", str(args.num_images), "--batch_size", str(args.num_images), "--seed", "0",
                  "--no_progress"]
        one = run([sys.executable, str(ROOT / common[0]), *common[1:]], args.threads, tmp / "one")
        many = run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(args.procs),
                    str(ROOT / common[0]), *common[1:], "--device", "cpu"], per_proc, tmp / "many")
    n = args.captions * args.num_images
    print(f"1 process:   {n / one:7.2f} images/s ({one:.2f} s)")
    print(f"{args.procs} processes: {n / many:7.2f} images/s ({many:.2f} s)")
    print(f"ratio: {one / many:.2f}x")


if __name__ == "__main__":
    main()
