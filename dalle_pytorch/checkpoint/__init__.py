"""Floor 4, checkpoints: the one package that names every model class and tokenizer.

    ours.py            our safetensors format: save, load_checkpoint (every file kind), load
    build.py           rebuilding models from stored configs, strictly (LoadedCheckpoint)
    legacy.py          DALLE-pytorch's .pt files and the key remapper for every layout
    training_state.py  optimizer, RNG and progress files of a training run
    pretrained.py      DALLE-pytorch's pretrained VAEs (VQGAN, OpenAI's dVAE) as its scripts choose them
    clip_weights.py    pretrained OpenCLIP / OpenAI CLIP weights for reranking

The names below are re-exported (`from dalle_pytorch.checkpoint import load_checkpoint` is the
documented path); importing this package loads ours, build and training_state.
"""
from dalle_pytorch.checkpoint.build import OVERRIDABLE, LoadedCheckpoint
from dalle_pytorch.checkpoint.ours import FORMAT, FORMAT_VERSION, load, load_checkpoint, save
from dalle_pytorch.checkpoint.training_state import load_training_state, save_training_state
from dalle_pytorch.errors import CheckpointError

__all__ = ["CheckpointError", "LoadedCheckpoint", "save", "load", "load_checkpoint", "save_training_state",
           "load_training_state", "FORMAT", "FORMAT_VERSION", "OVERRIDABLE"]
