import io
import json
import os
import stat
import sys
import tarfile
import types
import warnings

import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from dalle_pytorch.train import folder_index
from dalle_pytorch.train.datasets import TextImageDataset, image_to_tensor, random_resized_crop
from dalle_pytorch.train.webdataset import webdataset_loader

TEXT_LEN = 16
RGB = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255), "gray": (128, 128, 128)}


class FakeTokenizer:
    """Reversible stand-in for dalle_pytorch.text.factory: one token per character, 0 = padding."""

    def tokenize(self, texts, context_length=256, truncate_text=False):
        out = torch.zeros(len(texts), context_length, dtype=torch.long)
        for i, text in enumerate(texts):
            ids = [ord(c) for c in text]
            if len(ids) > context_length:
                if not truncate_text:
                    raise ValueError(f"caption too long: {text!r}")
                ids = ids[:context_length]
            out[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        return out


def decode(tokens):
    return "".join(chr(t) for t in tokens.tolist() if t)


def write_pair(root, rel, caption, color=(255, 0, 0), size=(24, 24), mode="RGB", ext=".png"):
    path = root / (rel + ext)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path)
    if caption is not None:
        (root / (rel + ".txt")).write_text(caption, encoding="utf-8")
    return path


def make(folder, **kwargs):
    kwargs.setdefault("text_len", TEXT_LEN)
    kwargs.setdefault("image_size", 8)
    kwargs.setdefault("tokenizer", FakeTokenizer())
    return TextImageDataset(folder, **kwargs)


@pytest.fixture
def no_racy_window(monkeypatch):
    # Directories created by a test are seconds old, which the cache treats as "racy".
    monkeypatch.setattr(folder_index, "RACY_WINDOW_NS", 0)


@pytest.mark.filterwarnings("ignore:TextImageDataset. left out")  # an image without a caption, on purpose
def test_pairs_by_relative_path(tmp_path):
    write_pair(tmp_path, "a/x", "red", RGB["red"])
    write_pair(tmp_path, "b/x", "green", RGB["green"])
    write_pair(tmp_path, "b/c/Y", "blue", RGB["blue"], ext=".JPG")
    write_pair(tmp_path, "lonely", None)  # image without caption: ignored
    (tmp_path / "a" / "orphan.txt").write_text("no image")  # caption without image: ignored
    (tmp_path / "a" / "x.json").write_text("{}")  # other files: ignored
    ds = make(tmp_path, index_cache=False)
    assert len(ds) == 3
    assert [p[0] for p in ds.pairs] == ["a/x.png", "b/c/Y.JPG", "b/x.png"]
    for i in range(len(ds)):
        text, image = ds[i]
        name = decode(text)
        expected = torch.tensor(RGB[name], dtype=torch.float32) / 255
        # jpeg is lossy; the colour of the image is that of its own caption
        assert torch.allclose(image.mean(dim=(1, 2)), expected, atol=0.05), name


def test_random_line_choice_and_determinism(tmp_path):
    write_pair(tmp_path, "x", "one\n\n  two  \nthree\n\n")
    ds = make(tmp_path, index_cache=False)
    seen = set()
    for epoch in range(40):
        ds.set_epoch(epoch)
        seen.add(decode(ds[0][0]))
    assert seen == {"one", "two", "three"}
    ds.set_epoch(3)
    t1, i1 = ds[0]
    t2, i2 = ds[0]
    other = make(tmp_path, index_cache=False)
    other.set_epoch(3)
    t3, i3 = other[0]
    assert torch.equal(t1, t2) and torch.equal(t1, t3)
    assert torch.equal(i1, i2) and torch.equal(i1, i3)


def test_output_shapes_dtypes_range(tmp_path):
    write_pair(tmp_path, "wide", "wide", (10, 200, 30), size=(40, 24))
    write_pair(tmp_path, "gray", "gray", 77, size=(20, 30), mode="L")
    write_pair(tmp_path, "alpha", "alpha", (1, 2, 3, 4), mode="RGBA")
    ds = make(tmp_path, image_size=12, index_cache=False)
    for i in range(len(ds)):
        text, image = ds[i]
        assert text.shape == (TEXT_LEN,) and text.dtype == torch.long
        assert image.shape == (3, 12, 12) and image.dtype == torch.float32
        assert 0.0 <= image.min() and image.max() <= 1.0


