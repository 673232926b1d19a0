"""Files: atomic writes, and the checks every read goes through.

Writes: a new file appears complete or not at all, and a failed write leaves the old one (used for
every file the package writes that a crash must not corrupt: checkpoints, training state, run
summaries, sample grids, generated images and records, the dataset index cache).  A write that runs
out of space says so in one line and leaves no partial file.

Reads: `regular_file` refuses anything but a regular file before it is opened (a FIFO would block
forever, /dev/zero never ends, /proc files lie about their size), and `read_bytes` reads at most a
given number of bytes.
"""
from __future__ import annotations

import errno
import io
import json
import os
import re
import secrets
import stat
from pathlib import Path
from typing import Any, BinaryIO, Callable, Optional, Union

PathLike = Union[str, "os.PathLike[str]"]

from dalle_pytorch.errors import DiskFullError, NotRegularFileError

__all__ = ["atomic_write", "atomic_write_bytes", "write_text", "write_json", "fsync_dir", "regular_file", "open_regular",
           "read_bytes", "is_disk_full", "NO_SPACE_ERRNOS"]

#: errno values of a write that ran out of room (disk full, quota, file-size limit)
NO_SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
_PSEUDO_ROOTS = ("/proc", "/sys", "/dev")


def regular_file(path: PathLike, what: str = "file") -> Path:
    """`path` as a Path if it names an existing regular file (symlinks followed); otherwise raise
    FileNotFoundError, IsADirectoryError or NotRegularFileError with a one-line message naming `what`.

    Pseudo-files under /proc, /sys and /dev are refused too: they can claim a size of 0 and never end.
    """
    p = Path(os.fspath(path))
    try:
        st = os.stat(p)
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} {str(p)!r} does not exist") from None
    except OSError as e:
        raise NotRegularFileError(f"{what} {str(p)!r} cannot be read ({e.strerror or e})") from None
    if stat.S_ISDIR(st.st_mode):
        raise IsADirectoryError(f"{what} {str(p)!r} is a directory, not a file")
    if not stat.S_ISREG(st.st_mode):
        kind = ("a FIFO (named pipe)" if stat.S_ISFIFO(st.st_mode) else "a device" if stat.S_ISCHR(st.st_mode)
                or stat.S_ISBLK(st.st_mode) else "a socket" if stat.S_ISSOCK(st.st_mode) else "something else")
        raise NotRegularFileError(f"{what} {str(p)!r} is {kind}, not a regular file; only regular files are read")
    real = os.path.realpath(p)
    if any(real == root or real.startswith(root + os.sep) for root in _PSEUDO_ROOTS):
        raise NotRegularFileError(f"{what} {str(p)!r} is a pseudo-file ({real}), not a regular file; only regular "
                                  "files are read")
    return p


def open_regular(path: PathLike, what: str = "file", max_bytes: Optional[int] = None) -> BinaryIO:
    """Open the regular file `path` for binary reading (of at most `max_bytes` bytes: ValueError beyond).

    `regular_file` names the problem first; the file is then opened without blocking and checked
    again on the opened descriptor, so a FIFO swapped in between cannot block the reader.
    """
    p = regular_file(path, what)
    # O_NONBLOCK: opening a FIFO must not wait for a writer; regular files ignore the flag
    fd = os.open(p, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise NotRegularFileError(f"{what} {str(p)!r} is not a regular file; only regular files are read")
        if max_bytes is not None and st.st_size > max_bytes:
            raise ValueError(f"{what} {str(p)!r} is {st.st_size:,} bytes, more than the {max_bytes:,} such a file "
                             "can need; refusing to read it")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return io.open(fd, "rb", closefd=True)
    except BaseException:
        os.close(fd)
        raise


def read_bytes(path: PathLike, what: str = "file", limit: int = 1 << 30) -> bytes:
    """The bytes of the regular file `path`, refused (ValueError) when it holds more than `limit` bytes."""
    with open_regular(path, what, limit) as f:
        data = f.read(limit + 1)
    if len(data) > limit:  # it grew after the check
        raise ValueError(f"{what} {os.fspath(path)!r} is more than the {limit:,} bytes such a file can need; "
                         "refusing to read it")
    return data


_NO_SPACE_TEXT = re.compile(r"No space left on device|Disk quota exceeded|File too large|os error (?:%s)\b"
                            % "|".join(str(e) for e in sorted(NO_SPACE_ERRNOS)))


def is_disk_full(error: BaseException) -> bool:
    """Whether `error` (or what caused it) is a write that ran out of room (writers that are not plain
    Python, such as safetensors', report it only in their message: "... (os error 28)")."""
    while error is not None:
        if isinstance(error, OSError) and error.errno in NO_SPACE_ERRNOS:
            return True
        if _NO_SPACE_TEXT.search(str(error)):
            return True
        error = error.__cause__ or error.__context__
    return False


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
        except OSError as e:  # read-only file system, permissions, ...: name the file, not the temporary one
            raise type(e)(e.errno, f"cannot write {str(path)!r}: {e.strerror}") from None
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
    except BaseException as e:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(e, Exception) and is_disk_full(e):
            code = next((x.errno for x in (e, e.__cause__, e.__context__) if isinstance(x, OSError)
                         and x.errno in NO_SPACE_ERRNOS), errno.EFBIG if "File too large" in str(e) else errno.ENOSPC)
            raise DiskFullError(f"no space left on device while writing {str(path)!r} ({os.strerror(code)}); "
                                "nothing was written there (an earlier file at that path is intact)", code) from e
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
