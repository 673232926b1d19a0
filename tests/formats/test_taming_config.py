"""The YAML-subset reader of taming configs, with PyYAML as the oracle."""
import math
import os
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from dalle_pytorch.errors import NotRegularFileError
from dalle_pytorch.formats.taming_yaml import YamlSubsetError, parse_yaml_subset, read_yaml_subset
from tests.oracles.vae_oracles import REAL_CONFIGS

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "pretrained_vae"

# taming's repository configs are written by hand, with flow lists and comments
TAMING_REPO_CONFIG = """\
model:
  base_learning_rate: 4.5e-6
  target: taming.models.vqgan.VQModel
  params:
    embed_dim: 256
    n_embed: 1024
    ddconfig:
      double_z: False
      z_channels: 256
      resolution: 256
      in_channels: 3
      out_ch: 3
      ch: 128
      ch_mult: [ 1,1,2,2,4]  # num_down = len(ch_mult)-1
      num_res_blocks: 2
      attn_resolutions: [16]
      dropout: 0.0

    lossconfig:
      target: taming.modules.losses.vqperceptual.VQLPIPSWithDiscriminator
      params:
        disc_conditional: False
        disc_start: 10000
        disc_weight: 0.8

data:
  target: main.DataModuleFromConfig
  params:
    batch_size: 5
    train:
      target: taming.data.custom.CustomTrain
      params:
        training_images_list_file: some/training.txt
        size: 256
"""


@pytest.mark.parametrize("name", ["shared", "repo", *REAL_CONFIGS])
def test_taming_configs_read_as_pyyaml_reads_them(name, tmp_path):
    if name == "shared":
        text = (FIXTURES / "vqgan.yaml").read_text()
    else:
        text = TAMING_REPO_CONFIG if name == "repo" else REAL_CONFIGS[name]
    path = tmp_path / "config.yaml"
    path.write_text(text)
    assert read_yaml_subset(path) == yaml.safe_load(text)


def test_scalars():
    doc = parse_yaml_subset("""\
a: 1
b: -7
c: 0
d: 4.5e-06
e: 0.0
f: .5
g: 1.0e+3
h: true
i: False
j: null
k: ~
l:
m: 'quoted: # not a comment'
nn: "esc\\"aped\\n"
o: plain words here   # a comment
p: [1, [2, 3], [], 'x, y', null]
q: {}
r: .inf
s: taming.models.vqgan.VQModel
t: val/rec_loss
""")
    expected = yaml.safe_load(yaml.safe_dump(doc))
    assert doc == expected
    assert doc["d"] == 4.5e-06 and doc["l"] is None and doc["m"] == "quoted: # not a comment"
    assert doc["p"] == [1, [2, 3], [], "x, y", None] and doc["r"] == math.inf and doc["q"] == {}


def test_floats_read_like_omegaconf_where_pyyaml_differs():
    """YAML 1.1 (PyYAML) reads these as strings; OmegaConf, which DALLE-pytorch used, as floats."""
    doc = parse_yaml_subset("a: 1e-6\nb: 1.0e5\nc: -.5\n")
    assert doc == {"a": 1e-6, "b": 1.0e5, "c": -0.5}
    assert yaml.safe_load("a: 1e-6\nb: 1.0e5\nc: -.5\n") == {"a": "1e-6", "b": "1.0e5", "c": "-.5"}


@pytest.mark.parametrize("text, message", [
    ("a: &x 1\nb: *x\n", "anchors"),
    ("a: *x\n", "aliases"),
    ("a: !!python/object:os.system x\n", "tags"),
    ("a: |\n  text\n", "block scalars"),
    ("a: 1\n---\nb: 2\n", "several YAML documents"),
    ("%YAML 1.1\na: 1\n", "directives"),
    ("a:\n\tb: 1\n", "tabs"),
    ("a: 1\na: 2\n", "duplicate key"),
    ("a: {b: 1}\n", "flow mappings"),
    ("a: yes\n", "YAML 1.1"),
    ("a: On\n", "YAML 1.1"),
    ("a: 0x1F\n", "read differently"),
    ("a: 017\n", "read differently"),
    ("a: 1_000\n", "read differently"),
    ("a: 1:30\n", "read differently"),
    ("a: 2021-01-01\n", "date"),
    ("a:\n- b: 1\n", "mappings inside lists"),
    ("a:\n- - 1\n", "nested block lists"),
    ("a: word\n  more words\n", "multi-line"),
    ("a: [1, 2\n", "unterminated flow list"),
    ("a: [1 2, , 3]\n", "empty item"),
    ("? a\n: 1\n", "complex keys"),
    ("a: b: c\n", "ambiguous"),
    ("a b: 1\n", "unsupported key"),
    ("true: 1\n", "unsupported key"),
    ("n: 1\n", "unsupported key"),
    ("  a: 1\n", "column 0"),
    ("a:\n  b: 1\n c: 2\n", "unexpected indentation"),
])
def test_outside_the_subset_is_refused(text, message):
    with pytest.raises(YamlSubsetError, match=message) as info:
        parse_yaml_subset(text, "cfg.yaml")
    assert str(info.value).startswith("cfg.yaml:")


def test_files_must_be_regular_and_small(tmp_path):
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(NotRegularFileError, match="not a regular file"):
        read_yaml_subset(tmp_path / "fifo")
    with pytest.raises(IsADirectoryError, match="is a directory"):
        read_yaml_subset(tmp_path)
    (tmp_path / "big.yaml").write_text("a: 1\n" * 300_000)
    with pytest.raises(ValueError, match="more than the"):
        read_yaml_subset(tmp_path / "big.yaml")
    (tmp_path / "bin.yaml").write_bytes(b"a: \xff\xfe\n")
    with pytest.raises(YamlSubsetError, match="not UTF-8"):
        read_yaml_subset(tmp_path / "bin.yaml")


RESERVED = {"y", "n", "yes", "no", "on", "off", "true", "false", "null", "nan", "inf"}
names = st.text("abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=8).filter(lambda s: s.lower() not in RESERVED)
scalars = (st.integers(-10**6, 10**6) | st.floats(allow_nan=False, allow_infinity=False, width=32) | st.booleans()
           | st.none() | names)
values = st.recursive(scalars | st.lists(scalars, max_size=4),
                      lambda inner: st.dictionaries(names, inner, min_size=1, max_size=4), max_leaves=12)


@settings(max_examples=150, deadline=None)
@given(doc=st.dictionaries(names, values, min_size=1, max_size=5))
def test_pyyaml_block_dumps_read_back(doc):
    """What PyYAML (and OmegaConf) write: block mappings, block lists at the key's indentation."""
    text = yaml.safe_dump(doc, default_flow_style=False, sort_keys=False)
    assert parse_yaml_subset(text) == yaml.safe_load(text)


flow_lists = st.recursive(st.lists(scalars, max_size=4), lambda inner: st.lists(inner | scalars, max_size=4),
                          max_leaves=10)


@settings(max_examples=150, deadline=None)
@given(key=names, value=flow_lists)
def test_pyyaml_flow_lists_read_back(key, value):
    text = f"{key}: {yaml.safe_dump(value, default_flow_style=True, width=10**6).strip()}  # comment\n"
    assert parse_yaml_subset(text) == yaml.safe_load(text)