def test_transparent_gives_four_channels(tmp_path):
    write_pair(tmp_path, "x", "x", (255, 0, 0, 128), mode="RGBA")
    write_pair(tmp_path, "y", "y", (0, 255, 0), mode="RGB")
    ds = make(tmp_path, transparent=True, index_cache=False)
    _, image = ds[0]
    assert image.shape == (4, 8, 8)
    assert torch.allclose(image[3], torch.full((8, 8), 128 / 255))
    _, opaque = ds[1]
    assert opaque.shape == (4, 8, 8) and torch.all(opaque[3] == 1.0)


def test_crop_with_full_ratio_is_plain_resize():
    img = Image.new("RGB", (16, 16))
    img.putpixel((3, 5), (255, 255, 255))
    out = random_resized_crop(img, 16, scale=(1.0, 1.0))
    assert torch.equal(image_to_tensor(out), image_to_tensor(img))


def test_over_long_caption(tmp_path):
    """A caption longer than text_len is a bad sample like the others (it used to stop a training run
    with a traceback at whatever step first drew it): skipped, counted, named with the flag to use."""
    write_pair(tmp_path, "x", "a" * (TEXT_LEN + 5))
    with pytest.warns(UserWarning, match="x.txt: caption longer than 16 tokens.*--truncate_captions"):
        with pytest.raises(RuntimeError, match="no loadable sample.*x.txt: caption longer.*--truncate_captions"):
            make(tmp_path, index_cache=False)[0]
    text, _ = make(tmp_path, index_cache=False, truncate_captions=True)[0]
    assert decode(text) == "a" * TEXT_LEN
    for i in range(30):
        write_pair(tmp_path, f"ok{i}", "g")
    ds = make(tmp_path, index_cache=False, max_bad_fraction=0.1)
    with pytest.warns(UserWarning, match="x.txt: caption longer"):
        assert len([ds[i] for i in range(len(ds))]) == 31
    assert ds.skipped == ["x.txt"]


def test_over_long_caption_gives_one_hint(tmp_path):
    """The skip (and the error when nothing loads) says what to do once: not the tokenizer's own error and
    hint nested in parentheses after the script's hint."""
    write_pair(tmp_path, "x", "a" * (TEXT_LEN + 5))
    with pytest.warns(UserWarning) as record, pytest.raises(RuntimeError) as error:
        make(tmp_path, index_cache=False)[0]
    for text in [str(w.message) for w in record] + [str(error.value)]:
        assert "caption longer than 16 tokens: shorten it, raise --text_seq_len or pass --truncate_captions" in text
        assert "(" not in text and "caption too long" not in text, text


def test_images_without_captions_are_counted_in_one_warning(tmp_path, no_racy_window):
    for i in range(2):
        write_pair(tmp_path, f"pair{i}", f"caption {i}")
    for i in range(4):
        write_pair(tmp_path, f"sub/alone{i}", None)
    message = r"TextImageDataset: left out 4 images without a \.txt caption in .*: sub/alone0\.png, sub/alone1\.png, " \
              r"sub/alone2\.png, \.\.\.$"
    with pytest.warns(UserWarning, match=message) as record:
        ds = make(tmp_path)
    assert len(ds) == 2 and ds.uncaptioned == [f"sub/alone{i}.png" for i in range(4)]
    assert sum("left out" in str(w.message) for w in record) == 1
    with pytest.warns(UserWarning, match=message):  # the index cache keeps them too
        again = make(tmp_path)
    assert again.cache_hit and again.uncaptioned == ds.uncaptioned
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        [ds[i] for i in range(len(ds))]  # said once, at the start: reading the samples says nothing more
    write_pair(tmp_path / "one", "alone", None)  # no pair at all: the error says why
    with pytest.raises(ValueError, match="The one image there has no caption"):
        make(tmp_path / "one", index_cache=False)
    write_pair(tmp_path / "one", "pair", "a caption")
    with pytest.warns(UserWarning, match=r"left out 1 image without a \.txt caption in .*: alone\.png$"):
        make(tmp_path / "one", index_cache=False)


# ----------------------------------------------------------------------------- index cache


