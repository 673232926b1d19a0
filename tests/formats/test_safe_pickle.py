"""The restricted torch.save reader: equal to torch.load(weights_only=True) on plain files, lazy,
and refusing (without running anything) every global it does not know."""
import io
import os
import pickle
import sys
import types
import zipfile
from collections import OrderedDict

import pytest
import torch

from dalle_pytorch.errors import NotRegularFileError
from dalle_pytorch.formats.pt_files import read_lightning_state_dict
from dalle_pytorch.formats.safe_pickle import LIGHTNING_PLACEHOLDERS, StandIn, TensorRef, TorchFile, UnsafePickleError


def sample_object():
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    return {
        "plain": torch.randn(3, 5),
        "view": base[1:3, 2:5],  # a view into a shared storage
        "transposed": base.t(),  # non-contiguous
        "same_storage": base,
        "ints": torch.arange(7, dtype=torch.int64),
        "half": torch.randn(4, dtype=torch.float16),
        "bf16": torch.randn(2, 2, dtype=torch.bfloat16),
        "bools": torch.tensor([True, False]),
        "bytes": torch.arange(5, dtype=torch.uint8),
        "scalar": torch.tensor(3.5),
        "empty": torch.empty(0, 3),
        "param": torch.nn.Parameter(torch.randn(2, 3)),
        "nested": OrderedDict(a=[1, 2.5, "x", None, True], b=(torch.ones(2),), c={3, 4}, d=b"raw"),
        "device": torch.device("cpu"),
    }


