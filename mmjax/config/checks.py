"""validate(): every value against its schema Key, then the constraints
between keys. Each problem is one MmjaxError naming the key."""

from __future__ import annotations

import json
import math
import os
import re

from mmjax.config.grid import parse_axes
from mmjax.config.schema import BY_PATH, KEYS, PATH_NAMES, Key
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


_INT_LIMIT = 2**31   # Integers go into int32 arrays and seeds.


def cpus() -> int:
  return os.cpu_count() or 1


def _number(text: str) -> float:
  """A bound: "2", "-1", "1e-3" or "N * cpus"."""
  m = re.fullmatch(r"(\S+)\s*\*\s*cpus", text.strip())
  return float(m.group(1)) * cpus() if m else float(text)


def in_bounds(value, bounds: str) -> bool:
  """Whether `value` satisfies `bounds`: "> 0", ">= 2", "[0, 1)", "(0, 1)",
  "[0, 4 * cpus]"."""
  m = re.fullmatch(r"(>=|>)\s*(\S+)", bounds)
  if m:
    lo = float(m.group(2))
    return value >= lo if m.group(1) == ">=" else value > lo
  m = re.fullmatch(r"([\[(])([^,]+),([^\])]+)([\])])", bounds)
  if not m:
    raise ValueError(f"bad bounds {bounds!r}")
  lo, hi = _number(m.group(2)), _number(m.group(3))
  above = value >= lo if m.group(1) == "[" else value > lo
  below = value <= hi if m.group(4) == "]" else value < hi
  return above and below


def _must_be(bounds: str) -> str:
  if "cpus" in bounds:
    return f"in {bounds} (cpus={cpus()})"
  return f"in {bounds}" if bounds[0] in "[(" else bounds


def _not_finite(value) -> str | None:
  """What is wrong with NaN, +-inf or an integer too large for int32; None
  for any other value."""
  if isinstance(value, bool) or not isinstance(value, (int, float)):
    return None
  if isinstance(value, int):
    return None if -_INT_LIMIT <= value < _INT_LIMIT else "fit 32 bits"
  return None if math.isfinite(value) else "be finite"


def check_value(key: Key, value) -> None:
  """The type, choices and bounds of one key's value."""
  where = f"config.{key.path}={value!r}"
  if not _is(value, key.type):
    raise MmjaxError(f"{where}: expected {type_name(key.type)}")
  chosen = (all(v in key.choices for v in value) if key.type is tuple
            else value in key.choices)   # A tuple key's choices: per element.
  if key.choices and not chosen:
    raise MmjaxError(f"{where}: choose {'each ' * (key.type is tuple)}one "
                     f"of {key.choices}")
  if key.type is tuple:
    if key.nonempty and not value:
      raise MmjaxError(f"{where}: give at least one value")
    if key.of is not None:
      if not all(_is(v, key.of) for v in value):
        raise MmjaxError(f"{where}: expected a tuple of "
                         f"{type_name(key.of).split(' ', 1)[1]}s")
      wrong = next(filter(None, map(_not_finite, value)), None)
      if wrong:
        raise MmjaxError(f"{where}: each must {wrong}")
      if key.bounds and not all(in_bounds(v, key.bounds) for v in value):
        raise MmjaxError(f"{where}: each must be {_must_be(key.bounds)}")
  elif _not_finite(value):
    raise MmjaxError(f"{where} must {_not_finite(value)}")
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
  synthetic = config.data.synthetic
  if (config.data.name == "synthetic"
      and synthetic.interactions_per_user > synthetic.num_items // 2):
    raise MmjaxError(
        f"config.data.synthetic.interactions_per_user="
        f"{synthetic.interactions_per_user} must be at most num_items // 2 = "
        f"{synthetic.num_items // 2}")

  fusion = config.model.fusion
  if fusion.kind == "cross_attention" and config.model.dim % fusion.heads:
    raise MmjaxError(f"config.model.fusion.heads={fusion.heads} must divide "
                     f"config.model.dim={config.model.dim}")
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
  for key, values in parse_axes(config.grid.axes):
    for value in values:
      try:
        check_value(BY_PATH[key], value)
      except MmjaxError as e:
        raise MmjaxError(f"config.grid.axes: {e}") from None
  files = [f for f in config.data.feature_files.split(",") if f.strip()]
  f = config.feature_graph
  modalities = len(files) + bool(f.text_tower)
  if f.fusion == "mlp" and modalities != 2:
    raise MmjaxError("config.feature_graph.fusion='mlp' needs exactly two modalities "
                     f"(feature files and the text tower), got {modalities}")
  if f.text_tower:
    if not os.path.isdir(f.text_tower):
      raise MmjaxError(f"config.feature_graph.text_tower: folder not found: {f.text_tower}")
    if not f.text_file:
      raise MmjaxError("config.feature_graph.text_tower needs "
                       "config.feature_graph.text_file (the items' texts)")
    if f.tower_items > f.negatives:
      raise MmjaxError(f"config.feature_graph.tower_items={f.tower_items} must be at "
                       f"most config.feature_graph.negatives={f.negatives}: the tower "
                       "encodes some of the step's negatives")


def _check_pretrained(config) -> None:
  """init_from folders exist (their contents are checked where the model
  is built, before the workdir); freeze patterns are regexes."""
  for tower in ("text", "image"):
    path = config.model[tower].init_from
    if path and not os.path.isfile(os.path.join(path, "config.json")):
      raise MmjaxError(f"config.model.{tower}.init_from={path!r}: no HF "
                       "checkpoint folder (config.json) there")
  if config.model.text.init_from:
    _check_text_len(config.model.text.init_from, config.data.max_text_len)
  if config.model.image.init_from and config.model.image.kind != "vit":
    raise MmjaxError("config.model.image.init_from needs config.model.image.kind='vit'")
  for i, pattern in enumerate(config.train.freeze):
    try:
      re.compile(pattern)
    except re.error as e:
      raise MmjaxError(f"config.train.freeze[{i}]={pattern!r}: bad regex ({e})") from None


def _check_text_len(folder: str, max_text_len: int) -> None:
  """data.max_text_len fits the pretrained text tower's position table."""
  file = os.path.join(folder, "config.json")
  try:
    with open(file, encoding="utf-8") as f:
      limit = json.load(f).get("max_position_embeddings")
  except (OSError, UnicodeDecodeError, ValueError, AttributeError) as e:
    raise MmjaxError(f"{file}: not a readable JSON object ({e})") from None
  if not isinstance(limit, int) or isinstance(limit, bool) or limit < 2:
    raise MmjaxError(f"{file}: max_position_embeddings={limit!r} is not a "
                     "positive integer")
  if max_text_len > limit:
    raise MmjaxError(f"config.data.max_text_len={max_text_len} exceeds "
                     f"{folder}'s max_position_embeddings={limit}")


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