@pytest.mark.filterwarnings("ignore:TextImageDataset. left out")  # an image without a caption, on purpose
def test_index_cache_written_reused_and_invalidated(tmp_path, monkeypatch, no_racy_window):
    data = tmp_path / "data"
    for i in range(3):
        write_pair(data, f"sub/{i}", f"c{i}")
    first = make(data)
    assert not first.cache_hit
    cache_file = data / ".dalle_cache" / "index.json"
    cached = json.loads(cache_file.read_text())
    assert cached["pairs"] == [[f"sub/{i}.png", f"sub/{i}.txt"] for i in range(3)]
    assert cached["count"] == 3 and set(cached["dirs"]) == {".", "sub"}

    # Reused without listing the folder or stat-ing any file (only directories).
    real_scandir, real_stat = os.scandir, os.stat
    stats = []
    monkeypatch.setattr(folder_index.os, "scandir", lambda *a: pytest.fail("scandir on cache hit"))
    monkeypatch.setattr(folder_index.os, "stat", lambda p, *a, **k: stats.append(p) or real_stat(p, *a, **k))
    second = make(data)
    assert second.cache_hit and second.pairs == first.pairs
    monkeypatch.setattr(folder_index.os, "scandir", real_scandir)
    monkeypatch.setattr(folder_index.os, "stat", real_stat)
    assert {os.fspath(p) for p in stats} == {str(data), str(data / "sub"), os.path.join(str(data), ".")}

    # A new file in a subdirectory changes only that directory's mtime: still detected.
    write_pair(data, "sub/new", "new")
    third = make(data)
    assert not third.cache_hit and len(third) == 4
    assert make(data).cache_hit

    # Removing a pair, and adding a new directory, are detected too.
    os.remove(data / "sub" / "0.txt")
    fourth = make(data)
    assert not fourth.cache_hit and len(fourth) == 3
    write_pair(data, "other/z", "z")
    assert len(make(data)) == 4


def test_fresh_directories_are_not_trusted(tmp_path):
    # Default racy window: a directory modified within 2 s of the scan forces a rescan.
    write_pair(tmp_path, "x", "x")
    make(tmp_path)
    assert not make(tmp_path).cache_hit


def test_custom_and_corrupt_cache(tmp_path, no_racy_window):
    data = tmp_path / "data"
    write_pair(data, "x", "x")
    cache = tmp_path / "elsewhere" / "idx.json"
    make(data, index_cache=cache)
    assert cache.exists() and not (data / ".dalle_cache").exists()
    assert make(data, index_cache=cache).cache_hit
    cache.write_text("{not json")
    ds = make(data, index_cache=cache)
    assert not ds.cache_hit and len(ds) == 1
    assert json.loads(cache.read_text())["count"] == 1
    # A cache written for another folder is not used for this one.
    other = tmp_path / "other"
    write_pair(other, "y", "y")
    write_pair(other, "z", "z")
    ds = make(other, index_cache=cache)
    assert not ds.cache_hit and len(ds) == 2


@pytest.mark.skipif(os.name != "posix", reason="POSIX permission bits")
def test_index_cache_gets_the_usual_permissions(tmp_path):
    write_pair(tmp_path, "x", "x")
    cache = tmp_path / ".cache" / "index.json"
    old = os.umask(0o022)
    try:
        make(tmp_path, index_cache=cache)
    finally:
        os.umask(old)
    assert stat.S_IMODE(cache.stat().st_mode) == 0o644  # readable by the other users of a shared dataset


def test_unwritable_cache_falls_back_with_warning(tmp_path, monkeypatch):
    write_pair(tmp_path, "x", "x")

    def refuse(*args, **kwargs):
        raise PermissionError("read-only file system")

    monkeypatch.setattr(folder_index, "write_json", refuse)
    with pytest.warns(UserWarning, match="could not write the index cache"):
        ds = make(tmp_path)
    assert len(ds) == 1 and ds[0][1].shape == (3, 8, 8)

    monkeypatch.setattr(folder_index.os, "makedirs", refuse)
    with pytest.warns(UserWarning, match="continuing without a cache"):
        ds = make(tmp_path, index_cache=tmp_path / ".ro" / "index.json")
    assert len(ds) == 1


# ----------------------------------------------------------------------------- bad samples


def folder_with_bad_samples(root, good=10):
    for i in range(good):
        write_pair(root, f"good{i:02d}", f"g{i}")
    (root / "bad_image.png").write_bytes(b"this is not a png")
    (root / "bad_image.txt").write_text("caption of a broken image")
    write_pair(root, "empty_caption", "\n  \n")
    return root


