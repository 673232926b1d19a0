"""Run one of DALLE-pytorch 1.6.6's own scripts, unchanged, against the dalle_pytorch installed here.

    git clone https://github.com/lucidrains/DALLE-pytorch && git -C DALLE-pytorch checkout 1.6.6
    WANDB_MODE=disabled python tests/oracles/run_dalle_pytorch_script.py DALLE-pytorch/train_vae.py --image_folder ...

Its scripts are not copied here (docs/migrating.md records the commands and what they printed). The
runner changes the environment, not the scripts nor this package: PyPI's torchvision 0.28 is a CUDA
build (imported as tests/oracles/clip_oracles.py does); the scripts call `.cuda()` unconditionally,
which is the identity on a machine without a GPU; and two libraries changed since 1.6.6 was
written: torchvision's `make_grid(range=)` is `value_range=` now, and `wandb.Image` no longer takes
a (1, c, h, w) batch.
"""
import runpy
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # this repository (tests.oracles)
from tests.oracles.clip_oracles import _import_torchvision_tolerantly  # noqa: E402

_import_torchvision_tolerantly()

import torch  # noqa: E402

# DALLE-pytorch's scripts call .cuda() unconditionally; this machine has no GPU: CUDA moves are the identity
torch.nn.Module.cuda = lambda self, *args, **kwargs: self
torch.Tensor.cuda = lambda self, *args, **kwargs: self
# torchvision renamed make_grid's `range` to `value_range` (0.13) after DALLE-pytorch 1.6.6 was written
import torchvision.utils as tv_utils  # noqa: E402

_make_grid = tv_utils.make_grid


def make_grid(*args, range=None, **kwargs):  # noqa: A002
    return _make_grid(*args, value_range=range, **kwargs) if range is not None else _make_grid(*args, **kwargs)


tv_utils.make_grid = make_grid
# wandb.Image took DALLE-pytorch's (1, c, h, w) samples when it was written; today's wants (c, h, w)
import wandb  # noqa: E402

_Image = wandb.Image


def Image(data, *args, **kwargs):  # noqa: N802
    if hasattr(data, "dim") and data.dim() == 4 and data.shape[0] == 1:
        data = data[0]
    return _Image(data, *args, **kwargs)


wandb.Image = Image
script = sys.argv[1]
sys.argv = sys.argv[1:]
runpy.run_path(script, run_name="__main__")
