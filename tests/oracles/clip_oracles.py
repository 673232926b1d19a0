"""open_clip as a test oracle, and a tiny random open_clip model saved as local files.

open_clip_torch 3.3.0 and torchvision 0.28.0 are test-only oracles (installed by .ci/run with
--no-deps: their requirements would replace the pinned CPU torch). PyPI's torchvision 0.28.0 is a
CUDA build whose compiled operators do not load beside the CPU torch 2.13.0: `import torchvision`
fails while registering meta kernels for them (`operator torchvision::nms does not exist`). Its
pure-Python transforms, all open_clip's preprocessing uses, work: `import_open_clip` imports
torchvision with just those registrations tolerated (torch.library.Library.impl restored after).
The package itself never uses this: it imports open_clip plainly (on users' machines torchvision
matches torch).
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

ORACLES = "pip install --no-deps torchvision==0.28.0 open_clip_torch==3.3.0"

#: a tiny open_clip architecture: ViT (5x5 patches of 8 px, one layer) + text transformer (one layer),
#: with the full CLIP vocabulary (open_clip's bundled tokenizer) and a short context
TINY = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 40, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}
#: the same with open_clip's custom text tower (CustomTextCLIP: its text parameters live under text.)
TINY_CUSTOM_TEXT = {**TINY, "custom_text": True}


def _import_torchvision_tolerantly() -> None:
    if "torchvision" in sys.modules:
        return
    library = torch.library.Library
    impl = library.impl

    def tolerant(self, *args, **kwargs):
        try:
            return impl(self, *args, **kwargs)
        except RuntimeError as e:  # a kernel for an operator of torchvision's compiled part, which did not load
            if "does not exist" in str(e):
                return None
            raise

    library.impl = tolerant
    try:
        import torchvision  # noqa: F401
    finally:
        library.impl = impl


def import_open_clip():
    """The real open_clip; without it the test is skipped, except in CI (DALLE_PYTORCH_CI=1), where a
    missing oracle is a failure."""
    try:
        _import_torchvision_tolerantly()
        import open_clip
    except ImportError:
        if os.environ.get("DALLE_PYTORCH_CI"):
            raise
        import pytest

        pytest.skip(f"the test oracle open_clip is not installed ({ORACLES})")
    return open_clip


def oracle_model(open_clip, config: dict, folder: Path, name: str, seed: int = 0):
    """Write `config` as folder/name.json, register it with open_clip and build it randomly initialised
    (every parameter perturbed, so each matters; a logit scale that is not 1). Returns (config path, model)."""
    path = folder / f"{name}.json"
    path.write_text(json.dumps(config))
    open_clip.add_model_config(path)
    torch.manual_seed(seed)
    model = open_clip.create_model(name, pretrained=None)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return path, model.eval()
