"""DALLE-pytorch's module path `dalle_pytorch.distributed_utils`: this name is dalle_pytorch.compat.distributed_utils
itself (not a copy of its names: scripts read its `backend` and `is_distributed` after set_backend_from_args)."""
import sys

from dalle_pytorch.compat import distributed_utils

sys.modules[__name__] = distributed_utils