def test_bad_samples_skipped_with_warnings_and_counted(tmp_path):
    ds = make(folder_with_bad_samples(tmp_path), index_cache=False, max_bad_fraction=0.5)
    assert len(ds) == 12
    with pytest.warns(UserWarning) as record:
        items = [ds[i] for i in range(len(ds))]
    messages = " ".join(str(w.message) for w in record)
    assert "bad_image.png" in messages and "empty_caption.txt" in messages
    assert ds.num_skipped == 2
    assert sorted(ds.skipped) == ["bad_image.png", "empty_caption.txt"]
    for text, image in items:
        assert decode(text).startswith("g") and image.shape == (3, 8, 8)
    # Each bad sample is counted (and warned about) once.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for i in range(len(ds)):
            ds[i]
    assert ds.num_skipped == 2


def test_too_many_bad_samples_raise(tmp_path):
    ds = make(folder_with_bad_samples(tmp_path), index_cache=False, max_bad_fraction=0.0)
    with pytest.warns(UserWarning):
        with pytest.raises(RuntimeError, match=r"2 of 12 samples .*bad_image\.png"):
            for i in range(len(ds)):
                ds[i]


def test_empty_folder_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match=r"no image/caption pairs.*x\.txt"):
        make(tmp_path)
    write_pair(tmp_path, "only_image", None)
    with pytest.raises(ValueError, match=str(tmp_path.name)):
        make(tmp_path)
    with pytest.raises(ValueError, match="not a directory"):
        make(tmp_path / "missing")


@pytest.mark.parametrize("num_workers", [0, 2])
def test_dataloader(tmp_path, num_workers):
    for i in range(6):
        write_pair(tmp_path, f"{i}", f"caption {i}", (40 * i, 0, 0))
    ds = make(tmp_path, index_cache=False)
    loader = DataLoader(ds, batch_size=4, num_workers=num_workers, shuffle=True)
    batches = list(loader)
    assert [b[0].shape for b in batches] == [(4, TEXT_LEN), (2, TEXT_LEN)]
    assert [b[1].shape for b in batches] == [(4, 3, 8, 8), (2, 3, 8, 8)]
    texts = sorted(decode(t) for b in batches for t in b[0])
    assert texts == [f"caption {i}" for i in range(6)]


# ----------------------------------------------------------------------------- webdataset


def write_shards(root, num_shards=2, per_shard=3):
    root.mkdir(parents=True, exist_ok=True)
    for s in range(num_shards):
        with tarfile.open(root / f"shard-{s:03d}.tar", "w") as tar:
            for k in range(per_shard):
                key = f"{s:03d}{k:03d}"
                buf = io.BytesIO()
                Image.new("RGB", (20, 16), (0, 0, 200)).save(buf, format="JPEG")
                for ext, payload in (("jpg", buf.getvalue()), ("txt", f"cap {key}\n".encode())):
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size = len(payload)
                    tar.addfile(info, io.BytesIO(payload))
    return root


def test_webdataset_missing_gives_install_hint(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "webdataset", None)
    with pytest.raises(ImportError, match=r"pip install webdataset \(the webdataset extra"):
        webdataset_loader(str(tmp_path / "*.tar"), tokenizer=FakeTokenizer())


def fake_webdataset(calls):
    """Minimal in-process stand-in for the parts of webdataset the loader uses."""
    wds = types.ModuleType("webdataset")

    def stage(name, fn):
        def make_stage(*args, **kwargs):
            calls.append(name)
            return lambda src: fn(src, *args, **kwargs)

        return make_stage

    class SimpleShardList:
        def __init__(self, urls):
            calls.append("shards")
            self.urls = urls

        def __iter__(self):
            return iter([{"url": u} for u in self.urls])

    def split_by_node(src):
        calls.append("split_by_node")
        return src

    def split_by_worker(src):
        calls.append("split_by_worker")
        return src

    def tar_samples(src, handler=None):
        for shard in src:
            with tarfile.open(shard["url"]) as tar:
                samples = {}
                for m in tar.getmembers():
                    key, ext = m.name.split(".", 1)
                    samples.setdefault(key, {"__key__": key})[ext] = tar.extractfile(m).read()
                yield from samples.values()

    def map_samples(src, fn, handler=None):
        return (fn(s) for s in src)

    def batched(src, n, collation_fn, partial=True):
        batch = []
        for s in src:
            batch.append(s)
            if len(batch) == n:
                yield collation_fn(batch)
                batch = []

    class DataPipeline:
        def __init__(self, *stages):
            self.stages = stages

        def __iter__(self):
            it = self.stages[0]
            for st in self.stages[1:]:
                it = st(it)
            return iter(it)

    wds.SimpleShardList = SimpleShardList
    wds.split_by_node, wds.split_by_worker = split_by_node, split_by_worker
    wds.tarfile_to_samples = stage("tarfile_to_samples", tar_samples)
    wds.shuffle = stage("shuffle", lambda src, n: src)
    wds.map = stage("map", map_samples)
    wds.batched = stage("batched", batched)
    wds.DataPipeline = DataPipeline
    wds.WebLoader = lambda pipeline, **kwargs: pipeline
    wds.warn_and_continue = object()
    return wds


