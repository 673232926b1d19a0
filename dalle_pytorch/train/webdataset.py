"""Caption/image batches from WebDataset tar shards (the optional `webdataset` package).

Each sample is decoded like a `TextImageDataset` item: one random caption line, a random resized
square crop, pixels in [0, 1].
"""
from __future__ import annotations

import glob
import io
import os
import random
from functools import partial
from typing import Any, Iterable, Sequence

import torch

from dalle_pytorch.formats.images import read_image
from dalle_pytorch.text.factory import get_default_tokenizer
from dalle_pytorch.train.datasets import BadSample, caption_lines, image_to_tensor, random_resized_crop, tokenize_caption

__all__ = ["webdataset_loader", "webdataset_module", "expand_shards", "shard_pipeline", "collate_pairs", "read_wds_pair"]

_WEBDATASET_HINT = (
    "reading tar shards needs the optional 'webdataset' package: "
    "pip install webdataset (the webdataset extra of this package)"
)


def expand_shards(urls: str | Sequence[str]) -> list[str]:
    """Expand local globs and directories (-> their ``*.tar``) and brace patterns (``shard-{000..099}.tar``, also in
    URLs); keep other paths and URLs (ValueError: none)."""
    items = [urls] if isinstance(urls, (str, os.PathLike)) else list(urls)
    out: list[str] = []
    for item in items:
        item = os.fspath(item)
        if "{" in item:  # a brace pattern (shard-{000..099}.tar), also in a URL
            from webdataset.shardlists import expand_urls

            out.extend(expand_urls(item))
        elif "://" in item or item.startswith("pipe:"):
            out.append(item)
        elif os.path.isdir(item):
            found = sorted(glob.glob(os.path.join(item, "*.tar")))
            if not found:
                raise ValueError(f"no .tar shards in directory {item!r}")
            out.extend(found)
        elif glob.has_magic(item):
            found = sorted(glob.glob(os.path.expanduser(item)))
            if not found:
                raise ValueError(f"no file matches {item!r}")
            out.extend(found)
        else:
            out.append(item)
    if not out:
        raise ValueError("an empty list of shards")
    return out


def read_wds_pair(sample: dict, image_key: str, caption_key: str, mode: str, name: str) -> tuple[list[str], Any]:
    """The caption lines and the decoded image (PIL, in `mode`) of one raw WebDataset sample; BadSample(name, why)
    for a missing member, a caption that is not UTF-8 or is empty, or an unreadable image."""
    for key in (image_key, caption_key):
        if key not in sample:
            raise BadSample(name, f"no {key} member")
    raw_text = sample[caption_key]
    try:
        lines = caption_lines(raw_text.decode("utf-8") if isinstance(raw_text, bytes) else str(raw_text))
    except UnicodeDecodeError as e:
        raise BadSample(name, f"caption is not UTF-8 ({e})") from None
    if not lines:
        raise BadSample(name, "empty caption")
    try:
        image = read_image(io.BytesIO(sample[image_key]), mode)
    except Exception as e:  # PIL raises many types for broken files
        raise BadSample(name, f"unreadable image ({type(e).__name__}: {e})") from None
    return lines, image


