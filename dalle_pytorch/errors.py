"""The package's exception types: each carries a message meant to be shown to a user as one line.

- `CheckpointError` (a ValueError): a file that cannot be loaded as asked (unreadable, foreign,
  unsafe, or weights that do not fit the stored config), with the reason.
- `TrainingError` (a RuntimeError): a training run that cannot start or go on, with what to do.
- `GenerationError` (a ValueError): a bad request to generate.py / the pipeline (flags, files).
"""
from __future__ import annotations

__all__ = ["CheckpointError", "TrainingError", "GenerationError"]


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded as asked, with the reason."""


class TrainingError(RuntimeError):
    """A run that cannot start or go on; the message says why and what to do."""


class GenerationError(ValueError):
    """A problem with a generation request (bad flag combination, missing file, ...)."""
