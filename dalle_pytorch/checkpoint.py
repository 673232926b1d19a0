"""Compatibility module: checkpoint reading and writing live in `dalle_pytorch.io` now.

`from dalle_pytorch.checkpoint import save, load, load_checkpoint, ...` keeps working; new code
imports from `dalle_pytorch.io.checkpoint` (our format and the one `load_checkpoint`) and
`dalle_pytorch.io.training_state`.
"""
from dalle_pytorch.errors import CheckpointError
from dalle_pytorch.io.build import OVERRIDABLE, LoadedCheckpoint
from dalle_pytorch.io.checkpoint import FORMAT, FORMAT_VERSION, load, load_checkpoint, save
from dalle_pytorch.io.files import atomic_write_bytes
from dalle_pytorch.io.training_state import load_training_state, save_training_state

__all__ = ["CheckpointError", "LoadedCheckpoint", "save", "load", "load_checkpoint", "save_training_state",
           "load_training_state", "atomic_write_bytes", "FORMAT", "FORMAT_VERSION", "OVERRIDABLE"]
