"""Atomic file writes: a new file appears complete or not at all, and a failed write leaves the old one.

Used for every file the package writes that a crash must not corrupt: checkpoints, training
state, run summaries, sample grids, generation records and the dataset index cache.
"""
from __future__ import annotations

import json
import os
import secrets
import stat
from pathlib import Path
from typing import Any, Callable, Union

PathLike = Union[str, "os.PathLike[str]"]

__all__ = ["atomic_write", "atomic_write_bytes", "write_text", "write_json", "fsync_dir"]


def fsync_dir(folder: Path) -> None:
    """Persist a rename in `folder` (best effort: not every OS / file system allows it)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: PathLike, write: Callable[[str], None]) -> None:
    """Create `path` atomically: `write(tmp)` fills a new temporary file in the same folder, which
    is flushed, fsync'ed and renamed over `path` with os.replace.

    On any error (including KeyboardInterrupt) the temporary file is removed and an existing
    `path` is left exactly as it was.  The new file gets the usual permissions (0o666 & ~umask).
    """
    path = Path(os.fspath(path))
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise FileNotFoundError(f"cannot write {str(path)!r}: folder {str(folder)!r} does not exist")
    if path.is_dir():
        raise IsADirectoryError(f"cannot write {str(path)!r}: it is a directory")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        tmp = folder / f".{path.name}.{secrets.token_hex(4)}.tmp"
        try:
            fd = os.open(tmp, flags, 0o666)
            break
        except FileExistsError:
            continue
    else:  # pragma: no cover - 100 collisions of 32 random bits
        raise FileExistsError(f"could not create a temporary file next to {str(path)!r}")
    try:
        mode = stat.S_IMODE(os.fstat(fd).st_mode)  # 0o666 & ~umask, applied by os.open
        os.close(fd)
        write(str(tmp))
        # writers such as safetensors.save_file replace the file with a private (0o600) one
        os.chmod(tmp, mode)
        with open(tmp, "rb+") as f:
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    fsync_dir(folder)


def atomic_write_bytes(path: PathLike, data: bytes) -> None:
    """Write `data` to `path` atomically (see `atomic_write`): readers see the old or the new file, never a mix."""

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(data)

    atomic_write(path, write)


def write_text(path: PathLike, text: str) -> None:
    """Write `text` (UTF-8) to `path` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def write_json(path: PathLike, obj: Any, indent: int | None = 2) -> None:
    """Write `obj` as JSON (and a final newline) to `path` atomically."""
    write_text(path, json.dumps(obj, indent=indent) + "\n")
