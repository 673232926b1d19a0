"""What the command lines show of the library's messages: settings as flags, errors and warnings as one line.

The library names a setting by its config field, `batch_size` (dalle_pytorch.errors); every such
field is the flag ``--batch_size`` of the scripts. `flag_errors` rewrites the messages of the
TrainingErrors and GenerationErrors raised inside it that way, `flag_text` any other text (the
notes a run prints) and `one_line` gives an error as one line.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

from dalle_pytorch.errors import FieldMessage, name_fields

__all__ = ["flag_of", "flag_text", "flag_errors", "one_line"]


def flag_of(field: str) -> str:
    """The flag of a config field: ``--<field>`` (aliases such as --save_every_n_steps lead to the same field)."""
    return f"--{field}"


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
