"""Pre-encoded datasets: a VAE's codes of captioned images in WebDataset tar shards, and a manifest.

`dalle-encode` (train/encode.py) writes them; `train_dalle.py --codes DIR` trains on them without
running the VAE. A codes folder holds:

    manifest.json         what the codes are: the VAE (class, config, SHA-256 of its weights), the image
                          size, the code grid and dtype, the crops, the source, every shard and the counts
    codes-000000.tar ...  one shard per unit of the source (a slice of a folder's pairs, or one input shard)
    codes-000000.json     the shard's record (samples, skipped, bytes, SHA-256): a shard counts as done
                          only when its record exists and its size matches (a half-written one never does)
    vae.safetensors       a copy of the VAE (unless --no_save_vae), so the folder trains on its own

Each sample of a shard has three members with the key ``UUUUUU-JJJJJJ`` (unit, position in it):
``KEY.codes.npy`` (a NumPy array, shape (crops, h * w), the smallest unsigned integer dtype that holds
the codebook), ``KEY.txt`` (all its caption lines) and ``KEY.source.txt`` (where it came from: the
image's path in the folder, or input shard/key).

Everything read from a codes folder is untrusted: the manifest and shard names are checked (plain file
names inside the folder, never paths), the member types, names and sizes are checked before reading,
and each sample's array must have the manifest's dtype and shape and codes below its codebook size.
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import random
import re
import tarfile
from functools import partial
from typing import Any, Iterable, Optional, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from dalle_pytorch.errors import TrainingError
from dalle_pytorch.formats.files import atomic_write_bytes, open_regular, read_bytes, write_json
from dalle_pytorch.text.factory import get_default_tokenizer
from dalle_pytorch.train.checkpoints import weights_digest
from dalle_pytorch.train.datasets import (BadSample, BadSamples, SkippedSamples, caption_lines, sample_rng,
                                          tokenize_caption)
from dalle_pytorch.train.webdataset import collate_pairs, expand_shards, shard_pipeline, webdataset_module

__all__ = ["FORMAT", "MANIFEST", "VAE_COPY", "Manifest", "ShardRecord", "CodeSample", "code_dtype", "shard_name",
           "write_shard", "shard_done", "read_manifest", "vae_record", "check_vae", "CodeDataset", "code_loader"]

FORMAT = "dalle_pytorch.codes"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
VAE_COPY = "vae.safetensors"
MAX_MANIFEST_BYTES = 64 << 20
MAX_CAPTION_BYTES = 1 << 20  # all caption lines of one sample
MAX_SOURCE_BYTES = 4096
_SHARD_NAME = re.compile(r"^codes-[0-9]{6}\.tar$")
_KEY = re.compile(r"^[0-9]{6}-[0-9]{6}$")
_MEMBERS = ("codes.npy", "txt", "source.txt")


def code_dtype(num_tokens: int) -> np.dtype:
    """The smallest unsigned integer dtype that holds codes 0 .. num_tokens - 1."""
    for dtype in (np.uint8, np.uint16, np.uint32):
        if num_tokens - 1 <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    raise ValueError(f"a codebook of {num_tokens} entries is too large")


def shard_name(unit: int) -> str:
    """The file name of the shard of source unit `unit`."""
    return f"codes-{unit:06d}.tar"


def _record_path(folder: str, unit: int) -> str:
    """The record of `unit`'s shard (codes-NNNNNN.json beside codes-NNNNNN.tar): written after the shard."""
    return os.path.join(folder, f"codes-{unit:06d}.json")


@dataclasses.dataclass
class ShardRecord:
    """One finished shard: its file, how many samples it holds and skipped, its size and SHA-256."""

    name: str
    samples: int
    skipped: int
    bytes: int
    sha256: str
    skipped_examples: list = dataclasses.field(default_factory=list)  # "file: why" of the first few skipped


