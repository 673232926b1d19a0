"""Tiny models and inputs shared by the tests (import as `from tests.helpers import ...`)."""
import torch

from dalle_pytorch import DALLE, DiscreteVAE

ATTN_TYPES = ("full", "axial_row", "axial_col", "conv_like", "sparse")


def tiny_vae(**kwargs):
    cfg = dict(image_size=32, num_layers=2, num_tokens=64, codebook_dim=32, hidden_dim=16)
    cfg.update(kwargs)
    return DiscreteVAE(**cfg)


def tiny_dalle(attn_type="full", seed=0, **kwargs):
    """dim 32, depth 2, 8x8 image tokens; the first layer uses `attn_type`, the second full attention."""
    torch.manual_seed(seed)
    cfg = dict(dim=32, vae=tiny_vae(), num_text_tokens=50, text_seq_len=6, depth=2, heads=2, dim_head=16,
               attn_types=(attn_type, "full"), sparse_block_size=8, sparse_num_random_blocks=1)
    cfg.update(kwargs)
    return DALLE(**cfg)


def random_text(batch=2, seed=0, num_text_tokens=50, text_seq_len=6):
    g = torch.Generator().manual_seed(seed)
    text = torch.randint(1, num_text_tokens, (batch, text_seq_len), generator=g)
    text[-1, text_seq_len - 2 :] = 0  # padding in the last row
    return text


def prefilled_caches(model, text, copies=2):
    """`copies` caches for `text`'s rows, each prefilled with its ids (to compare two ways of stepping)."""
    caches = [model.setup_cache(text.shape[0]) for _ in range(copies)]
    for cache in caches:
        model.prefill(model.text_ids(text), None, cache)
    return caches


def demo_tokenizer():
    """The demo model's word-level tokenizer (15 tokens: the shapes captions' words)."""
    from pathlib import Path

    import dalle_pytorch
    from dalle_pytorch.text.factory import HugTokenizer

    return HugTokenizer(Path(dalle_pytorch.__file__).parent / "demo" / "tokenizer.json")


def tiny_pipeline(attn_type="full", seed=0, **kwargs):
    """A Pipeline over a tiny random DALLE (text_seq_len 8) with the demo tokenizer: captions are
    shapes captions ("a red circle on a blue background")."""
    from dalle_pytorch.pipeline.text_to_image import Pipeline

    tokenizer = demo_tokenizer()
    cfg = dict(num_text_tokens=tokenizer.vocab_size, text_seq_len=8)
    cfg.update(kwargs)
    return Pipeline(tiny_dalle(attn_type, seed=seed, **cfg).eval(), tokenizer)


def load_script(name):
    """The entry point module of a script (train_vae, train_dalle, generate): `dalle_pytorch.cli.<name>`."""
    import importlib

    return importlib.import_module(f"dalle_pytorch.cli.{name}")


def word_tokenizer_json(path):
    """A word-level `tokenizers` JSON over the synthetic captions' words ([PAD] = 0); returns `path`."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

    from dalle_pytorch.synthetic import COLORS, SHAPES

    words = ["[PAD]", "[UNK]", "a", "on", "background", ","] + list(COLORS) + list(SHAPES)
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(path))
    return path
