"""The package's exception types: each carries a message meant to be shown to a user as one line.

- `CheckpointError` (a ValueError): a file that cannot be loaded as asked (unreadable, foreign,
  unsafe, or weights that do not fit the stored config), with the reason.
- `TrainingError` (a RuntimeError): a training run that cannot start or go on, with what to do.
- `GenerationError` (a ValueError): a bad request to generate.py / the pipeline (flags, files).
- `NotRegularFileError` (an OSError): a path that names a FIFO, a device, a socket or a /proc-like
  pseudo-file where a file is read; the package only opens regular files.
- `DiskFullError` (an OSError): a write that ran out of space (or quota); nothing partial is left.

Messages name settings in the terms of whoever shows them.  Library code writes `setting("seed")`
where a message names a setting: the library's own name (`seed`) by default, the flag (`--seed`)
inside the command line's `setting_names(...)`, the JSON field inside the server's, so an error
says "--seed must be in [0, 2**64 - 2] ..." to a command-line user and "seed must be ..." to an
HTTP client or a Python caller, from one message.
"""
from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from typing import Callable, Iterator, Mapping, Optional, Union

__all__ = ["CheckpointError", "TrainingError", "GenerationError", "NotRegularFileError", "DiskFullError", "setting",
           "setting_names"]

Names = Union[Mapping[str, str], Callable[[str], str]]
#: how `setting` names a setting in the current context (None: by its library name)
_names: ContextVar[Optional[Callable[[str], str]]] = ContextVar("dalle_pytorch_setting_names", default=None)


def setting(name: str) -> str:
    """How a message names the setting `name` here: itself, or what the enclosing `setting_names` says."""
    names = _names.get()
    return name if names is None else names(name)


@contextmanager
def setting_names(names: Names) -> Iterator[None]:
    """Within the block (this thread or task), messages name settings by `names`: a mapping (names it
    lacks stay as they are) or a function of the name (e.g. `lambda n: "--" + n` for flags)."""
    if not callable(names):
        table = dict(names)
        names = lambda n: table.get(n, n)  # noqa: E731
    token = _names.set(names)
    try:
        yield
    finally:
        _names.reset(token)


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