@dataclasses.dataclass
class Manifest:
    """What a codes folder holds (manifest.json); `from_dict` checks a file's contents."""

    vae: dict  # class, config, weights_sha256, description (the flags it was given by; shown, never followed)
    image_size: int
    channels: int
    grid: tuple  # (h, w) codes per image
    num_tokens: int
    dtype: str  # numpy dtype name of the stored codes
    crops: int  # crops stored per image (training picks one per epoch)
    resize_ratio: float  # smallest area fraction of the crops (1: the deterministic crop training takes at 1)
    seed: int
    source: dict  # kind ("folder" / "wds"), the path as given, the keys
    shards: list  # ShardRecord, in source order
    gumbel: bool = False  # GumbelVQ: each crop's codes are one seeded draw, fixed at encoding
    format: str = FORMAT
    format_version: int = FORMAT_VERSION

    @property
    def samples(self) -> int:
        return sum(s.samples for s in self.shards)

    @property
    def skipped(self) -> int:
        return sum(s.skipped for s in self.shards)

    @property
    def seq_len(self) -> int:
        return int(self.grid[0]) * int(self.grid[1])

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out["grid"] = list(self.grid)
        out["counts"] = {"samples": self.samples, "skipped": self.skipped, "images_encoded": self.samples * self.crops}
        return out

    @classmethod
    def from_dict(cls, data: Any, where: str) -> "Manifest":
        """The manifest in `data` (parsed JSON from `where`); TrainingError naming what is wrong."""
        def bad(why: str) -> TrainingError:
            return TrainingError(f"{where}: not a codes manifest of this package ({why}); re-encode with dalle-encode")

        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise bad("no 'format': dalle_pytorch.codes")
        if data.get("format_version") != FORMAT_VERSION:
            raise bad(f"format version {data.get('format_version')!r}, this package reads {FORMAT_VERSION}")
        try:
            grid = tuple(int(g) for g in data["grid"])
            shards = [ShardRecord(**s) for s in data["shards"]]
            m = cls(vae=dict(data["vae"]), image_size=int(data["image_size"]), channels=int(data["channels"]),
                    grid=grid, num_tokens=int(data["num_tokens"]), dtype=str(data["dtype"]), crops=int(data["crops"]),
                    resize_ratio=float(data["resize_ratio"]), seed=int(data["seed"]), source=dict(data["source"]),
                    shards=shards, gumbel=bool(data.get("gumbel", False)))
        except (KeyError, TypeError, ValueError) as e:
            raise bad(f"{type(e).__name__}: {e}") from None
        if len(grid) != 2 or min(grid) < 1 or m.crops < 1 or m.num_tokens < 2 or m.image_size < 1:
            raise bad("grid, crops, num_tokens and image_size must be positive")
        if m.dtype != code_dtype(m.num_tokens).name:
            raise bad(f"dtype {m.dtype!r} for {m.num_tokens} codes")
        for s in shards:
            if not isinstance(s.name, str) or not _SHARD_NAME.match(s.name):
                raise bad(f"shard name {s.name!r} (a shard is a codes-NNNNNN.tar file inside the folder)")
            if min(s.samples, s.skipped, s.bytes) < 0:
                raise bad(f"negative counts in {s.name}")
        if len({s.name for s in shards}) != len(shards):
            raise bad("a shard is listed twice")
        return m


def read_manifest(path: str) -> Manifest:
    """The manifest file `path` (manifest.json of a codes folder), checked."""
    try:
        data = json.loads(read_bytes(path, "the codes manifest", MAX_MANIFEST_BYTES))
    except FileNotFoundError:
        raise TrainingError(f"{path} does not exist: a codes folder holds the manifest.json that dalle-encode "
                            "writes when it finishes (an unfinished encode resumes when run again)") from None
    except (OSError, ValueError) as e:
        raise TrainingError(f"the codes manifest {path}: {e}") from None
    return Manifest.from_dict(data, path)


def vae_record(vae: nn.Module, class_name: str, description: str) -> dict:
    """What a manifest stores about the VAE the codes come from."""
    return {"class": class_name, "config": vae.config, "weights_sha256": weights_digest(vae.state_dict()),
            "description": description}


