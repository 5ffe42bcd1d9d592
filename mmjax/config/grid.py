"""`config.grid.axes`: the feature graph's hyper-parameter search.

  grid.axes = "train.lr=0.003,0.01,0.03; feature_graph.layers=1,2,3"

is the cartesian product of the axes' values (9 points). Keys in `VMAPPED`
are traced per run, so every combination of their values trains in one
vmapped program; keys in `STATIC` change the program's shapes, so each
combination of their values is a program of its own, run one after another.
"""

from __future__ import annotations

import itertools

from mmjax.config.schema import BY_PATH, GRID_KEYS
from mmjax.errors import MmjaxError

VMAPPED = GRID_KEYS
STATIC = ("feature_graph.layers", "feature_graph.item_layers", "feature_graph.knn_k",
          "feature_graph.negatives", "feature_graph.init_std", "feature_graph.encoder",
          "feature_graph.fusion", "feature_graph.tower_blocks",
          "feature_graph.tower_items", "train.batch_size", "model.dim")

Axes = list[tuple[str, tuple]]


def _typed(key: str, text: str):
  kind = BY_PATH[key].type
  try:
    return kind(text) if kind is not int else int(text, 10)
  except ValueError:
    raise MmjaxError(f"config.grid.axes: {key}={text!r} is not a "
                     f"{kind.__name__}") from None


def parse_axes(text: str) -> Axes:
  """[(key, values)] of "key=v1,v2; key2=...", typed as their keys
  (`checks.validate` checks each value's choices and bounds)."""
  axes: Axes = []
  for part in (p.strip() for p in text.split(";")):
    if not part:
      continue
    key, sep, values = (s.strip() for s in part.partition("="))
    if not sep or not values:
      raise MmjaxError(f"config.grid.axes: {part!r} is not KEY=V1,V2,... "
                       "(axes separated by ';')")
    if key not in VMAPPED + STATIC:
      raise MmjaxError(f"config.grid.axes: {key!r} cannot be searched; choose "
                       f"from {', '.join(VMAPPED + STATIC)}")
    if key in (k for k, _ in axes):
      raise MmjaxError(f"config.grid.axes: {key} appears twice")
    typed = tuple(_typed(key, v.strip()) for v in values.split(","))
    if len(set(typed)) != len(typed):
      raise MmjaxError(f"config.grid.axes: {key} repeats a value: {values}")
    axes.append((key, typed))
  return axes


def format_axes(axes: Axes) -> str:
  return "; ".join(f"{k}={','.join(str(v) for v in vs)}" for k, vs in axes)


def points(axes: Axes) -> list[dict]:
  """Every combination of the axes' values, the first axis slowest."""
  keys = [k for k, _ in axes]
  return [dict(zip(keys, combo)) for combo in itertools.product(*(v for _, v in axes))]


def split_static(axes: Axes) -> tuple[Axes, Axes]:
  """(static axes, vmapped axes)."""
  return ([a for a in axes if a[0] in STATIC], [a for a in axes if a[0] in VMAPPED])


def label(point: dict) -> str:
  """A point as "key=value, ..." (its last key component only)."""
  return ", ".join(f"{k.split('.')[-1]}={v}" for k, v in point.items())
