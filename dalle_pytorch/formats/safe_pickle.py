"""Reading `torch.save` files without running anything from them.

A pickle is a program: each class or function it names (a "global") is imported and may be
called while loading. `TorchFile` unpickles with a `pickle.Unpickler` whose `find_class` returns
only our own inert objects, never an imported one:

* tensors: torch's rebuild functions (`torch._utils._rebuild_tensor_v2`, `_rebuild_parameter`, ...)
  and storage types (`torch.FloatStorage`, ...) become lazy `TensorRef`s: dtype, shape, strides and
  where the bytes lie. No tensor memory is allocated while unpickling; `TorchFile.read` reads one
  tensor's storage later, after its size and bounds were checked (and after the caller compared
  the shapes with the model it builds, so a file cannot make us allocate what the model does not
  need, e.g. a Lightning checkpoint's optimizer states are never read);
* plain containers: `collections.OrderedDict`, `set`, `frozenset`, `torch.device`, `torch.Size`,
  torch dtypes, `_codecs.encode` for latin-1 bytes;
* classes the caller names (`stand_ins`, e.g. `dall_e.encoder.Encoder`, `torch.nn.modules...`):
  each becomes a `StandIn` that only records its constructor arguments and pickled state (for an
  nn.Module: `_parameters`, `_modules` and its attributes), for the caller to read into our own
  modules;
* with `placeholders`, classes of a few known namespaces (Lightning, OmegaConf, numpy, ...; see
  LIGHTNING_PLACEHOLDERS) become StandIns too, never imported; the caller must then ignore every
  entry that holds one (a Lightning checkpoint's `callbacks`, `hyper_parameters`, loops).

Any other global (`os.system`, `builtins.eval`, `subprocess.Popen`, `torch.load`, ...) raises
`UnsafePickleError` naming it, before anything from the file is called.

Both torch.save formats are read: the zip archive (torch >= 1.6: `<name>/data.pkl` plus one
record per storage, `<name>/data/<key>`) and the legacy stream (torch < 1.6 or
`_use_new_zipfile_serialization=False`: magic number, protocol, system info, the object, the
storage keys, then each storage as an int64 element count and its bytes). The older tar format
is refused. Only little-endian data on little-endian machines is read.
"""
from __future__ import annotations

import _compat_pickle
import math
import os
import pickle
import struct
import sys
import zipfile
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, BinaryIO, Callable, Collection, Optional

import torch

from dalle_pytorch.formats.files import PathLike, open_regular

__all__ = ["UnsafePickleError", "StorageRef", "TensorRef", "StandIn", "TorchFile", "LIGHTNING_PLACEHOLDERS",
           "MAX_MODULE_DEPTH"]

# what torch.save writes before the object in the legacy (non-zip) format
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001

_STORAGE_DTYPES = {
    "DoubleStorage": torch.float64, "FloatStorage": torch.float32, "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8, "BoolStorage": torch.bool,
}

# Namespaces whose classes a Lightning checkpoint may name outside `state_dict` (callbacks, loops,
# hyper_parameters as OmegaConf or argparse objects, numpy scalars in metrics). They become StandIns.
LIGHTNING_PLACEHOLDERS = ("pytorch_lightning.", "lightning.", "lightning_fabric.", "omegaconf.", "torchmetrics.",
                          "numpy.", "typing.", "pathlib.", "argparse.Namespace", "enum.", "datetime.",
                          "builtins.dict", "builtins.list", "builtins.tuple", "builtins.int", "builtins.float",
                          "builtins.str", "builtins.bool", "builtins.bytes", "builtins.object", "builtins.NoneType",
                          "builtins.type")

MAX_MODULE_DEPTH = 64  # how deep a pickled module tree may nest


class UnsafePickleError(pickle.UnpicklingError):
    """The file names a global that reading it would have to import or call; nothing from it ran."""