def check_vae(manifest: Manifest, vae: nn.Module, where: str, given: str) -> None:
    """The codes in `where` were made by `vae` (given by `given`, e.g. "--vae_path x"): the same weights."""
    digest = weights_digest(vae.state_dict())
    expected = manifest.vae.get("weights_sha256")
    if digest != expected:
        raise TrainingError(
            f"the VAE ({given}: {type(vae).__name__}, weights sha256 {digest[:12]}) is not the one the codes in {where} "
            f"were made with ({manifest.vae.get('class')}, weights sha256 {str(expected)[:12]}, given to dalle-encode "
            f"as {manifest.vae.get('description')}): give that VAE, or re-encode with this one")
    grid = (vae.image_size >> vae.num_layers,) * 2
    if tuple(manifest.grid) != grid or manifest.num_tokens != vae.num_tokens:  # the same weights, another config
        raise TrainingError(f"the codes in {where} are {manifest.grid} grids of {manifest.num_tokens} codes; the VAE "
                            f"makes {grid} grids of {vae.num_tokens}")


# ------------------------------------------------------------------------------------------ writing


@dataclasses.dataclass
class CodeSample:
    """One encoded sample: its codes (crops, h * w), its caption lines and where it came from."""

    codes: np.ndarray
    lines: list
    source: str


def _member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644
    tar.addfile(info, io.BytesIO(data))


def write_shard(folder: str, unit: int, samples: Sequence[CodeSample], skipped: Sequence[str]) -> ShardRecord:
    """Write the shard of `unit` and then its record (each atomically): the same samples give the same bytes."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for j, sample in enumerate(samples):
            key = f"{unit:06d}-{j:06d}"
            array = io.BytesIO()
            np.save(array, np.ascontiguousarray(sample.codes), allow_pickle=False)
            _member(tar, f"{key}.codes.npy", array.getvalue())
            _member(tar, f"{key}.txt", ("\n".join(sample.lines) + "\n").encode("utf-8"))
            _member(tar, f"{key}.source.txt", sample.source.encode("utf-8", "replace")[:MAX_SOURCE_BYTES])
    data = buffer.getvalue()
    name = shard_name(unit)
    atomic_write_bytes(os.path.join(folder, name), data)
    record = ShardRecord(name=name, samples=len(samples), skipped=len(skipped), bytes=len(data),
                         sha256=hashlib.sha256(data).hexdigest(), skipped_examples=list(skipped[:10]))
    write_json(_record_path(folder, unit), dataclasses.asdict(record))
    return record


def shard_done(folder: str, unit: int) -> Optional[ShardRecord]:
    """The record of `unit`'s shard when it was finished (record present, shard of the recorded size), else None."""
    name = shard_name(unit)
    try:
        record = ShardRecord(**json.loads(read_bytes(_record_path(folder, unit), "a shard record", 1 << 20)))
        if record.name == name and os.path.getsize(os.path.join(folder, name)) == record.bytes:
            return record
    except (OSError, ValueError, TypeError):
        pass
    return None


# ------------------------------------------------------------------------------------------ reading


def _decode_codes(data: bytes, manifest: Manifest, what: str) -> np.ndarray:
    """A sample's stored array, checked against the manifest."""
    try:
        array = np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise BadSample(what, f"unreadable codes ({e})") from None
    if array.dtype != np.dtype(manifest.dtype) or array.shape != (manifest.crops, manifest.seq_len):
        raise BadSample(what, f"codes of dtype {array.dtype} and shape {array.shape}, the manifest says {manifest.dtype} "
                              f"{(manifest.crops, manifest.seq_len)}")
    if array.size and int(array.max()) >= manifest.num_tokens:
        raise BadSample(what, f"a code {int(array.max())} beyond the codebook of {manifest.num_tokens}")
    return array


