"""dalle_pytorch: DALL-E style text-to-image models with exact, fast cached inference."""
from dalle_pytorch.version import __version__
from dalle_pytorch.config import DALLEConfig
from dalle_pytorch.sampling import SamplingConfig
from dalle_pytorch.vae import DiscreteVAE
from dalle_pytorch.vqgan import VQGanVAE
from dalle_pytorch.openai_dvae import OpenAIDiscreteVAE
from dalle_pytorch.dalle import DALLE
from dalle_pytorch.clip import CLIP
from dalle_pytorch.errors import CheckpointError, GenerationError, TrainingError
from dalle_pytorch.io.checkpoint import load, load_checkpoint, save
from dalle_pytorch.tokenizer import (ChineseTokenizer, HugTokenizer, SimpleTokenizer, YttmTokenizer,
                                    get_default_tokenizer)
from dalle_pytorch.pipeline import Pipeline

__all__ = ["DALLE", "DALLEConfig", "DiscreteVAE", "VQGanVAE", "OpenAIDiscreteVAE", "CLIP", "SamplingConfig", "Pipeline",
           "SimpleTokenizer", "HugTokenizer", "YttmTokenizer", "ChineseTokenizer", "get_default_tokenizer", "load",
           "load_checkpoint", "save", "CheckpointError", "GenerationError", "TrainingError", "__version__"]
