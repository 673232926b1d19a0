"""A training run's curves as a picture (`dalle_pytorch.train.curves`).

    dalle-plot runs/<name>              # writes runs/<name>/curves.png
    dalle-plot runs/<name> -o a.png     # (or python -m dalle_pytorch.cli.plot)
"""
from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from dalle_pytorch.train.curves import write_curves

__all__ = ["main"]


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="dalle-plot", description="Draw a training run's curves (loss, learning rate, "
                                                            "gradient norm, samples/s) as a PNG.")
    p.add_argument("run_dir", help="a run folder of train_vae.py / train_dalle.py (it holds log.jsonl)")
    p.add_argument("-o", "--output", default=None, help="the PNG to write (default RUN_DIR/curves.png)")
    args = p.parse_args(argv)
    try:
        path = write_curves(args.run_dir, args.output)
    except (OSError, ValueError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
