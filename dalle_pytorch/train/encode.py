"""Encode a captioned-image dataset once: a frozen VAE's codes of every image, in code shards
(`dalle-encode`; the format: train/code_shards.py), so that `train_dalle.py --codes` never runs the VAE.

    config = EncodeConfig(source="data/", output_dir="codes/")
    encode_dataset(config, vae, vae_class="DiscreteVAE", vae_description="--vae_path vae.safetensors")

The source is cut into units (a folder: `shard_size` pairs each, in the order training reads them;
WebDataset input: one input shard each), and unit `u` becomes shard `codes-<u>.tar`. Units are
independent: under torchrun rank `r` encodes the units `u` with `u % world_size == r`, and a run that is
killed resumes at its first unfinished unit (a finished shard is kept; a half-written one never counts).
The manifest is written last, by rank 0, once every unit is done.

Crops: `crops` per image, each a random resized square crop of area fraction >= `resize_ratio` drawn from
a seed of (seed, unit, sample); at the default `resize_ratio` 1 the single crop is the one training takes
at `--resize_ratio 1` (the whole square image, or its centre square), the same for every seed.
A GumbelVQ samples its codes: each crop's codes are one draw, seeded by (seed, unit, batch), fixed at
encoding (training on images draws afresh every epoch).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import random
import time
import warnings
from typing import Iterator, Optional

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from dalle_pytorch.checkpoint.ours import save
from dalle_pytorch.distributed import DistEnv
from dalle_pytorch.errors import TrainingError
from dalle_pytorch.formats.files import read_bytes, write_json
from dalle_pytorch.train.code_shards import (MANIFEST, VAE_COPY, CodeSample, Manifest, ShardRecord, code_dtype,
                                             read_manifest, shard_done, vae_record, write_shard)
from dalle_pytorch.train.datasets import (BadSample, DatasetError, TextImageDataset, image_to_tensor,
                                          mix_seed, random_resized_crop)
from dalle_pytorch.train.task_config import at_least, fraction, image_data
from dalle_pytorch.train.webdataset import expand_shards, read_wds_pair, webdataset_module

__all__ = ["EncodeConfig", "encode_dataset"]

SETTINGS = "encode_settings.json"


@dataclasses.dataclass
class EncodeConfig:
    """The settings of one encode (dalle-encode's flags), checked once."""

    source: str  # a folder of captioned images (train_dalle.py's --image_text_folder); with wds: tar shards
    output_dir: str  # the codes folder (created; an unfinished one resumes)
    wds: Optional[tuple] = None  # WebDataset input: (image key, caption key), e.g. ("jpg", "txt")
    batch_size: int = 16  # images per encoder batch
    shard_size: int = 1000  # samples per output shard (folder input; WebDataset input keeps its shards)
    crops: int = 1  # crops stored per image (training picks one per epoch)
    resize_ratio: float = 1.0  # smallest area fraction of a crop; 1: the deterministic crop
    seed: int = 0
    num_workers: int = 0  # DataLoader processes decoding images (folder input)
    max_bad_fraction: float = 0.01  # share of samples that may be skipped before the encode stops
    transparent: bool = False  # RGBA images (a 4-channel VAE)
    save_vae: bool = True  # copy the VAE into the folder (vae.safetensors), so it trains on its own
    progress: bool = True

    def __post_init__(self) -> None:
        if not self.source:
            raise TrainingError("`image_text_folder` is empty: give the folder of captioned images (or the shards)")
        if not self.output_dir:
            raise TrainingError("`output_dir` is empty: give the folder the codes go to")
        image_data(self)
        at_least(self, 1, "batch_size", "shard_size", "crops")
        at_least(self, 0, "num_workers")
        fraction(self, "max_bad_fraction")


def _crops(image, size: int, config: EncodeConfig, rng: random.Random) -> torch.Tensor:
    """(crops, C, size, size) in [0, 1]: the crops of one image, drawn in order from `rng`."""
    return torch.stack([image_to_tensor(random_resized_crop(image, size, (config.resize_ratio, 1.0), (1.0, 1.0), rng))
                        for _ in range(config.crops)])


class _FolderUnit(Dataset):
    """The pairs of one folder unit, decoded and cropped (in DataLoader workers when asked)."""

    def __init__(self, pairs: TextImageDataset, indices: range, size: int, config: EncodeConfig) -> None:
        self.pairs, self.indices, self.size, self.config = pairs, indices, size, config

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k: int) -> tuple:
        index = self.indices[k]
        name = self.pairs.pairs[index][0]
        try:
            lines, image = self.pairs.read_pair(index)
        except BadSample as e:
            return name, None, str(e)
        rng = random.Random(mix_seed(self.config.seed, index))
        return name, lines, _crops(image, self.size, self.config, rng)