def _decode_wds_sample(
    sample: dict,
    image_key: str,
    caption_key: str,
    text_len: int,
    image_size: int,
    tokenizer: Any,
    truncate_captions: bool,
    resize_ratio: float,
    mode: str = "RGB",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Turn one raw WebDataset sample (``{key: bytes}``) into ``(text, image)``:
    LongTensor (text_len,) and FloatTensor (C, image_size, image_size) in [0, 1]."""
    lines, image = read_wds_pair(sample, image_key, caption_key, mode, repr(sample.get("__key__")))
    rng = random.Random()
    tokens = tokenize_caption(tokenizer, rng.choice(lines), text_len, truncate_captions)
    image = random_resized_crop(image, image_size, (resize_ratio, 1.0), (1.0, 1.0), rng)
    return tokens, image_to_tensor(image)


def collate_pairs(samples: list) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch of (text, image or codes) samples: the texts stacked, the images (or codes) stacked."""
    texts, images = zip(*samples)
    return torch.stack(texts), torch.stack(images)


def webdataset_loader(
    urls: str | list[str],
    image_key: str = "jpg",
    caption_key: str = "txt",
    text_len: int = 256,
    image_size: int = 128,
    tokenizer: Any = None,
    truncate_captions: bool = False,
    resize_ratio: float = 0.75,
    batch_size: int = 32,
    num_workers: int = 0,
    shuffle_buffer: int = 1000,
    transparent: bool = False,
) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
    """Batches of (text, image) read from WebDataset tar shards.

    Needs the optional ``webdataset`` package (``pip install webdataset``).
    Shards are split across distributed ranks (``wds.split_by_node``) and then across
    DataLoader workers (``wds.split_by_worker``), so use at least ``world_size *
    max(1, num_workers)`` shards or some ranks/workers get none. Samples whose image or
    caption cannot be decoded are skipped with a warning (``wds.warn_and_continue``).
    Incomplete last batches are dropped.

    Args:
        urls: shard URL(s); local paths may be globs (``data/*.tar``) or directories
            (all their ``*.tar``), brace patterns (``shard-{000..099}.tar``) and remote
            URLs are passed to webdataset as they are.
        image_key / caption_key: file extensions of the image and caption in a sample.
        text_len, image_size, tokenizer, truncate_captions, resize_ratio, transparent:
            as for :class:`TextImageDataset`.
        batch_size: samples per batch.
        num_workers: DataLoader worker processes.
        shuffle_buffer: size of the sample shuffle buffer (0 disables shuffling).

    Returns:
        An iterable (``wds.WebLoader``) of ``(text, image)`` batches: LongTensor
        (batch_size, text_len) and FloatTensor (batch_size, C, image_size, image_size).
    """
    wds = webdataset_module()
    if tokenizer is None:
        tokenizer = get_default_tokenizer()
    decode = partial(
        _decode_wds_sample,
        image_key=image_key,
        caption_key=caption_key,
        text_len=text_len,
        image_size=image_size,
        tokenizer=tokenizer,
        truncate_captions=truncate_captions,
        resize_ratio=resize_ratio,
        mode="RGBA" if transparent else "RGB",
    )
    return shard_pipeline(wds, expand_shards(urls), decode, collate_pairs, batch_size, num_workers, shuffle_buffer)


def webdataset_module():
    """The optional `webdataset` package (ImportError naming the extra when it is not installed)."""
    try:
        import webdataset as wds
    except ImportError as e:
        raise ImportError(_WEBDATASET_HINT) from e
    return wds


def shard_pipeline(wds, shards: list[str], decode, collate, batch_size: int, num_workers: int,
                   shuffle_buffer: int) -> Iterable:
    """Batches of `collate`d `decode(sample)` items of the tar `shards`: split by rank and by worker, shards and
    samples shuffled (unless `shuffle_buffer` is 0), undecodable samples skipped with a warning, incomplete last
    batches dropped. `decode` must be picklable (a module function or a partial of one) for worker processes."""
    stages: list[Any] = [wds.SimpleShardList(shards), wds.split_by_node, wds.split_by_worker]
    if shuffle_buffer > 0:
        # Shuffles this worker's own shards only (after splitting), so ranks stay disjoint.
        stages.append(wds.shuffle(len(shards)))
    stages.append(wds.tarfile_to_samples(handler=wds.warn_and_continue))
    if shuffle_buffer > 0:
        stages.append(wds.shuffle(shuffle_buffer))
    stages.append(wds.map(decode, handler=wds.warn_and_continue))
    stages.append(wds.batched(batch_size, collation_fn=collate, partial=False))
    pipeline = wds.DataPipeline(*stages)
    return wds.WebLoader(pipeline, batch_size=None, shuffle=False, num_workers=num_workers)