def _decode_lines(data: bytes, what: str) -> list[str]:
    try:
        lines = caption_lines(data.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise BadSample(what, f"caption is not UTF-8 ({e})") from None
    if not lines:
        raise BadSample(what, "empty caption")
    return lines


def _pick(lines: list[str], codes: np.ndarray, rng: random.Random, tokenizer: Any, text_len: int, truncate: bool,
          what: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(text, codes) of one sample: a caption line, then one of its crops, drawn from `rng` in that order (as a
    TextImageDataset draws its line, then its crop); BadSample for a caption longer than `text_len` tokens."""
    text = rng.choice(lines)
    crop = rng.randrange(len(codes)) if len(codes) > 1 else 0
    try:
        tokens = tokenize_caption(tokenizer, text, text_len, truncate)
    except ValueError as e:
        raise BadSample(what, f"caption longer than {text_len} tokens: shorten it, raise --text_seq_len or pass "
                              "--truncate_captions") from e
    return tokens, torch.from_numpy(codes[crop].astype(np.int64))


class CodeDataset(SkippedSamples, Dataset):
    """The samples of a codes folder as training reads them: ``(text, codes)`` like a `TextImageDataset`'s
    ``(text, image)``, with ``codes`` a LongTensor (h * w,) where the image was.

    Sample `i` is the `i`-th sample of the shards in manifest order (for a folder: its pairs in order, the
    skipped ones left out), and its randomness is the same function of (seed, epoch, i) as a
    TextImageDataset's: the same caption line is chosen for the same sample, so training on the codes of
    a folder's deterministic crops gives the losses training on its images gives at ``resize_ratio`` 1.
    With several crops per image, one is picked per epoch (after the caption line).

    The shards are indexed at start (their tar headers: no codes are read); a shard whose size differs
    from its record, or that holds other members than the format's, stops with a one-line error.
    A sample that cannot be decoded is skipped like a bad image (`BadSamples`).
    """

    def __init__(self, folder: str | os.PathLike, text_len: int = 256, tokenizer: Any = None,
                 truncate_captions: bool = False, max_bad_fraction: float = 0.01, seed: Optional[int] = 0) -> None:
        self.folder = os.path.realpath(os.fspath(folder))
        if not os.path.isdir(self.folder):
            raise TrainingError(f"`codes` {os.fspath(folder)!r} is not a directory (a folder written by dalle-encode)")
        self.manifest = read_manifest(os.path.join(self.folder, MANIFEST))
        self.text_len, self.truncate_captions, self.seed = text_len, truncate_captions, seed
        self.tokenizer = tokenizer if tokenizer is not None else get_default_tokenizer()
        self.epoch = 0
        self.shard_paths = [os.path.join(self.folder, s.name) for s in self.manifest.shards]
        index = [self._index_shard(i, s) for i, s in enumerate(self.manifest.shards)]
        self.index = np.concatenate(index) if index else np.zeros((0, 5), dtype=np.int64)
        if len(self.index) == 0:
            raise TrainingError(f"the codes folder {self.folder} holds no samples")
        self.bad_samples = BadSamples("CodeDataset", self.folder, len(self.index), max_bad_fraction)
        self._files: dict = {}
        self._pid = os.getpid()

    def _index_shard(self, i: int, record: ShardRecord) -> np.ndarray:
        """Rows (shard, codes offset, codes size, caption offset, caption size) of the shard's samples."""
        path = self.shard_paths[i]
        try:
            size = os.path.getsize(path)
        except OSError:
            raise TrainingError(f"{path}: a shard the manifest lists is missing") from None
        if size != record.bytes:
            raise TrainingError(f"{path} has {size:,} bytes, its record says {record.bytes:,}: the shard changed "
                                "after encoding; re-encode the folder")
        members: dict[str, dict[str, tuple[int, int]]] = {}
        limit = {"codes.npy": 256 + np.dtype(self.manifest.dtype).itemsize * self.manifest.crops * self.manifest.seq_len,
                 "txt": MAX_CAPTION_BYTES, "source.txt": MAX_SOURCE_BYTES}
        with open_regular(path, "a codes shard") as f, tarfile.open(fileobj=f, mode="r:") as tar:
            for m in tar:
                key, _, ext = m.name.partition(".")
                if not m.isreg() or not _KEY.match(key) or ext not in _MEMBERS or m.size > limit[ext]:
                    raise TrainingError(f"{path}: unexpected member {m.name!r} ({m.size} bytes): not a shard "
                                        "dalle-encode wrote")
                members.setdefault(key, {})[ext] = (m.offset_data, m.size)
        if len(members) != record.samples or any(set(v) != set(_MEMBERS) for v in members.values()):
            raise TrainingError(f"{path} holds {len(members)} samples (or incomplete ones), its record says "
                                f"{record.samples}: re-encode the folder")
        rows = [(i, *v["codes.npy"], *v["txt"]) for _, v in sorted(members.items())]
        return np.asarray(rows, dtype=np.int64).reshape(-1, 5)

    def __len__(self) -> int:
        return len(self.index)

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch mixed into the per-sample randomness (call once per epoch)."""
        self.epoch = int(epoch)

    def _read(self, shard: int, offset: int, size: int) -> bytes:
        if self._pid != os.getpid():  # a DataLoader worker: its own file handles
            self._files, self._pid = {}, os.getpid()
        f = self._files.get(shard)
        if f is None:
            f = self._files[shard] = open_regular(self.shard_paths[shard], "a codes shard")
        f.seek(offset)
        return f.read(size)

    def sample(self, index: int) -> tuple[list[str], np.ndarray]:
        """The caption lines and the stored codes (crops, h * w) of sample `index` (BadSample if unreadable)."""
        shard, codes_at, codes_size, text_at, text_size = (int(v) for v in self.index[index])
        what = f"{self.manifest.shards[shard].name}#{index}"
        codes = _decode_codes(self._read(shard, codes_at, codes_size), self.manifest, what)
        return _decode_lines(self._read(shard, text_at, text_size), what), codes

    def first_caption(self) -> Optional[str]:
        """The first caption line of the first sample (the default sample caption)."""
        try:
            return self.sample(0)[0][0]
        except BadSample:
            return None

    def _load(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        lines, codes = self.sample(index)
        return _pick(lines, codes, sample_rng(self.seed, self.epoch, index), self.tokenizer, self.text_len,
                     self.truncate_captions, f"{self.manifest.shards[int(self.index[index][0])].name}#{index}")

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for {n} samples")
        return self.bad_samples.serve(index % n, self._load, lambda i: (i + 1) % n)

    def __getstate__(self) -> dict:  # DataLoader workers (spawn) open their own files
        state = dict(self.__dict__)
        state["_files"] = {}
        return state


def _decode_code_sample(sample: dict, manifest: Manifest, tokenizer: Any, text_len: int,
                        truncate_captions: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """One streamed code sample as (text, codes): a random caption line, a random one of its crops."""
    what = str(sample.get("__key__"))
    for ext in ("codes.npy", "txt"):
        if ext not in sample:
            raise BadSample(what, f"no {ext} member")
    codes = _decode_codes(sample["codes.npy"], manifest, what)
    return _pick(_decode_lines(sample["txt"], what), codes, random.Random(), tokenizer, text_len, truncate_captions,
                 what)


def code_loader(urls: str | list[str], manifest: Manifest, text_len: int = 256, tokenizer: Any = None,
                truncate_captions: bool = False, batch_size: int = 32, num_workers: int = 0,
                shuffle_buffer: int = 1000) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
    """Batches of (text, codes) streamed from code shards at `urls` (a brace pattern, a URL list, `pipe:`),
    as `webdataset_loader` streams images: split by rank and worker, shuffled in a buffer, bad samples
    skipped with a warning, incomplete last batches dropped. Needs the optional `webdataset` package."""
    wds = webdataset_module()
    decode = partial(_decode_code_sample, manifest=manifest,
                     tokenizer=tokenizer if tokenizer is not None else get_default_tokenizer(),
                     text_len=text_len, truncate_captions=truncate_captions)
    return shard_pipeline(wds, expand_shards(urls), decode, collate_pairs, batch_size, num_workers, shuffle_buffer)
