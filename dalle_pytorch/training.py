"""Compatibility module: training lives in the `dalle_pytorch.train` package now.

The names this module used to define stay importable from here (`from dalle_pytorch.training
import TrainingError, ImageFolder, ...`); new code imports them from their modules in
`dalle_pytorch.train` (see its docstring for the map).
"""
from dalle_pytorch.errors import TrainingError
from dalle_pytorch.images import image_grid
from dalle_pytorch.io.images import save_image_grid
from dalle_pytorch.train.args import add_common_args
from dalle_pytorch.train.checkpoints import LATEST_NAME, CheckpointManager, weights_digest
from dalle_pytorch.train.datasets import ImageFolder
from dalle_pytorch.train.distributed import DistEnv, init_distributed
from dalle_pytorch.train.optim import lr_multiplier
from dalle_pytorch.train.precision import check_precision
from dalle_pytorch.train.run import cli, run
from dalle_pytorch.train.runlog import LOG_NAME
from dalle_pytorch.train.tasks import Task, dalle_task, vae_task

#: the former names of the two task builders
build_vae_task, build_dalle_task = vae_task, dalle_task

__all__ = ["TrainingError", "DistEnv", "ImageFolder", "Task", "CheckpointManager", "add_common_args",
           "init_distributed", "check_precision", "lr_multiplier", "image_grid", "save_image_grid",
           "weights_digest", "build_vae_task", "build_dalle_task", "vae_task", "dalle_task", "run", "cli",
           "LATEST_NAME", "LOG_NAME"]
