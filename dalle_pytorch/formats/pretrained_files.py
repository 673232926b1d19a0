"""Where DALLE-pytorch kept the pretrained VAE files it downloaded; we only look there.

DALLE-pytorch 1.6.6 downloaded OpenAI's dVAE and the f16 1024-code VQGAN into ~/.cache/dalle on
first use. This package never downloads: without explicit paths the VAEs read those files if
they are there, and otherwise say which files are missing, where to put them, and where
DALLE-pytorch took them from.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

__all__ = ["CACHE_DIR", "default_files"]

CACHE_DIR = "~/.cache/dalle"


def default_files(names: Mapping[str, str], owner: str, arguments: str) -> list[Path]:
    """The paths of `names` ({file name: DALLE-pytorch's download address}) in CACHE_DIR (HOME read now).

    Raises FileNotFoundError listing every missing file, its address, and the `arguments` that
    give paths instead.
    """
    folder = Path(os.path.expanduser(CACHE_DIR))
    paths = [folder / name for name in names]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        lines = [f"{owner}: no file paths were given and {len(missing)} of its default files are missing "
                 "(nothing is downloaded):"]
        lines += [f"  {p}  (DALLE-pytorch downloaded it from {names[p.name]})" for p in missing]
        lines.append(f"Put {'them' if len(missing) > 1 else 'it'} there, or pass {arguments}.")
        raise FileNotFoundError("\n".join(lines))
    return paths
