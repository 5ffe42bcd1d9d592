"""The config schema: defaults, every check, and the keys each data path
reads (config files and overrides: test_config_files.py)."""

import os
import re

import ml_collections
import pytest

from mmjax import config as config_lib
from mmjax.config.checks import in_bounds
from mmjax.config.schema import GRID_KEYS, KEYS
from mmjax.errors import MmjaxError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHIPPED = ("base", "clothing", "dbbook", "dbbook_e2e", "demo", "large", "mmrec", "tiny")
# What the feature-graph configs need from the command line.
MMREC_ARGS = {"data.dir": "/data/dbbook", "data.inter_file": "dbbook.inter"}


def _set(config, path, value):
  *parents, leaf = path.split(".")
  node = config
  for p in parents:
    node = node[p]
  node[leaf] = value


def _unchecked():
  """The default tree without ConfigDict's type checks, to plant any value."""
  return ml_collections.ConfigDict(config_lib.default_config().to_dict(),
                                   type_safe=False)


def test_defaults_round_trip_the_schema():
  c = config_lib.default_config()
  assert {k.path: config_lib.get(c, k.path) for k in KEYS} == {
      k.path: k.default for k in KEYS}
  config_lib.validate(c)


def test_tree_is_locked():
  c = config_lib.default_config()
  with pytest.raises(AttributeError):
    c.train.stepz = 3


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_configs_validate(name):
  c = config_lib.load(name)
  if c.data.name == "mmrec":
    for path, value in MMREC_ARGS.items():
      _set(c, path, value)
  if c.data.name == "raw":
    c.data.raw.root = "/data/clothing"
  config_lib.validate(c)


def _outside(bounds: str, kind: type):
  """A value of `kind` that breaks `bounds`."""
  for candidate in (-1, 0, 1, 2, -2, -1.5, 0.0, 1.0, 0.5):
    value = kind(candidate)
    if not in_bounds(value, bounds):
      return value
  raise AssertionError(bounds)


BOUNDED = [k for k in KEYS if k.bounds]


@pytest.mark.parametrize("key", BOUNDED, ids=[k.path for k in BOUNDED])
def test_every_bound_is_checked(key):
  c = config_lib.default_config()
  bad = _outside(key.bounds, key.of or key.type)
  _set(c, key.path, (bad,) if key.type is tuple else bad)
  with pytest.raises(MmjaxError, match=f"config.{key.path}="):
    config_lib.validate(c)


CHOOSY = [k for k in KEYS if k.choices]


@pytest.mark.parametrize("key", CHOOSY, ids=[k.path for k in CHOOSY])
def test_every_choice_is_checked(key):
  c = config_lib.default_config()
  bad = ("nope",) if key.type is tuple else "nope"   # A tuple's: per element.
  _set(c, key.path, bad)
  with pytest.raises(MmjaxError, match=f"config.{key.path}={re.escape(repr(bad))}: "
                     "choose (each )?one of"):
    config_lib.validate(c)


@pytest.mark.parametrize("key", KEYS, ids=[k.path for k in KEYS])
def test_every_type_is_checked(key):
  c = _unchecked()
  _set(c, key.path, 3 if key.type is str else "x")
  with pytest.raises(MmjaxError, match=f"config.{key.path}=.*expected"):
    config_lib.validate(c)


@pytest.mark.parametrize("path,value", [
    ("postprocess.item_id_scales", ("half",)),
    ("postprocess.item_id_clusters", (2.5,)),
    ("postprocess.item_id_clusters", (True,)),
    ("postprocess.user_refit_penalties", ("1",)),
    ("model.image.cnn_widths", (16, 0.5)),
])
def test_tuple_elements_are_checked(path, value):
  c = config_lib.default_config()
  _set(c, path, value)
  with pytest.raises(MmjaxError, match=f"config.{path}="):
    config_lib.validate(c)


