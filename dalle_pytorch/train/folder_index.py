"""The index of a caption/image folder: the (image, caption) pairs found by a recursive scan (and the
images that have no caption), cached on disk with the mtime of every directory so that a later start
on an unchanged folder stats only its directories (see `TextImageDataset`)."""
from __future__ import annotations

import json
import os
import stat
import time
import warnings
from typing import Any, Callable, NamedTuple, Optional

from dalle_pytorch.formats.files import write_json

__all__ = ["IMAGE_EXTENSIONS", "DEFAULT_CACHE", "FolderIndex", "scan_pairs", "cache_valid", "load_index"]

#: Image file extensions picked up by the datasets (compared case-insensitively).
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")

CACHE_VERSION = 2  # 2: the images without a caption are stored too
DEFAULT_CACHE = os.path.join(".dalle_cache", "index.json")
# A directory whose mtime lies this close to (or after) the moment it was scanned may
# still change within the same mtime tick without its mtime changing ("racy" entry,
# as in git's index); a cache holding such a directory is not trusted on the next start.
RACY_WINDOW_NS = 2_000_000_000


def _is_hidden(name: str) -> bool:
    return name.startswith(".")


class FolderIndex(NamedTuple):
    """What `load_index` found in a folder."""

    pairs: list[tuple[str, str]]  # (image, caption) relative paths, sorted
    uncaptioned: list[str]  # images without a caption file, sorted (left out)
    cache_hit: bool  # read from the index cache rather than scanned


def scan_pairs(root: str) -> tuple[list[tuple[str, str]], dict[str, int], list[str]]:
    """Walk ``root`` recursively; return the sorted (image, caption) relative paths, the mtime
    (ns) of every directory visited (relative path -> mtime, root is ".") and the sorted images
    that have no caption.

    Hidden files and directories (name starting with ".") are ignored. A directory's
    mtime is read before it is listed, so any later change is seen as a new mtime.
    """
    images: dict[str, str] = {}
    captions: dict[str, str] = {}
    dirs: dict[str, int] = {}
    seen: set[tuple[int, int]] = set()
    stack = ["."]
    while stack:
        rel = stack.pop()
        full = os.path.join(root, rel)
        st = os.stat(full)
        if (st.st_dev, st.st_ino) in seen:  # symlink loop / duplicate
            continue
        seen.add((st.st_dev, st.st_ino))
        dirs[rel] = st.st_mtime_ns
        with os.scandir(full) as it:
            entries = list(it)
        for entry in entries:
            if _is_hidden(entry.name):
                continue
            child = entry.name if rel == "." else f"{rel}/{entry.name}"
            try:
                if entry.is_dir():
                    stack.append(child)
                    continue
            except OSError:
                continue
            stem, ext = os.path.splitext(child)
            ext = ext.lower()
            if ext == ".txt":
                captions[stem] = child
            elif ext in IMAGE_EXTENSIONS:
                if stem in images:
                    first, second = sorted((images[stem], child))
                    warnings.warn(
                        f"{root}: two images for caption {stem}.txt ({first}, {second}); using {first}"
                    )
                    images[stem] = first
                else:
                    images[stem] = child
    pairs = sorted((images[k], captions[k]) for k in images.keys() & captions.keys())
    uncaptioned = sorted(images[k] for k in images.keys() - captions.keys())
    return pairs, dirs, uncaptioned


def cache_valid(data: Any, root: str) -> bool:
    """Whether a loaded cache describes ``root`` as it is now (stats directories only)."""
    if not isinstance(data, dict) or data.get("version") != CACHE_VERSION:
        return False
    if data.get("root") != root or data.get("extensions") != list(IMAGE_EXTENSIONS):
        return False
    dirs, pairs, scan_ns = data.get("dirs"), data.get("pairs"), data.get("scan_time_ns")
    if not isinstance(dirs, dict) or not isinstance(pairs, list) or not isinstance(scan_ns, int):
        return False
    if not isinstance(data.get("uncaptioned"), list):
        return False
    if "." not in dirs or data.get("count") != len(pairs):
        return False
    for rel, mtime in dirs.items():
        if not isinstance(mtime, int) or mtime > scan_ns - RACY_WINDOW_NS:
            return False
        try:
            st = os.stat(os.path.join(root, rel))
        except OSError:
            return False
        if not stat.S_ISDIR(st.st_mode) or st.st_mtime_ns != mtime:
            return False
    return True


def load_index(root: str, path: Optional[str], warn_no_cache: Callable[[OSError], None]) -> FolderIndex:
    """The (image, caption) pairs under `root` and its images without a caption, from the cache file
    `path` when it is valid, else by a scan (written to `path` when possible; `warn_no_cache(error)`
    when not).  path=None: always scan, no cache."""
    if path is None:
        pairs, _, uncaptioned = scan_pairs(root)
        return FolderIndex(pairs, uncaptioned, False)
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        data = None
    if data is not None and cache_valid(data, root):
        return FolderIndex([(img, txt) for img, txt in data["pairs"]], [str(p) for p in data["uncaptioned"]], True)

    # Create the cache's directory before scanning: creating it changes its parent's mtime.
    writable = True
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
    except OSError as e:
        writable = False
        warn_no_cache(e)
    scan_time_ns = time.time_ns()
    pairs, dirs, uncaptioned = scan_pairs(root)
    if writable:
        data = {
            "version": CACHE_VERSION,
            "root": root,
            "extensions": list(IMAGE_EXTENSIONS),
            "scan_time_ns": scan_time_ns,
            "count": len(pairs),
            "dirs": dirs,
            "pairs": [list(p) for p in pairs],
            "uncaptioned": uncaptioned,
        }
        try:
            write_json(path, data, indent=None)
        except OSError as e:
            warn_no_cache(e)
        else:
            parent = os.path.relpath(os.path.dirname(path), root).replace(os.sep, "/")
            if parent in dirs:
                warnings.warn(
                    f"index cache {path} lies in a scanned directory of {root}; writing it "
                    "changes that directory, so the cache is never reused. Put it outside "
                    "the folder or in a hidden directory."
                )
    return FolderIndex(pairs, uncaptioned, False)
