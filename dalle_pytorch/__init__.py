"""dalle_pytorch: DALL-E style text-to-image models with exact, fast cached inference."""
from dalle_pytorch.checkpoint.ours import load, load_checkpoint, save
from dalle_pytorch.errors import CheckpointError, GenerationError, TrainingError
from dalle_pytorch.generation.sampling import SamplingConfig
from dalle_pytorch.models.clip import CLIP
from dalle_pytorch.models.config import DALLEConfig
from dalle_pytorch.models.dalle import DALLE
from dalle_pytorch.models.openai_dvae import OpenAIDiscreteVAE
from dalle_pytorch.models.quantize import quantize
from dalle_pytorch.models.vae import DiscreteVAE
from dalle_pytorch.models.vqgan import VQGanVAE
from dalle_pytorch.pipeline.text_to_image import Pipeline
from dalle_pytorch.text.factory import (ChineseTokenizer, HugTokenizer, SimpleTokenizer, YttmTokenizer,
                                        get_default_tokenizer)
from dalle_pytorch.version import __version__

__all__ = ["DALLE", "DALLEConfig", "DiscreteVAE", "VQGanVAE", "OpenAIDiscreteVAE", "CLIP", "SamplingConfig", "Pipeline",
           "SimpleTokenizer", "HugTokenizer", "YttmTokenizer", "ChineseTokenizer", "get_default_tokenizer", "load",
           "load_checkpoint", "save", "quantize", "CheckpointError", "GenerationError", "TrainingError", "__version__"]
