"""validate(): every value against its schema Key, then the constraints
between keys. Each problem is one MmjaxError naming the key."""

from __future__ import annotations

import os
import re

from mmjax.config.schema import KEYS, PATH_NAMES, Key
from mmjax.config.tree import get
from mmjax.errors import MmjaxError


def validate(config) -> None:
  """Raises MmjaxError naming the first bad key."""
  for key in KEYS:
    check_value(key, get(config, key.path))
  _check_paths(config)
  _check_between_keys(config)
  _check_sharding_rules(config.mesh.rules)
  _check_pretrained(config)


def _is(value, kind: type) -> bool:
  """`value` is a `kind` as the config means it: bools are not numbers, and
  an int is a float."""
  if kind is bool:
    return isinstance(value, bool)
  if isinstance(value, bool):
    return False
  if kind is float:
    return isinstance(value, (int, float))
  return isinstance(value, kind)


_TYPE_NAMES = {bool: "a bool", int: "an integer", float: "a number",
               str: "a string", tuple: "a tuple"}


def type_name(kind: type) -> str:
  return _TYPE_NAMES.get(kind, kind.__name__)


def in_bounds(value, bounds: str) -> bool:
  """Whether `value` satisfies `bounds`: "> 0", ">= 2", "[0, 1)", "(0, 1)"."""
  m = re.fullmatch(r"(>=|>)\s*(\S+)", bounds)
  if m:
    lo = float(m.group(2))
    return value >= lo if m.group(1) == ">=" else value > lo
  m = re.fullmatch(r"([\[(])\s*(\S+),\s*(\S+)\s*([\])])", bounds)
  if not m:
    raise ValueError(f"bad bounds {bounds!r}")
  lo, hi = float(m.group(2)), float(m.group(3))
  above = value >= lo if m.group(1) == "[" else value > lo
  below = value <= hi if m.group(4) == "]" else value < hi
  return above and below


def _must_be(bounds: str) -> str:
  return f"in {bounds}" if bounds[0] in "[(" else bounds


def check_value(key: Key, value) -> None:
  """The type, choices and bounds of one key's value."""
  where = f"config.{key.path}={value!r}"
  if not _is(value, key.type):
    raise MmjaxError(f"{where}: expected {type_name(key.type)}")
  if key.choices and value not in key.choices:
    raise MmjaxError(f"{where}: choose one of {key.choices}")
  if key.type is tuple:
    if key.of is not None:
      if not all(_is(v, key.of) for v in value):
        raise MmjaxError(f"{where}: expected a tuple of {type_name(key.of)}s")
      if key.bounds and not all(in_bounds(v, key.bounds) for v in value):
        raise MmjaxError(f"{where}: each must be {_must_be(key.bounds)}")
  elif key.bounds and not in_bounds(value, key.bounds):
    raise MmjaxError(f"{where} must be {_must_be(key.bounds)}")


def _check_paths(config) -> None:
  """Keys the chosen data path reads are set where it needs them; keys it
  ignores are at their defaults (a set value would silently do nothing)."""
  name = config.data.name
  for key in KEYS:
    value = get(config, key.path)
    if name in key.required_on and value == "":
      raise MmjaxError(f"config.{key.path} is required for data.name={name!r}")
    if name not in key.paths and not _same(value, key.default):
      raise MmjaxError(
          f"config.{key.path}={value!r} is not read by data.name={name!r} "
          f"({PATH_NAMES[name]}); leave it at its default {key.default!r}")


def _same(value, default) -> bool:
  if isinstance(default, tuple):
    return tuple(value) == default
  return value == default


def _check_between_keys(config) -> None:
  rec, post = config.model.rec, config.postprocess
  for path in ("item_id_scales", "item_id_clusters"):
    if post[path] and not rec.item_id_embedding:
      raise MmjaxError(f"config.postprocess.{path} needs "
                       "config.model.rec.item_id_embedding=True")
  if config.mesh.data != -1 and config.mesh.data <= 0:
    raise MmjaxError(f"config.mesh.data={config.mesh.data} must be -1 or > 0")
  if config.data.name == "mmrec":
    _check_feature_graph(config)
    return
  raw = config.data.raw
  if config.data.name == "raw" and raw.valid_fraction + raw.test_fraction >= 1:
    raise MmjaxError("config.data.raw.valid_fraction and test_fraction must "
                     "sum to < 1")
  size = (raw.image_size if config.data.name == "raw"
          else config.data.synthetic.image_size)
  patch = config.model.image.patch_size
  if config.model.image.kind == "vit" and size % patch:
    raise MmjaxError(
        f"config.model.image.patch_size={patch} must divide the image size {size}")
  for tower in ("text", "image"):
    t = config.model[tower]
    if t.hidden % t.heads:
      raise MmjaxError(
          f"config.model.{tower}.hidden={t.hidden} must be divisible by heads={t.heads}")
  if config.train.batch_size % config.train.accum_steps:
    raise MmjaxError(
        f"config.train.accum_steps={config.train.accum_steps} must divide "
        f"config.train.batch_size={config.train.batch_size}")


def _check_feature_graph(config) -> None:
  grid = config.grid
  if bool(grid.key) != bool(grid.points):
    raise MmjaxError("config.grid.key and config.grid.points go together")
  files = [f for f in config.data.feature_files.split(",") if f.strip()]
  if config.feature_graph.fusion == "mlp" and len(files) != 2:
    raise MmjaxError("config.feature_graph.fusion='mlp' needs exactly two "
                     f"config.data.feature_files, got {len(files)}")


def _check_pretrained(config) -> None:
  """init_from folders exist; freeze patterns are regexes."""
  for tower in ("text", "image"):
    path = config.model[tower].init_from
    if path and not os.path.isfile(os.path.join(path, "config.json")):
      raise MmjaxError(f"config.model.{tower}.init_from={path!r}: no HF "
                       "checkpoint folder (config.json) there")
  if config.model.image.init_from and config.model.image.kind != "vit":
    raise MmjaxError("config.model.image.init_from needs config.model.image.kind='vit'")
  for i, pattern in enumerate(config.train.freeze):
    try:
      re.compile(pattern)
    except re.error as e:
      raise MmjaxError(f"config.train.freeze[{i}]={pattern!r}: bad regex ({e})") from None


def _check_sharding_rules(rules) -> None:
  for i, rule in enumerate(rules):
    where = f"config.mesh.rules[{i}]={rule!r}"
    if not (isinstance(rule, (tuple, list)) and len(rule) == 2
            and isinstance(rule[0], str) and isinstance(rule[1], (tuple, list))):
      raise MmjaxError(f"{where}: expected (regex, (axis or None, ...))")
    try:
      re.compile(rule[0])
    except re.error as e:
      raise MmjaxError(f"{where}: bad regex ({e})") from None
    for axis in rule[1]:
      names = axis if isinstance(axis, (tuple, list)) else (axis,)
      if any(a not in (None, "data", "model") for a in names):
        raise MmjaxError(f"{where}: axes must be 'data', 'model' or None")

