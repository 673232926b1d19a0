"""Opening files that come from users: regular files only, with a size cap.

A FIFO, a device or a folder given where a weights or config file belongs would block (a FIFO
waits for a writer), read forever (/dev/zero) or fail obscurely; these helpers refuse them in one
line. The file is opened without blocking and checked with fstat on the opened descriptor, so the
check and the read see the same file.
"""
from __future__ import annotations

import io
import os
import stat
from typing import BinaryIO, Optional, Union

PathLike = Union[str, "os.PathLike[str]"]

__all__ = ["open_regular_file", "read_regular_file"]


def open_regular_file(path: PathLike, what: str = "file", max_bytes: Optional[int] = None) -> BinaryIO:
    """Open `path` for binary reading if it is a regular file (of at most `max_bytes` bytes).

    Raises FileNotFoundError, or ValueError naming `what` and the path for a folder, FIFO, socket
    or device, or for a file over `max_bytes`.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        raise ValueError(f"{what} {path!r} is a folder, not a regular file")
    # O_NONBLOCK: opening a FIFO must not wait for a writer; regular files ignore the flag
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ValueError(f"{what} {path!r} is not a regular file (a FIFO, socket or device); refusing to read it")
        if max_bytes is not None and st.st_size > max_bytes:
            raise ValueError(f"{what} {path!r} is {st.st_size} bytes, more than the {max_bytes} such a file can need")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return io.open(fd, "rb", closefd=True)
    except BaseException:
        os.close(fd)
        raise


def read_regular_file(path: PathLike, what: str = "file", max_bytes: Optional[int] = None) -> bytes:
    """The bytes of a regular file (see `open_regular_file`)."""
    with open_regular_file(path, what, max_bytes) as f:
        data = f.read() if max_bytes is None else f.read(max_bytes + 1)
    if max_bytes is not None and len(data) > max_bytes:  # it grew after fstat
        raise ValueError(f"{what} {os.fspath(path)!r} is more than the {max_bytes} bytes such a file can need")
    return data