@dataclass(frozen=True)
class StorageRef:
    """A storage of the file, not yet read: `numel` elements of `dtype` under record `key`."""

    key: str
    dtype: torch.dtype
    numel: int
    location: str


@dataclass(frozen=True)
class TensorRef:
    """A tensor of the file, not yet read: a strided view of `storage`."""

    storage: StorageRef
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]
    requires_grad: bool = False
    is_parameter: bool = False

    @property
    def dtype(self) -> torch.dtype:
        return self.storage.dtype

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


class StandIn:
    """An inert stand-in for a class named by a pickle: records how the pickle built the object.

    `qualname` is the class the file names ('dall_e.encoder.Encoder'); `args`/`kwargs` what it was
    called with (REDUCE / NEWOBJ); `state` what BUILD passed (for an nn.Module: its __dict__);
    `items` what APPENDS / SETITEMS added. No method of the named class ever runs.
    """

    qualname = "?"

    def __new__(cls, *args: Any, **kwargs: Any) -> "StandIn":
        obj = object.__new__(cls)
        obj.args, obj.kwargs, obj.state, obj.items = args, kwargs, None, []
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def append(self, item: Any) -> None:
        self.items.append(item)

    def extend(self, items: Any) -> None:
        self.items.extend(items)

    def __setitem__(self, key: Any, value: Any) -> None:
        self.items.append((key, value))

    def __repr__(self) -> str:
        return f"<stand-in for {self.qualname}>"


class _StorageType:
    def __init__(self, name: str):
        self.name, self.dtype = name, _STORAGE_DTYPES[name]


def _check_ints(value: Any, what: str, allow_negative: bool = False) -> tuple[int, ...]:
    if not isinstance(value, (tuple, list)) or not all(type(v) is int for v in value):
        raise ValueError(f"malformed tensor record: {what} must be a tuple of ints, got {value!r}")
    if not allow_negative and any(v < 0 for v in value):
        raise ValueError(f"malformed tensor record: negative {what} {tuple(value)}")
    return tuple(value)


def _rebuild_tensor(storage: Any, offset: Any, size: Any, stride: Any, requires_grad: Any = False,
                    backward_hooks: Any = None, metadata: Any = None) -> TensorRef:
    """Stands for torch._utils._rebuild_tensor_v2: checks the view lies inside its storage."""
    if not isinstance(storage, StorageRef):
        raise ValueError(f"malformed tensor record: storage is {type(storage).__name__}, not a storage of the file")
    if type(offset) is not int or offset < 0:
        raise ValueError(f"malformed tensor record: storage offset {offset!r}")
    shape, strides = _check_ints(size, "size"), _check_ints(stride, "stride")
    if len(shape) != len(strides):
        raise ValueError(f"malformed tensor record: size {shape} and stride {strides} differ in length")
    if metadata:
        raise ValueError(f"unsupported tensor record: metadata {metadata!r} (conjugate/negative bits)")
    if math.prod(shape) > 0:
        last = offset + sum((n - 1) * s for n, s in zip(shape, strides))
        if last >= storage.numel:
            raise ValueError(f"malformed tensor record: a view of size {shape}, stride {strides}, offset {offset} "
                             f"reaches element {last} of a storage of {storage.numel}")
    return TensorRef(storage, offset, shape, strides, bool(requires_grad))


def _rebuild_parameter(data: Any, requires_grad: Any = True, backward_hooks: Any = None, state: Any = None) -> TensorRef:
    """Stands for torch._utils._rebuild_parameter(_with_state)."""
    if not isinstance(data, TensorRef):
        raise ValueError(f"malformed parameter record: data is {type(data).__name__}")
    return TensorRef(data.storage, data.offset, data.shape, data.stride, bool(requires_grad), True)


class _TypeMarker:
    def __init__(self, name: str):
        self.name = name


