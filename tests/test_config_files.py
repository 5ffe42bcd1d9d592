"""Config files and overrides: unknown and old keys, values and their types,
resolving shipped configs by name, and the generated docs/config.md."""

import os
import re

import pytest
from test_config import SHIPPED

from mmjax import config as config_lib
from mmjax.config import doc, loader
from mmjax.config.schema import KEYS, RENAMED
from mmjax.errors import MmjaxError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_unknown_override_key_suggests_the_closest():
  with pytest.raises(MmjaxError, match=r"unknown config key: config.train.stepz "
                     r"\(did you mean config.train.steps\?\)"):
    loader.split_overrides(["--config.train.stepz=3"])
  with pytest.raises(MmjaxError, match="config.model.text is a section"):
    loader.split_overrides(["--config.model.text=3"])


def _config_file(tmp_path, body, name="c.py"):
  path = tmp_path / name
  path.write_text("from mmjax.config import default_config\n\n"
                  "def get_config():\n  c = default_config()\n"
                  f"  {body}\n  return c\n")
  return str(path)


def test_unknown_key_in_a_config_file_names_the_line(tmp_path):
  path = _config_file(tmp_path, "c.model.text.hiden = 3")
  with pytest.raises(MmjaxError, match=re.escape(path) + ":5: unknown config key 'hiden' "
                     r"\(did you mean config.model.text.hidden"):
    config_lib.load(path)


def test_wrong_type_in_a_config_file(tmp_path):
  path = _config_file(tmp_path, "c.train.steps = 1.5")
  with pytest.raises(MmjaxError, match=re.escape(path) + ":5: steps=1.5: expected an integer"):
    config_lib.load(path)


def _old_path(old):
  """A leaf path under `old` (a renamed section names its keys)."""
  return old + ".negatives" if old == "frozen" else old


@pytest.mark.parametrize("old", list(RENAMED))
def test_old_keys_name_the_new_one(old, tmp_path):
  new = RENAMED[old]
  want = (f"config.{_old_path(old)} was renamed config.{new}" if new
          else f"config.{old} was removed")
  with pytest.raises(MmjaxError, match=want):
    loader.split_overrides([f"--config.{_old_path(old)}=1"])
  path = _config_file(tmp_path, f"c.{_old_path(old)} = 1")
  with pytest.raises(MmjaxError, match=re.escape(path) + f":5: config.{old} was "
                     + (f"renamed config.{new}" if new else "removed")):
    config_lib.load(path)


@pytest.mark.parametrize("path,text,value", [
    ("seeds", "0,1,2", (0, 1, 2)),
    ("seeds", "(0, 1)", (0, 1)),
    ("seeds", "", ()),
    ("train.freeze", "text/.*", ("text/.*",)),
    ("grid.axes", "train.lr=1e-3,3e-3", "train.lr=1e-3,3e-3"),
    ("data.augment", "false", False),
    ("train.lr", "1", 1.0),
    ("data.name", "raw", "raw"),
])
def test_override_values_take_the_key_type(path, text, value):
  c = config_lib.default_config()
  loader.apply_override(c, path, text)
  assert config_lib.get(c, path) == value


def test_override_of_the_wrong_type():
  with pytest.raises(MmjaxError, match=r"--config.train.steps=abc: expected an integer"):
    loader.apply_override(config_lib.default_config(), "train.steps", "abc")


def test_overrides_with_a_space_and_the_other_arguments():
  assert loader.split_overrides(["--config.train.steps", "5", "--workdir=w"]) == (
      [("train.steps", "5")], ["--workdir=w"])


def test_config_argument():
  assert config_lib.load("demo:small").train.steps < config_lib.load("demo").train.steps
  with pytest.raises(MmjaxError, match="unknown variant 'huge'"):
    config_lib.load("demo:huge")
  with pytest.raises(MmjaxError, match=r"get_config\(\) takes no argument"):
    config_lib.load("base:small")
  raw = config_lib.load(os.path.join(ROOT, "tests", "tiny_cli_config.py") + ":raw")
  assert raw.data.synthetic.num_items == config_lib.default_config().data.synthetic.num_items


@pytest.mark.parametrize("spec", ["demo", "demo.py", "configs/demo.py"])
def test_shipped_configs_resolve_by_name(spec, tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)   # No configs/ here: the packaged file is used.
  path, arg = config_lib.resolve(spec + ":small")
  assert path == os.path.join(loader.shipped_dir(), "demo.py") and arg == "small"


def test_an_existing_file_wins_and_a_missing_one_lists_the_shipped(tmp_path):
  path = _config_file(tmp_path, "pass", name="demo.py")
  assert config_lib.resolve(path) == (path, None)
  assert config_lib.shipped_configs() == list(SHIPPED)
  with pytest.raises(MmjaxError, match="config file not found: nope .shipped "
                     "configs: base, clothing, dbbook, dbbook_e2e, demo, large, mmrec, tiny"):
    config_lib.resolve("nope")
  with pytest.raises(MmjaxError, match="config file not found"):
    config_lib.resolve(str(tmp_path / "elsewhere" / "demo.py"))


def test_configs_ship_in_the_package():
  assert os.path.isfile(os.path.join(loader.shipped_dir(), "__init__.py"))
  assert os.path.realpath(os.path.join(ROOT, "configs")) == os.path.realpath(
      loader.shipped_dir())


def test_config_reference_is_current():
  with open(os.path.join(ROOT, "docs", "config.md")) as f:
    written = f.read()
  assert written == doc.markdown(), (
      f"docs/config.md is stale; regenerate it: {doc.COMMAND}")
  for key in KEYS:
    assert f"`{key.path}`" in written
