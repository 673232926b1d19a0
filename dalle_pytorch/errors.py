"""The package's exception types: each carries a message meant to be shown to a user as one line.

- `CheckpointError` (a ValueError): a file that cannot be loaded as asked (unreadable, foreign,
  unsafe, or weights that do not fit the stored config), with the reason.
- `TrainingError` (a RuntimeError): a training run that cannot start or go on, with what to do.
- `GenerationError` (a ValueError): a bad request to generate.py / the pipeline (flags, files).
- `NotRegularFileError` (an OSError): a path that names a FIFO, a device, a socket or a /proc-like
  pseudo-file where a file is read; the package only opens regular files.
- `DiskFullError` (an OSError): a write that ran out of space (or quota); nothing partial is left.

Messages name settings in the terms of whoever shows them: the library's own name (`seed`) by
default, the flag (`--seed`) inside the command line's `setting_names(...)`, the JSON field inside
the server's, so one message says "--seed must be in [0, 2**64 - 2] ..." to a command-line user and
"seed must be ..." to an HTTP client or a Python caller.  There are two ways to name a setting in a
message, rendered by the same rule:
- `setting("seed")` inside an f-string (any message: errors of any type, warnings, labels);
- between backquotes in the message of a `TrainingError` / `GenerationError` (a `FieldMessage`):
  ``TrainingError("`batch_size` must be >= 1, got 0")``.  It is shown with the names in force where it
  is raised, and keeps its template: `fields` lists the settings, `message_for(name)` writes them
  another way (what `cli.messages.flag_errors` does for an error raised outside the command line's
  names, e.g. in a DataLoader worker); `name_fields` renders any text (a run's notes).
"""
from __future__ import annotations

import re
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Callable, Iterator, Mapping, Optional, Union

__all__ = ["CheckpointError", "TrainingError", "GenerationError", "NotRegularFileError", "DiskFullError", "setting",
           "setting_names", "FieldMessage", "name_fields"]

Names = Union[Mapping[str, str], Callable[[str], str]]
#: how `setting` names a setting in the current context (None: by its library name)
_names: ContextVar[Optional[Callable[[str], str]]] = ContextVar("dalle_pytorch_setting_names", default=None)

#: a setting named in a FieldMessage template: `field` (or `prefix_*` for a family of fields)
FIELD = re.compile(r"`([A-Za-z_][A-Za-z0-9_]*\*?)`")


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


def name_fields(text: str, name: Optional[Callable[[str], str]] = None) -> str:
    """`text` with every `field` it names written as ``name(field)`` (default: as `setting` names it here)."""
    return FIELD.sub(lambda m: (name or setting)(m[1]), text)


class FieldMessage(Exception):
    """An exception whose message template names settings as `field` (see the module docstring).

    field: the setting the error is about when the message does not name it (shown as a prefix,
    "field: message"); by default the first one it names.
    """

    def __init__(self, message: str = "", field: Optional[str] = None) -> None:
        self.template = str(message)
        named = FIELD.findall(self.template)
        self.prefix = field if field is not None and field not in named else None
        self.fields: tuple[str, ...] = tuple(dict.fromkeys(([field] if field else []) + named))
        self.field: Optional[str] = self.fields[0] if self.fields else None
        super().__init__(self.message_for())

    def message_for(self, name: Optional[Callable[[str], str]] = None) -> str:
        """The message with each field it names written as ``name(field)`` (default: as `setting` names it)."""
        name = name or setting
        text = name_fields(self.template, name)
        if self.prefix is not None:
            text = f"{name(self.prefix)}: {text}"
        return text


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded as asked, with the reason."""


class TrainingError(FieldMessage, RuntimeError):
    """A run that cannot start or go on; the message says why and what to do (naming settings as `field`)."""


class GenerationError(FieldMessage, ValueError):
    """A problem with a generation request (bad flag combination, missing file, ...)."""


class NotRegularFileError(OSError):
    """A path that is not a regular file (FIFO, device, socket, pseudo-file), refused before it is opened."""


class DiskFullError(OSError):
    """A write that ran out of room; the message names the file, and no partial file is left behind."""

    def __init__(self, message: str, errno: int = 28) -> None:
        super().__init__(message)
        self.errno = errno  # ENOSPC unless the cause said otherwise (EDQUOT, EFBIG)