def _rebuild_from_type_v2(func: Any, new_type: Any, args: Any, state: Any) -> TensorRef:
    """Stands for torch._tensor._rebuild_from_type_v2, for plain tensors and Parameters only."""
    if func not in (_rebuild_tensor, _rebuild_parameter) or not isinstance(new_type, _TypeMarker):
        raise ValueError("unsupported tensor record: a tensor subclass rebuilt by other functions")
    if state:
        raise ValueError(f"unsupported tensor record: python state {state!r} on a tensor")
    ref = func(*args)
    return _rebuild_parameter(ref, ref.requires_grad) if new_type.name == "Parameter" else ref


def _latin1_bytes(text: Any, encoding: Any = "latin1") -> bytes:
    """Stands for _codecs.encode, which protocol-2 pickles use to store bytes."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise ValueError(f"unsupported _codecs.encode({type(text).__name__}, {encoding!r}) in a pickle")
    return text.encode("latin1")


def _device(*args: Any) -> torch.device:
    if not 1 <= len(args) <= 2 or not isinstance(args[0], str) or (len(args) == 2 and type(args[1]) is not int):
        raise ValueError(f"malformed torch.device{args!r} in a pickle")
    return torch.device(*args)


def _size(values: Any = ()) -> tuple[int, ...]:
    return _check_ints(tuple(values), "torch.Size")


_DTYPES = {name: getattr(torch, name) for name in (
    "float64", "float32", "float16", "bfloat16", "int64", "int32", "int16", "int8", "uint8", "bool",
    "double", "float", "half", "long", "int", "short")}

_SAFE_GLOBALS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): OrderedDict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("_codecs", "encode"): _latin1_bytes,
    ("torch", "device"): _device,
    ("torch", "Size"): _size,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type_v2,
    ("torch", "Tensor"): _TypeMarker("Tensor"),
    ("torch.nn.parameter", "Parameter"): _TypeMarker("Parameter"),
    **{("torch", name): _StorageType(name) for name in _STORAGE_DTYPES},
    **{("torch", name): dtype for name, dtype in _DTYPES.items()},
}


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file: BinaryIO, stand_ins: Collection[str], placeholders: Collection[str],
                 persistent: Optional[Callable[[Any], Any]]):
        super().__init__(file)
        self._stand_ins, self._placeholders, self._persistent = set(stand_ins), tuple(placeholders), persistent
        self._classes: dict[str, type] = {}

    def find_class(self, module: str, name: str) -> Any:
        if not isinstance(module, str) or not isinstance(name, str):
            raise UnsafePickleError(f"malformed global {module!r}.{name!r}")
        # protocol-2 pickles use Python 2 names (__builtin__.set): read them as Python 3 does
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        elif module in _compat_pickle.IMPORT_MAPPING:
            module = _compat_pickle.IMPORT_MAPPING[module]
        if (module, name) in _SAFE_GLOBALS:
            return _SAFE_GLOBALS[(module, name)]
        qualname = f"{module}.{name}"
        if qualname in self._stand_ins or (self._placeholders and qualname.startswith(self._placeholders)):
            if qualname not in self._classes:
                self._classes[qualname] = type(name, (StandIn,), {"qualname": qualname})
            return self._classes[qualname]
        raise UnsafePickleError(
            f"the file asks to import {qualname}, which reading it never needs; refusing it "
            "(nothing from the file was run). Only a file you trust may be loaded with torch.load(weights_only=False).")

    def persistent_load(self, pid: Any) -> Any:
        if self._persistent is None:
            raise ValueError("malformed file: a persistent id where none may be")
        return self._persistent(pid)


class TorchFile:
    """A torch.save file opened for restricted reading; use as a context manager.

        with TorchFile(path, "VQGAN checkpoint") as f:
            obj = f.load()                 # containers, StandIns and TensorRefs; nothing read yet
            weight = f.read(obj["w"])      # one tensor, bounds checked

    `what` names the file in errors. Raises FileNotFoundError, ValueError for a file that is not a
    regular file or not a readable torch.save file, UnsafePickleError for a forbidden global.
    """

    def __init__(self, path: PathLike, what: str = "torch file"):
        self.path, self.what = os.fspath(path), what
        self._file = open_regular(self.path, what)
        self._zip: Optional[zipfile.ZipFile] = None
        self._prefix = ""
        self._storage_offsets: dict[str, int] = {}  # legacy format: key -> offset of its element count
        self._storages: dict[str, StorageRef] = {}
        self._cache: dict[str, torch.Tensor] = {}
        self.size = os.fstat(self._file.fileno()).st_size
        if sys.byteorder != "little":  # pragma: no cover - every platform torch ships for is little-endian
            raise ValueError("reading torch files is only supported on little-endian machines")

    def __enter__(self) -> "TorchFile":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        self._cache.clear()
        if self._zip is not None:
            self._zip.close()
        self._file.close()

    def _fail(self, message: str) -> ValueError:
        return ValueError(f"{self.what} {self.path!r}: {message}")

    # -- unpickling ------------------------------------------------------------------------------------

    def load(self, stand_ins: Collection[str] = (), placeholders: Collection[str] = ()) -> Any:
        """The pickled object, with TensorRefs for tensors and StandIns for `stand_ins` classes.

        `stand_ins`: qualified class names ('dall_e.utils.Conv2d') to record instead of import;
        `placeholders`: prefixes of qualified names ('pytorch_lightning.') treated the same way.
        """
        try:
            if zipfile.is_zipfile(self._file):
                return self._load_zip(stand_ins, placeholders)
            self._file.seek(0)
            return self._load_legacy(stand_ins, placeholders)
        except (UnsafePickleError, FileNotFoundError):
            raise
        except ValueError as e:
            if str(e).startswith(f"{self.what} {self.path!r}"):
                raise
            raise self._fail(str(e)) from None
        except (pickle.UnpicklingError, EOFError, TypeError, AttributeError, IndexError, KeyError,
                struct.error, zipfile.BadZipFile, RecursionError, UnicodeDecodeError, OverflowError) as e:
            raise self._fail(f"not a readable torch.save file ({type(e).__name__}: {e})") from None

    def _storage_ref(self, pid: Any, legacy: bool) -> Any:
        if not isinstance(pid, tuple) or not pid:
            raise ValueError(f"malformed persistent id {pid!r}")
        kind = pid[0].decode("ascii") if isinstance(pid[0], bytes) else pid[0]
        if legacy and kind == "module" and len(pid) == 4:
            return pid[1]  # ('module', class, source file, source): the class, already a StandIn
        if kind != "storage" or len(pid) != (6 if legacy else 5):
            raise ValueError(f"unsupported persistent id {pid[:1]!r} with {len(pid)} fields")
        storage_type, key, location, numel = pid[1:5]
        if legacy and pid[5] is not None:
            raise ValueError("storage views (torch < 0.4 files) are not supported")
        if not isinstance(storage_type, _StorageType):
            raise ValueError(f"unsupported storage type {storage_type!r}")
        if isinstance(location, bytes):
            location = location.decode("ascii")
        if not isinstance(key, str) or not isinstance(location, str) or type(numel) is not int or numel < 0:
            raise ValueError(f"malformed storage record {pid!r}")
        if numel * storage_type.dtype.itemsize > self.size:
            raise ValueError(f"a storage of {numel} {storage_type.dtype} elements is larger than the file")
        ref = StorageRef(key, storage_type.dtype, numel, location)
        known = self._storages.setdefault(key, ref)
        if known != ref:
            raise ValueError(f"storage {key!r} is declared twice with different types or sizes")
        return known

    def _load_zip(self, stand_ins: Collection[str], placeholders: Collection[str]) -> Any:
        self._file.seek(0)
        self._zip = zipfile.ZipFile(self._file)
        names = [n for n in self._zip.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(names) != 1:
            raise ValueError("a zip file without exactly one <name>/data.pkl record is not a torch.save file")
        self._prefix = names[0][: -len("data.pkl")]
        byteorder = self._prefix + "byteorder"
        if byteorder in self._zip.namelist() and self._zip.read(byteorder) != b"little":
            raise ValueError("big-endian torch files are not supported")
        with self._zip.open(names[0]) as f:
            unpickler = _RestrictedUnpickler(f, stand_ins, placeholders, lambda pid: self._storage_ref(pid, False))
            return unpickler.load()

    def _load_legacy(self, stand_ins: Collection[str], placeholders: Collection[str]) -> Any:
        f = self._file
        if f.read(2) != b"\x80\x02":
            raise ValueError("neither a zip archive nor a legacy torch.save stream (tar files of torch < 0.4 "
                             "are not supported)")
        f.seek(0)
        plain = lambda: _RestrictedUnpickler(f, (), (), None).load()  # noqa: E731 - header records hold no globals
        if plain() != _LEGACY_MAGIC or plain() != _LEGACY_PROTOCOL:
            raise ValueError("bad magic number or protocol version for a legacy torch.save stream")
        sys_info = plain()
        if not isinstance(sys_info, dict) or sys_info.get("little_endian") is not True:
            raise ValueError("big-endian torch files are not supported")
        obj = _RestrictedUnpickler(f, stand_ins, placeholders, lambda pid: self._storage_ref(pid, True)).load()
        keys = plain()
        if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
            raise ValueError("malformed storage key list")
        offset = f.tell()
        for key in keys:
            ref = self._storages.get(key)
            if ref is None:
                raise ValueError(f"storage {key!r} is listed but never used")
            f.seek(offset)
            header = f.read(8)
            if len(header) != 8:
                raise ValueError(f"truncated file: storage {key!r} is missing")
            (count,) = struct.unpack("<q", header)
            if count != ref.numel:
                raise ValueError(f"storage {key!r} holds {count} elements where {ref.numel} were declared")
            self._storage_offsets[key] = offset
            offset += 8 + count * ref.dtype.itemsize
            if offset > self.size:
                raise ValueError(f"truncated file: storage {key!r} ends past the end of the file")
        missing = set(self._storages) - set(self._storage_offsets)
        if missing:
            raise ValueError(f"storages {sorted(missing)[:5]} are used but not stored")
        return obj

    # -- reading tensors -----------------------------------------------------------------------------------

    def _storage(self, ref: StorageRef) -> torch.Tensor:
        if ref.key in self._cache:
            return self._cache[ref.key]
        if self._storages.get(ref.key) != ref:
            raise self._fail(f"storage {ref.key!r} is not one of this file's")
        nbytes = ref.numel * ref.dtype.itemsize
        buf = bytearray(nbytes)
        if self._zip is not None:
            name = f"{self._prefix}data/{ref.key}"
            try:
                info = self._zip.getinfo(name)
            except KeyError:
                raise self._fail(f"record {name!r} is missing") from None
            if info.file_size != nbytes:
                raise self._fail(f"record {name!r} holds {info.file_size} bytes where {nbytes} were declared")
            with self._zip.open(info) as r:
                got = r.readinto(buf) if nbytes else 0
        else:
            self._file.seek(self._storage_offsets[ref.key] + 8)
            got = self._file.readinto(buf) if nbytes else 0
        if got != nbytes:
            raise self._fail(f"storage {ref.key!r} is truncated ({got} of {nbytes} bytes)")
        flat = torch.frombuffer(buf, dtype=ref.dtype) if nbytes else torch.empty(0, dtype=ref.dtype)
        self._cache[ref.key] = flat
        return flat

    def read(self, ref: TensorRef) -> torch.Tensor:
        """The tensor `ref` describes (a new CPU tensor, contiguous, requires_grad False)."""
        flat = self._storage(ref.storage)
        tensor = torch.as_strided(flat, ref.shape, ref.stride, ref.offset)
        if tensor.numel() != flat.numel() or not tensor.is_contiguous():
            tensor = tensor.clone(memory_format=torch.contiguous_format)
        return tensor
