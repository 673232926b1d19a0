"""The package's exception types: each carries a message meant to be shown to a user as one line.

- `CheckpointError` (a ValueError): a file that cannot be loaded as asked (unreadable, foreign,
  unsafe, or weights that do not fit the stored config), with the reason.
- `TrainingError` (a RuntimeError): a training run that cannot start or go on, with what to do.
- `GenerationError` (a ValueError): a bad request to generate.py / the pipeline (flags, files).
- `NotRegularFileError` (an OSError): a path that names a FIFO, a device, a socket or a /proc-like
  pseudo-file where a file is read; the package only opens regular files.
- `DiskFullError` (an OSError): a write that ran out of space (or quota); nothing partial is left.

A `TrainingError` or `GenerationError` names the settings it is about (config fields such as
`batch_size`) between backquotes in the message it is raised with: ``TrainingError("`batch_size` must
be >= 1, got 0")``. Its str() shows the bare names ("batch_size must be >= 1, got 0"), `fields` lists
them, and `message_for(name)` writes each as `name(field)` names it: the command line shows its flags
(``--batch_size must be >= 1, got 0``). `name_fields` does the same for any text (a run's notes).
"""
from __future__ import annotations

import re
from typing import Callable, Optional

__all__ = ["CheckpointError", "TrainingError", "GenerationError", "NotRegularFileError", "DiskFullError",
           "FieldMessage", "name_fields"]

#: a setting named in a message: `field` (or `prefix_*` for a family of fields)
FIELD = re.compile(r"`([A-Za-z_][A-Za-z0-9_]*\*?)`")


def name_fields(text: str, name: Optional[Callable[[str], str]] = None) -> str:
    """`text` with every `field` it names written as ``name(field)`` (default: the bare field name)."""
    return FIELD.sub(lambda m: name(m[1]) if name is not None else m[1], text)


class FieldMessage(Exception):
    """An exception whose message names settings as `field` (see the module docstring).

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
        """The message with each field it names written as ``name(field)`` (default: the bare name)."""
        text = name_fields(self.template, name)
        if self.prefix is not None:
            text = f"{name(self.prefix) if name is not None else self.prefix}: {text}"
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
