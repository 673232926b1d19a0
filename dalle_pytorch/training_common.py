"""What the training modules share: :class:`TrainingError` and atomic text writes into a run folder."""
from __future__ import annotations


class TrainingError(RuntimeError):
    """A run that cannot start or go on; the message says why and what to do."""


def _write_text(path: str, text: str) -> None:
    from dalle_pytorch.fileio import atomic_write_bytes

    atomic_write_bytes(path, text.encode("utf-8"))