def _as_is(item):
    return item


class _Source:
    """The units of the input and the samples of each: (name, caption lines, crops) or (name, None, why)."""

    def __init__(self, config: EncodeConfig, image_size: int, mode: str, env: DistEnv) -> None:
        self.config, self.size, self.mode = config, image_size, mode
        if config.wds:
            try:
                self.shards = expand_shards(config.source)
            except ValueError as e:
                raise TrainingError(f"`image_text_folder`: {e}") from None
            self.num_units = len(self.shards)
            self.fingerprint = hashlib.sha256("\n".join(self.shards).encode()).hexdigest()
            self.total = None
        else:
            def scan() -> TextImageDataset:
                try:
                    return TextImageDataset(config.source, image_size=image_size, transparent=mode == "RGBA",
                                            tokenizer=_NO_TOKENIZER, max_bad_fraction=1.0)
                except ValueError as e:
                    raise TrainingError(f"`image_text_folder`: {e}") from None

            found = env.on_main(scan)  # rank 0 writes the folder's index cache, then the others read it
            self.pairs = found if env.is_main else scan()
            n = len(self.pairs)
            self.num_units = math.ceil(n / config.shard_size)
            self.fingerprint = hashlib.sha256(json.dumps(self.pairs.pairs).encode()).hexdigest()
            self.total = n

    def unit_size(self, unit: int) -> Optional[int]:
        if self.config.wds:
            return None
        return min(self.total, (unit + 1) * self.config.shard_size) - unit * self.config.shard_size

    def samples(self, unit: int) -> Iterator[tuple]:
        if not self.config.wds:
            start = unit * self.config.shard_size
            items = _FolderUnit(self.pairs, range(start, start + self.unit_size(unit)), self.size, self.config)
            yield from DataLoader(items, batch_size=None, num_workers=self.config.num_workers, collate_fn=_as_is)
            return
        wds = webdataset_module()
        image_key, caption_key = self.config.wds
        shard = self.shards[unit]
        errors: list[str] = []

        def keep_going(exn: Exception) -> bool:
            errors.append(f"{os.path.basename(shard)}: {type(exn).__name__}: {exn}")
            return True

        pipeline = wds.DataPipeline(wds.SimpleShardList([shard]), wds.tarfile_to_samples(handler=keep_going))
        for j, sample in enumerate(pipeline):
            while errors:
                yield shard, None, errors.pop(0)
            name = f"{os.path.basename(shard)}/{sample.get('__key__')}"
            try:
                lines, image = read_wds_pair(sample, image_key, caption_key, self.mode, name)
            except BadSample as e:
                yield name, None, str(e)
                continue
            rng = random.Random(mix_seed(self.config.seed, unit, j))
            yield name, lines, _crops(image, self.size, self.config, rng)
        for e in errors:
            yield shard, None, e


#: TextImageDataset needs a tokenizer only to tokenize, which encoding never does
_NO_TOKENIZER = object()


def _settings(config: EncodeConfig, vae_digest: str, source: _Source) -> dict:
    """What must not change while an encode resumes."""
    return {"vae_weights_sha256": vae_digest, "source": os.path.abspath(config.source) if not config.wds else
            config.source, "source_fingerprint": source.fingerprint, "wds": list(config.wds or ()),
            "shard_size": config.shard_size if not config.wds else None, "crops": config.crops,
            "resize_ratio": config.resize_ratio, "seed": config.seed, "transparent": config.transparent}