def test_webdataset_loader_with_fake_module(monkeypatch, tmp_path):
    write_shards(tmp_path / "shards")
    calls = []
    wds = fake_webdataset(calls)
    monkeypatch.setitem(sys.modules, "webdataset", wds)
    loader = webdataset_loader(
        str(tmp_path / "shards" / "shard-*.tar"), text_len=TEXT_LEN, image_size=8,
        tokenizer=FakeTokenizer(), batch_size=2,
    )
    # shards are split by rank, then by worker, before anything is read
    assert loader.stages[1] is wds.split_by_node and loader.stages[2] is wds.split_by_worker
    assert loader.stages[0].urls == [str(tmp_path / "shards" / f"shard-{s:03d}.tar") for s in range(2)]
    batches = list(loader)
    assert "split_by_node" in calls and "split_by_worker" in calls
    assert len(batches) == 3
    for text, image in batches:
        assert text.shape == (2, TEXT_LEN) and text.dtype == torch.long
        assert image.shape == (2, 3, 8, 8) and image.dtype == torch.float32
    assert decode(batches[0][0][0]) == "cap 000000"
    with pytest.raises(ValueError, match="no file matches"):
        webdataset_loader(str(tmp_path / "nothing-*.tar"), tokenizer=FakeTokenizer())


def test_webdataset_loader_real(tmp_path):
    pytest.importorskip("webdataset")
    write_shards(tmp_path)
    loader = webdataset_loader(
        str(tmp_path / "*.tar"), text_len=TEXT_LEN, image_size=8, tokenizer=FakeTokenizer(),
        batch_size=2, num_workers=0, shuffle_buffer=0,
    )
    batches = list(loader)
    assert len(batches) == 3
    text, image = batches[0]
    assert text.shape == (2, TEXT_LEN) and image.shape == (2, 3, 8, 8)
    assert 0.0 <= image.min() and image.max() <= 1.0


# -- image modes and bombs in training data ----------------------------------------------------------


@pytest.mark.filterwarnings("ignore:TextImageDataset. left out")  # an image without a caption, on purpose
def test_sixteen_bit_and_float_images_are_scaled(tmp_path):
    """A mid-grey 16-bit PNG (32768 of 65535) used to come out white; now 0.5, in both datasets."""
    import numpy as np

    from dalle_pytorch.train.datasets import ImageFolder

    Image.fromarray(np.full((16, 16), 32768, np.uint16)).save(tmp_path / "grey16.png")
    (tmp_path / "grey16.txt").write_text("grey", encoding="utf-8")
    Image.fromarray(np.full((16, 16), 0.25, np.float32), "F").save(tmp_path / "float.tiff")
    ds = make(tmp_path, index_cache=False, resize_ratio=1.0)
    (_, image), = [ds[i] for i in range(len(ds))]
    assert torch.allclose(image, torch.full_like(image, 128 / 255), atol=1e-6)
    folder = ImageFolder(tmp_path, 8, max_bad_fraction=0.0)
    values = sorted(round(float(folder[i].mean()), 3) for i in range(len(folder)))
    assert values == [round(64 / 255, 3), round(128 / 255, 3)]


def test_a_decompression_bomb_is_a_counted_skip(tmp_path, monkeypatch):
    for i in range(4):
        write_pair(tmp_path, f"ok{i}", "g fine")
    write_pair(tmp_path, "bomb", "g bomb", size=(200, 200))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 20000)  # 200 x 200 = 40000: refused as a bomb
    ds = make(tmp_path, index_cache=False, max_bad_fraction=0.5)
    with pytest.warns(UserWarning, match="bomb.png.*decompression bomb"):
        items = [ds[i] for i in range(len(ds))]
    assert len(items) == 5 and ds.skipped == ["bomb.png"]
