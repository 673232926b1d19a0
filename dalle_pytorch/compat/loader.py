"""`dalle_pytorch.loader`: DALLE-pytorch's `TextImageDataset` (an image-text folder), ours with its arguments.

`TextImageDataset(folder, text_len=256, image_size=128, truncate_captions=False, resize_ratio=0.75,
transparent=False, tokenizer=None, shuffle=False)` yields (tokenized caption (text_len,), image
(3 or 4, image_size, image_size) in [0, 1]) and skips a bad image or an empty caption file with a
warning naming it, as DALLE-pytorch's does (ours also counts what it skipped).
"""
from dalle_pytorch.train.datasets import TextImageDataset

__all__ = ["TextImageDataset"]
