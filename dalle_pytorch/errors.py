"""The package's exception types: each carries a message meant to be shown to a user as one line.

- `CheckpointError` (a ValueError): a file that cannot be loaded as asked (unreadable, foreign,
  unsafe, or weights that do not fit the stored config), with the reason.
- `TrainingError` (a RuntimeError): a training run that cannot start or go on, with what to do.
- `GenerationError` (a ValueError): a bad request to generate.py / the pipeline (flags, files).
- `NotRegularFileError` (an OSError): a path that names a FIFO, a device, a socket or a /proc-like
  pseudo-file where a file is read; the package only opens regular files.
- `DiskFullError` (an OSError): a write that ran out of space (or quota); nothing partial is left.
"""
from __future__ import annotations

__all__ = ["CheckpointError", "TrainingError", "GenerationError", "NotRegularFileError", "DiskFullError"]


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded as asked, with the reason."""


class TrainingError(RuntimeError):
    """A run that cannot start or go on; the message says why and what to do."""


class GenerationError(ValueError):
    """A problem with a generation request (bad flag combination, missing file, ...)."""


class NotRegularFileError(OSError):
    """A path that is not a regular file (FIFO, device, socket, pseudo-file), refused before it is opened."""


class DiskFullError(OSError):
    """A write that ran out of room; the message names the file, and no partial file is left behind."""

    def __init__(self, message: str, errno: int = 28) -> None:
        super().__init__(message)
        self.errno = errno  # ENOSPC unless the cause said otherwise (EDQUOT, EFBIG)
