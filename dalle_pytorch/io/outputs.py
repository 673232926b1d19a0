"""The former path of `dalle_pytorch.pipeline.outputs` (kept: documented up to 2.0); import from there."""
from dalle_pytorch.pipeline.outputs import *  # noqa: F401,F403
from dalle_pytorch.pipeline.outputs import __all__  # noqa: F401