@pytest.mark.parametrize("path,value,needle", [
    ("model.image.patch_size", 5, "patch_size=5 must divide the image size 32"),
    ("model.text.heads", 3, "model.text.hidden=64 must be divisible by heads=3"),
    ("train.accum_steps", 3, "accum_steps=3 must divide"),
    ("train.freeze", ("text/(",), r"train.freeze\[0\]"),
    ("mesh.rules", (("x", ("batch",)),), "axes must be"),
    ("mesh.data", 0, "mesh.data=0 must be -1 or > 0"),
    ("model.image.init_from", "/nonexistent", "no HF checkpoint folder"),
])
def test_constraints_between_keys(path, value, needle):
  c = config_lib.default_config()
  _set(c, path, value)
  with pytest.raises(MmjaxError, match=needle):
    config_lib.validate(c)


# The values of the hardening issue that used to crash or run: each is now
# refused by validation, naming the key.
@pytest.mark.parametrize("path,value,needle", [
    ("model.image.patch_size", 0, "must be > 0"),
    ("data.prefetch", -1, r"must be in \[0, 256\]"),
    ("model.fusion.heads", 0, "must be > 0"),
    ("model.text.mlp_dim", 0, "must be > 0"),
    ("model.image.cnn_widths", (), "give at least one value"),
    ("train.lr", -1.0, "must be > 0"),
    ("train.lr", float("nan"), "must be finite"),
    ("train.lr", float("inf"), "must be finite"),
    ("loss.infonce", float("nan"), "must be finite"),
    ("loss.mmd", float("-inf"), "must be finite"),
    ("data.worker_count", 100000, r"must be in \[0, 4 \* cpus\] \(cpus="),
    ("data.max_text_len", 100000, r"must be in \[2, 512\]"),
    ("data.max_text_len", 1, r"must be in \[2, 512\]"),
    ("model.text.dropout", 1.0, r"must be in \[0, 1\)"),
    ("seed", -1, "must be in"),
    ("train.steps", 2**31, "must fit 32 bits"),
    ("postprocess.item_id_scales", (float("nan"),), "each must be finite"),
])
def test_values_that_make_no_sense_are_refused(path, value, needle):
  c = config_lib.default_config()
  _set(c, path, value)
  with pytest.raises(MmjaxError, match=f"config.{re.escape(path)}=.*{needle}"):
    config_lib.validate(c)


def test_worker_count_scales_with_the_cpus(monkeypatch):
  from mmjax.config import checks
  c = config_lib.default_config()
  c.data.worker_count = 8
  monkeypatch.setattr(checks, "cpus", lambda: 2)
  config_lib.validate(c)
  c.data.worker_count = 9
  with pytest.raises(MmjaxError, match=r"worker_count=9 must be in .* \(cpus=2\)"):
    config_lib.validate(c)


def test_cross_attention_heads_divide_the_model_dim():
  c = config_lib.default_config()
  c.model.fusion.heads = 5
  config_lib.validate(c)   # Unused by the "mlp" fusion.
  c.model.fusion.kind = "cross_attention"
  with pytest.raises(MmjaxError, match="fusion.heads=5 must divide config.model.dim=64"):
    config_lib.validate(c)


@pytest.mark.parametrize("axes,error", [
    ("train.lr=1e-3,0", r"grid.axes: config.train.lr=0.0 must be > 0"),
    ("train.lr=1e-3,x", r"grid.axes: train.lr='x' is not a float"),
    ("feature_graph.layers=1,2.5", r"feature_graph.layers='2.5' is not a int"),
    ("feature_graph.encoder=linear,cnn", r"feature_graph.encoder='cnn'"),
    ("train.lr", r"'train.lr' is not KEY=V1,V2"),
    ("train.lr=1e-3; train.lr=1e-2", r"train.lr appears twice"),
    ("train.lr=1e-3,1e-3", r"train.lr repeats a value"),
    ("data.dir=a,b", r"'data.dir' cannot be searched"),
])
def test_grid_axes_values_are_values_of_their_keys(axes, error):
  c = _mmrec()
  c.grid.axes = axes
  with pytest.raises(MmjaxError, match=error):
    config_lib.validate(c)


