"""What the command lines show of the library's messages: settings as flags, errors and warnings as one line.

The library names a setting by its config field, `batch_size` (dalle_pytorch.errors); every such
field is the flag ``--batch_size`` of the scripts. `flag_errors` rewrites the messages of the
TrainingErrors and GenerationErrors raised inside it that way, `flag_text` any other text (the
notes a run prints), `one_line` gives an error as one line and `one_line_warnings` shows warnings
as ``warning: <message>`` instead of Python's file:line and source line.
"""
from __future__ import annotations

import contextlib
import sys
import warnings
from typing import Iterator

from dalle_pytorch.cli.flags import flag
from dalle_pytorch.errors import FieldMessage, name_fields

__all__ = ["flag_of", "flag_text", "flag_errors", "one_line", "one_line_warnings"]


def flag_of(field: str) -> str:
    """The flag of a setting (`flags.flag`: ``--<field>``, or its alias such as --top_k for filter_thres)."""
    return flag(field)


def flag_text(text: str) -> str:
    """`text` with the settings it names (`field`) written as their flags."""
    return name_fields(text, flag_of)


@contextlib.contextmanager
def flag_errors() -> Iterator[None]:
    """Re-raise the TrainingErrors / GenerationErrors raised inside with their settings named by their flags."""
    try:
        yield
    except FieldMessage as e:
        e.args = (e.message_for(flag_of),)
        raise


def one_line(error: BaseException) -> str:
    """The message of `error` on one line (an error raised in a DataLoader worker carries its traceback:
    keep its last line, the original message)."""
    text = str(error).strip()
    if "Original Traceback" in text:
        text = text.splitlines()[-1]
        text = text.split(": ", 1)[1] if ": " in text else text
    return " ".join(text.split())


def show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """`warnings.showwarning` for the command lines: ``warning: <message>`` on one line, no source line."""
    stream = file if file is not None else sys.stderr
    try:
        stream.write(f"warning: {one_line(message)}\n")
        stream.flush()
    except (OSError, ValueError, AttributeError):  # a closed or missing stderr: warnings are never fatal
        pass


@contextlib.contextmanager
def one_line_warnings() -> Iterator[None]:
    """Within: warnings print as ``warning: <message>`` (the previous way is restored after)."""
    with warnings.catch_warnings():
        warnings.showwarning = show_warning
        yield