def materialize(f, obj):
    if isinstance(obj, TensorRef):
        return f.read(obj)
    if isinstance(obj, dict):
        return type(obj)((k, materialize(f, v)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return type(obj)(materialize(f, v) for v in obj)
    return obj


def assert_same(a, b):
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    elif isinstance(a, dict):
        assert list(a) == list(b)
        for k in a:
            assert_same(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b)
        for x, y in zip(a, b):
            assert_same(x, y)
    else:
        assert a == b


@pytest.mark.parametrize("zipped", [True, False], ids=["zip", "legacy"])
def test_equal_to_torch_load_weights_only(tmp_path, zipped):
    path = tmp_path / "x.pt"
    torch.save(sample_object(), path, _use_new_zipfile_serialization=zipped)
    expected = torch.load(path, weights_only=True)
    with TorchFile(path) as f:
        obj = f.load()
        assert isinstance(obj["param"], TensorRef) and obj["param"].is_parameter
        got = materialize(f, obj)
    assert_same(expected, got)


def test_tensors_are_read_only_when_asked(tmp_path, monkeypatch):
    path = tmp_path / "x.pt"
    torch.save({"a": torch.randn(1000), "b": torch.randn(10)}, path)
    with TorchFile(path) as f:
        obj = f.load()
        assert obj["a"].shape == (1000,) and obj["a"].dtype == torch.float32
        reads = []
        original = f._storage
        monkeypatch.setattr(f, "_storage", lambda ref: reads.append(ref.numel) or original(ref))
        f.read(obj["b"])
    assert reads == [10]


def fake_module(monkeypatch, dotted: str) -> types.ModuleType:
    """Register module `dotted` (and its parents) so that pickle can name classes in it; undone after the test."""
    parts = dotted.split(".")
    for i in range(1, len(parts) + 1):
        name = ".".join(parts[:i])
        if name not in sys.modules:
            monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    return sys.modules[dotted]


def test_lightning_checkpoint_with_lightning_objects(tmp_path, monkeypatch):
    """Callbacks and hyper_parameters may name Lightning / OmegaConf classes: they are read as inert
    StandIns (never imported) and ignored; the state_dict comes out, shapes checked first."""
    fake_pl = fake_module(monkeypatch, "pytorch_lightning.callbacks.model_checkpoint")
    fake_oc = fake_module(monkeypatch, "omegaconf.dictconfig")

    class ModelCheckpoint:
        def __init__(self):
            self.best_model_score = torch.tensor(0.5)
            self.dirpath = "/somewhere"

    class DictConfig:
        def __init__(self, content):
            self._content = content

    ModelCheckpoint.__module__, DictConfig.__module__ = fake_pl.__name__, fake_oc.__name__
    ModelCheckpoint.__qualname__, DictConfig.__qualname__ = "ModelCheckpoint", "DictConfig"
    fake_pl.ModelCheckpoint, fake_oc.DictConfig = ModelCheckpoint, DictConfig
    weights = {"encoder.w": torch.randn(4, 3), "loss.disc.w": torch.randn(2)}
    ckpt = {"state_dict": weights, "callbacks": {ModelCheckpoint: ModelCheckpoint()},
            "hyper_parameters": DictConfig({"lr": 1e-4}), "optimizer_states": [{"state": {0: torch.randn(4, 3)}}]}
    path = tmp_path / "last.ckpt"
    torch.save(ckpt, path)
    monkeypatch.undo()  # the classes are gone again: reading must not need them
    assert "pytorch_lightning" not in sys.modules and "omegaconf" not in sys.modules

    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=True)  # why torch's own safe loader is not enough here
    state = read_lightning_state_dict(path, {"encoder.w": torch.Size([4, 3])}, drop_prefixes=("loss.",))
    assert list(state) == ["encoder.w"] and torch.equal(state["encoder.w"], weights["encoder.w"])
    with TorchFile(path) as f:
        obj = f.load(placeholders=LIGHTNING_PLACEHOLDERS)
    assert isinstance(obj["hyper_parameters"], StandIn)
    assert obj["hyper_parameters"].qualname == "omegaconf.dictconfig.DictConfig"
    with pytest.raises(UnsafePickleError, match="pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint"):
        with TorchFile(path) as f:
            f.load()  # without placeholders, Lightning classes are refused too
    with pytest.raises(ValueError, match="missing 1"):
        read_lightning_state_dict(path, {"encoder.w": torch.Size([4, 3]), "decoder.w": torch.Size([1])},
                                  drop_prefixes=("loss.",))
    with pytest.raises(ValueError, match="unexpected 1 \\(loss.disc.w\\)"):
        read_lightning_state_dict(path, {"encoder.w": torch.Size([4, 3])})


def test_a_placeholder_inside_state_dict_is_refused(tmp_path, monkeypatch):
    fake = fake_module(monkeypatch, "pytorch_lightning.thing")

    class Thing:
        pass

    Thing.__module__, Thing.__qualname__ = fake.__name__, "Thing"
    fake.Thing = Thing
    torch.save({"state_dict": {"w": Thing()}}, tmp_path / "x.ckpt")
    with pytest.raises(ValueError, match="state_dict entry 'w' is a Thing, not a tensor"):
        read_lightning_state_dict(tmp_path / "x.ckpt", {"w": torch.Size([1])})


class Payload:
    def __init__(self, marker, func=os.system):
        self.marker, self.func = marker, func

    def __reduce__(self):
        if self.func is os.system:
            return os.system, (f"touch {self.marker}",)
        return self.func, (f"open({str(self.marker)!r}, 'w').close()",)


@pytest.mark.parametrize("zipped", [True, False], ids=["zip", "legacy"])
@pytest.mark.parametrize("func, name", [(os.system, r"(posix|os)\.system"), (exec, "builtins.exec"),
                                        (eval, "builtins.eval")])
@pytest.mark.parametrize("where", ["state_dict", "callbacks", "hyper_parameters"])
def test_malicious_checkpoint_runs_nothing(tmp_path, zipped, func, name, where):
    marker = tmp_path / "pwned"
    ckpt = {"state_dict": {"w": torch.randn(2)}, "callbacks": {}, "hyper_parameters": {}}
    ckpt[where] = {"x": Payload(marker, func)}
    torch.save(ckpt, tmp_path / "evil.ckpt", _use_new_zipfile_serialization=zipped)
    with pytest.raises(UnsafePickleError, match=f"asks to import {name}.*nothing from the file was run"):
        read_lightning_state_dict(tmp_path / "evil.ckpt", {"w": torch.Size([2])})
    assert not marker.exists()


def test_malicious_whole_pickle_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    with open(tmp_path / "evil.pkl", "wb") as f:
        pickle.dump(Payload(marker), f, protocol=2)  # a bare pickle, not even a torch file
    with pytest.raises((UnsafePickleError, ValueError)):
        with TorchFile(tmp_path / "evil.pkl") as f:
            f.load()
    assert not marker.exists()


def write_zip(path, pickled: bytes, records: dict):
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", pickled)
        for key, data in records.items():
            z.writestr(f"archive/data/{key}", data)


class FakeStorage:
    pass


def crafted_tensor_pickle(numel: int, size: tuple, stride: tuple, offset: int = 0) -> bytes:
    """A data.pkl whose one tensor is a (size, stride, offset) view of a FloatStorage of `numel` elements."""
    storage = FakeStorage()

    class Tensor:
        def __reduce__(self):
            return torch._utils._rebuild_tensor_v2, (storage, offset, size, stride, False, OrderedDict())

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            return ("storage", torch.FloatStorage, "0", "cpu", numel) if obj is storage else None

    buf = io.BytesIO()
    Pickler(buf, protocol=2).dump({"t": Tensor()})
    return buf.getvalue()


def test_views_outside_their_storage_are_refused(tmp_path):
    path = tmp_path / "x.pt"
    write_zip(path, crafted_tensor_pickle(4, (100,), (1,)), {"0": bytes(16)})
    with pytest.raises(ValueError, match="reaches element 99 of a storage of 4"):
        TorchFile(path).load()
    write_zip(path, crafted_tensor_pickle(4, (2, 2), (2, 1), offset=1), {"0": bytes(16)})
    with pytest.raises(ValueError, match="reaches element 4"):
        TorchFile(path).load()
    write_zip(path, crafted_tensor_pickle(4, (2,), (-1,)), {"0": bytes(16)})
    with pytest.raises(ValueError, match="negative stride"):
        TorchFile(path).load()


def test_storage_sizes_are_checked_before_allocating(tmp_path):
    path = tmp_path / "x.pt"
    write_zip(path, crafted_tensor_pickle(10**12, (4,), (1,)), {"0": bytes(16)})
    with pytest.raises(ValueError, match="larger than the file"):
        TorchFile(path).load()
    write_zip(path, crafted_tensor_pickle(8, (4,), (1,)), {"0": bytes(16)})  # declares 32 bytes, holds 16
    with TorchFile(path) as f:
        ref = f.load()["t"]
        with pytest.raises(ValueError, match="holds 16 bytes where 32 were declared"):
            f.read(ref)


def test_truncated_and_foreign_files(tmp_path):
    path = tmp_path / "x.pt"
    torch.save({"w": torch.randn(100)}, path, _use_new_zipfile_serialization=False)
    data = path.read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[:-50])
    with pytest.raises(ValueError, match="truncated"):
        TorchFile(tmp_path / "cut.pt").load()
    (tmp_path / "text.pt").write_text("not a torch file at all")
    with pytest.raises(ValueError, match="neither a zip archive nor a legacy"):
        TorchFile(tmp_path / "text.pt").load()
    with zipfile.ZipFile(tmp_path / "other.zip", "w") as z:
        z.writestr("readme.txt", "hello")
    with pytest.raises(ValueError, match="data.pkl"):
        TorchFile(tmp_path / "other.zip").load()


def test_only_regular_files(tmp_path):
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(NotRegularFileError, match="not a regular file"):
        TorchFile(tmp_path / "fifo")
    with pytest.raises(IsADirectoryError, match="is a directory"):
        TorchFile(tmp_path)
    with pytest.raises(FileNotFoundError):
        TorchFile(tmp_path / "absent.pt")
    if os.path.exists("/dev/zero"):
        with pytest.raises(NotRegularFileError, match="not a regular file"):
            TorchFile("/dev/zero")