def _check_settings(path: str, settings: dict) -> None:
    try:
        stored = json.loads(read_bytes(path, "the encode settings", 1 << 20))
    except FileNotFoundError:
        write_json(path, settings)
        return
    except (OSError, ValueError) as e:
        raise TrainingError(f"{path}: {e}") from None
    changed = [k for k in settings if stored.get(k) != settings[k]]
    if changed:
        what = {"vae_weights_sha256": "the VAE", "source_fingerprint": "the source's files",
                "source": "the source"}.get(changed[0], f"`{changed[0]}`")
        raise TrainingError(f"{os.path.dirname(path)} holds an encode begun with other settings ({what} differs): "
                            "give a new `output_dir`, or the settings it was begun with")


def _encode(vae: nn.Module, images: torch.Tensor, device: torch.device, seed: int) -> np.ndarray:
    """Codes (b, h * w) of images (b, C, H, W); the global RNG (a GumbelVQ's draw) seeded by `seed`, then restored."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), torch.inference_mode():
        torch.manual_seed(seed)
        if device.type == "cuda":
            torch.cuda.manual_seed(seed)
        return vae.get_codebook_indices(images.to(device)).cpu().numpy()


def encode_dataset(config: EncodeConfig, vae: nn.Module, *, vae_class: str, vae_description: str,
                   env: Optional[DistEnv] = None) -> dict:
    """Encode `config.source` with `vae` into `config.output_dir` (see the module docstring); returns a summary:
    samples, skipped, shards, shards_resumed, images_encoded, seconds, images_per_sec, manifest (its path).

    `vae_class` and `vae_description` (how it was given, e.g. "--vae_path x.safetensors") go into the manifest.
    Raises TrainingError for settings that cannot work, DatasetError when more than `max_bad_fraction` of the
    samples could not be read (the shards written so far are kept: run again with a higher limit to finish).
    """
    env = env if env is not None else DistEnv()
    out = os.path.abspath(config.output_dir)
    vae = vae.eval().to(env.device)
    channels = vae.channels
    if config.transparent != (channels == 4):
        raise TrainingError(f"`transparent` needs a 4-channel (RGBA) VAE; this one has {channels} channels"
                            if config.transparent else "this VAE takes RGBA images: pass `transparent`")
    record = vae_record(vae, vae_class, vae_description)
    source = _Source(config, vae.image_size, "RGBA" if channels == 4 else "RGB", env)
    manifest_path = os.path.join(out, MANIFEST)

    def prepare() -> None:
        os.makedirs(out, exist_ok=True)
        _check_settings(os.path.join(out, SETTINGS), _settings(config, record["weights_sha256"], source))
        if config.save_vae and not os.path.exists(os.path.join(out, VAE_COPY)):
            save(vae, os.path.join(out, VAE_COPY), metadata={"codes": "the VAE of this codes folder"})

    env.on_main(prepare)

    mine = range(env.rank, source.num_units, env.world_size)
    done = {u: r for u in mine if (r := shard_done(out, u)) is not None}
    todo = [u for u in mine if u not in done]
    total = None if config.wds else sum(source.unit_size(u) for u in todo)
    bar = None
    if config.progress and env.is_main and todo:
        from tqdm.auto import tqdm
        bar = tqdm(total=total, desc="encode", unit="img", dynamic_ncols=True)
    start, encoded, error = time.perf_counter(), 0, None
    try:
        for unit in todo:
            done[unit] = _encode_unit(config, vae, env, source, unit, out, bar)
            encoded += done[unit].samples * config.crops
            _check_bad(config, done.values(), source.total)
    except Exception as e:  # the others must not wait at the barrier for this process
        error = e
    finally:
        if bar is not None:
            bar.close()
    ok = env.all_ok(error is None)
    if error is not None:
        raise error
    if not ok:
        raise TrainingError("another process of the encode failed (its message is above); run the same command again "
                            "to resume")
    seconds = time.perf_counter() - start
    summary = {"shards_resumed": len(mine) - len(todo), "images_encoded": encoded, "seconds": seconds,
               "images_per_sec": encoded / seconds if seconds > 0 else 0.0, "manifest": manifest_path}

    def finish() -> None:  # every unit is done (all_ok above waited for every process)
        records = [shard_done(out, u) for u in range(source.num_units)]
        missing = [u for u, r in enumerate(records) if r is None]
        if missing:
            raise TrainingError(f"{len(missing)} units of {out} are not encoded (e.g. {missing[0]}); run again to finish")
        _check_bad(config, records, None)
        grid = vae.image_size >> vae.num_layers
        manifest = Manifest(
            vae=record, image_size=vae.image_size, channels=channels, grid=(grid, grid), num_tokens=vae.num_tokens,
            dtype=code_dtype(vae.num_tokens).name, crops=config.crops, resize_ratio=config.resize_ratio,
            seed=config.seed, source={"kind": "wds" if config.wds else "folder", "path": config.source,
                                      "keys": list(config.wds or ())},
            shards=records, gumbel=bool(getattr(vae, "is_gumbel", False)))
        write_json(manifest_path, manifest.to_dict())

    env.on_main(finish)
    final = read_manifest(manifest_path)
    summary.update(samples=final.samples, skipped=final.skipped, shards=len(final.shards))
    return summary


def _check_bad(config: EncodeConfig, records, total: Optional[int]) -> None:
    """DatasetError when more samples were skipped than `max_bad_fraction` of `total` (else of those seen) allows."""
    records = list(records)
    skipped = sum(r.skipped for r in records)
    seen = total if total is not None else skipped + sum(r.samples for r in records)
    allowed = max(1, int(config.max_bad_fraction * seen))
    if skipped > allowed:
        examples = [e for r in records for e in r.skipped_examples][:3]
        raise DatasetError(f"dalle-encode: {skipped} of {seen} samples could not be read, more than max_bad_fraction="
                           f"{config.max_bad_fraction} allows ({allowed}); examples: {'; '.join(examples)}. Fix or "
                           "remove these files, or raise `max_bad_fraction` and run again (finished shards are kept)")


def _encode_unit(config: EncodeConfig, vae: nn.Module, env: DistEnv, source: _Source, unit: int, out: str,
                 bar) -> ShardRecord:
    """Encode one unit into its shard (batched through the VAE) and return its record."""
    samples: list[CodeSample] = []
    skipped: list[str] = []
    pending: list[tuple[str, list, torch.Tensor]] = []  # samples waiting for the encoder, `crops` images each
    batch_no = 0

    def flush() -> None:
        nonlocal batch_no
        if not pending:
            return
        images = torch.cat([crops for _, _, crops in pending])
        codes = np.concatenate([_encode(vae, images[i:i + config.batch_size], env.device,
                                        mix_seed(config.seed, unit, batch_no, i))
                                for i in range(0, len(images), config.batch_size)])
        dtype = code_dtype(vae.num_tokens)
        for k, (name, lines, _) in enumerate(pending):
            samples.append(CodeSample(codes[k * config.crops:(k + 1) * config.crops].astype(dtype), lines, name))
        if bar is not None:
            bar.update(len(pending))
            rate = bar.format_dict.get("rate")
            if rate:
                bar.set_postfix_str(f"{rate * config.crops:.1f} images/s")
        pending.clear()
        batch_no += 1

    for name, lines, crops in source.samples(unit):
        if lines is None:  # crops: "file: why"
            skipped.append(crops)
            warnings.warn(f"dalle-encode: skipping {crops}")
            if bar is not None:
                bar.update(1)
            continue
        pending.append((name, lines, crops))
        if len(pending) * config.crops >= config.batch_size:
            flush()
    flush()
    return write_shard(out, unit, samples, skipped)
