"""dalle_pytorch: DALL-E style text-to-image models with exact, fast cached inference."""
from dalle_pytorch.version import __version__
from dalle_pytorch.vae import DiscreteVAE
from dalle_pytorch.dalle import DALLE
from dalle_pytorch.clip import CLIP
from dalle_pytorch.checkpoint import load, load_checkpoint, save
from dalle_pytorch.tokenizer import (ChineseTokenizer, HugTokenizer, SimpleTokenizer, YttmTokenizer,
                                    get_default_tokenizer)

__all__ = ["DALLE", "DiscreteVAE", "CLIP", "SimpleTokenizer", "HugTokenizer", "YttmTokenizer",
           "ChineseTokenizer", "get_default_tokenizer", "load", "load_checkpoint", "save", "__version__"]