def test_grid_axes_are_a_cartesian_product():
  from mmjax.config import grid
  c = _mmrec()
  c.grid.axes = " loss.bpr=0,0.5 ;feature_graph.layers=1,2,3; "   # A weight: 0 is off.
  config_lib.validate(c)
  axes = grid.parse_axes(c.grid.axes)
  assert axes == [("loss.bpr", (0.0, 0.5)), ("feature_graph.layers", (1, 2, 3))]
  points = grid.points(axes)
  assert len(points) == 6 and points[1] == {"loss.bpr": 0.0, "feature_graph.layers": 2}
  static, vmapped = grid.split_static(axes)
  assert [k for k, _ in static] == ["feature_graph.layers"]
  assert [k for k, _ in vmapped] == ["loss.bpr"]
  assert grid.parse_axes(grid.format_axes(axes)) == axes


def test_max_text_len_fits_the_pretrained_position_table(tmp_path):
  c = config_lib.default_config()
  c.model.text.init_from = str(tmp_path)
  (tmp_path / "config.json").write_text('{"max_position_embeddings": 16}')
  c.data.max_text_len = 16
  config_lib.validate(c)
  c.data.max_text_len = 17
  with pytest.raises(MmjaxError, match="max_text_len=17 exceeds .*max_position_embeddings=16"):
    config_lib.validate(c)
  (tmp_path / "config.json").write_text('{"max_position_embeddings": "x"}')
  with pytest.raises(MmjaxError, match="config.json: max_position_embeddings='x'"):
    config_lib.validate(c)


@pytest.mark.parametrize("key", ["item_id_scales", "item_id_clusters"])
def test_item_id_table_choices_need_the_item_id_embedding(key):
  c = config_lib.default_config()
  c.postprocess[key] = (5,)
  config_lib.validate(c)
  c.model.rec.item_id_embedding = False
  with pytest.raises(MmjaxError, match=f"{key} needs .*item_id_embedding"):
    config_lib.validate(c)


def _mmrec():
  c = config_lib.load("mmrec")
  for path, value in MMREC_ARGS.items():
    _set(c, path, value)
  return c


def test_feature_graph_constraints():
  c = _mmrec()
  c.grid.axes = "train.lr=1e-3,1e-2"
  config_lib.validate(c)
  c.feature_graph.fusion = "mlp"
  with pytest.raises(MmjaxError, match="needs exactly two .*got 0"):
    config_lib.validate(c)
  c.data.feature_files = "a.npy,b.npy"
  config_lib.validate(c)
  c.data.inter_file = ""
  with pytest.raises(MmjaxError, match="config.data.inter_file is required for "
                     "data.name='mmrec'"):
    config_lib.validate(c)


def test_grid_keys_are_the_feature_graph_hyperparameters():
  from mmjax.train import feature_graph_step
  assert set(GRID_KEYS) == set(feature_graph_step.HPARAMS)


@pytest.mark.parametrize("path,value", [
    ("loss.mmd", 0.5), ("loss.coral", 0.0), ("model.text.hidden", 32),
    ("postprocess.item_id_scales", (0.5,)), ("data.synthetic.num_items", 10),
    ("data.raw.image_size", 32), ("train.steps", 10), ("mesh.rules", (("x", ()),)),
])
def test_keys_the_feature_graph_ignores_are_errors(path, value):
  c = _mmrec()
  _set(c, path, value)
  with pytest.raises(MmjaxError, match=f"config.{path}=.* is not read by "
                     "data.name='mmrec' \\(the feature-graph recommender\\)"):
    config_lib.validate(c)


@pytest.mark.parametrize("name", ["synthetic", "raw"])
@pytest.mark.parametrize("path,value", [
    ("feature_graph.negatives", 3), ("data.inter_file", "x.inter"),
    ("data.feature_files", "a.npy"), ("seeds", (0, 1)),
])
def test_keys_the_end_to_end_model_ignores_are_errors(name, path, value):
  c = config_lib.default_config()
  c.data.name = name
  if name == "raw":
    c.data.raw.root = "/data/shop"
  _set(c, path, value)
  with pytest.raises(MmjaxError, match=f"config.{path}=.* is not read by "
                     f"data.name='{name}'"):
    config_lib.validate(c)


def test_the_raw_path_ignores_the_synthetic_catalog():
  c = config_lib.default_config()
  c.data.name, c.data.raw.root = "raw", "/data/shop"
  config_lib.validate(c)
  c.data.synthetic.num_items = 10
  with pytest.raises(MmjaxError, match="data.synthetic.num_items=10 is not read"):
    config_lib.validate(c)
