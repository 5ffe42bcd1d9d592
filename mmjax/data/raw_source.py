"""Reading the raw tables of a data folder into one `RawSource`.

A raw data folder (config.data.raw.root) holds

  items_file          item_id, text, image   (one row per item)
  interactions_file   user_id, item_id [, split] [, label]   (rows in time order)
  image_root/<image>  the image files the items table names

Both tables are CSV, or tab-separated when named *.tsv / *.inter (MMRec's
`userID itemID rating x_label` files read as-is with renamed columns). Column
names are configurable (config.data.raw.columns); the optional split column
holds train/valid/test or MMRec's 0/1/2. The label column, read only where
config.data.raw.columns.label names it, holds a number per row: 0/1 clicks
(a 0 row is an impression, no positive) or ratings (catalog.py's rule).
Ids stay strings here; `raw.py`
makes them dense and keeps these strings as the catalog's own ids. Every row remembers its "file:line" for error messages.
Tables are UTF-8, with or without a byte-order mark.

An image path must stay inside image_root after symlinks (an absolute one
inside config.data.raw.absolute_image_root): `image_paths()` turns any
other into None, which ingestion counts as refused and never opens.
"""

from __future__ import annotations

import csv
import math
import dataclasses
import os

from mmjax.data import safe_paths
from mmjax.errors import MmjaxError

_TAB_SUFFIXES = (".tsv", ".inter")
_SPLIT_VALUES = {"train": 0, "valid": 1, "test": 2, "0": 0, "1": 1, "2": 2}


@dataclasses.dataclass
class Table:
  """A delimited text file with a header; rows are lists of str."""
  path: str
  header: list[str]
  rows: list[list[str]]
  lines: list[int]   # 1-based line in the file where each row ends

  def where(self, row: int) -> str:
    return f"{self.path}:{self.lines[row]}"

  def has(self, name: str) -> bool:
    return name in self.header

  def column(self, name: str, key: str) -> list[str]:
    """Values of column `name`; `key` is the config key naming it."""
    if name not in self.header:
      raise MmjaxError(
          f"{self.path}: no column {name!r} ({key}); the header has "
          f"{', '.join(repr(h) for h in self.header)}")
    i = self.header.index(name)
    return [r[i] for r in self.rows]

  def required(self, name: str, key: str) -> list[str]:
    """Like column(), but every value must be non-empty (after stripping)."""
    values = [v.strip() for v in self.column(name, key)]
    for row, v in enumerate(values):
      if not v:
        raise MmjaxError(f"{self.where(row)}: column {name!r} is empty")
    return values


def read_table(path: str, key: str) -> Table:
  """Reads a CSV/TSV file; `key` is the config key that names the file."""
  if not os.path.isfile(path):
    raise MmjaxError(f"{key}: file not found: {path}")
  delimiter = "\t" if path.endswith(_TAB_SUFFIXES) else ","
  rows, lines = [], []
  try:
    with open(path, newline="", encoding="utf-8-sig") as f:
      reader = csv.reader(f, delimiter=delimiter)
      header = next(reader, None)
      if not header:
        raise MmjaxError(f"{path}: empty file, expected a header line")
      header = [h.strip() for h in header]
      for row in reader:
        if not row:
          continue  # Blank line.
        if len(row) != len(header):
          raise MmjaxError(f"{path}:{reader.line_num}: {len(row)} fields, "
                           f"the header has {len(header)}")
        rows.append(row)
        lines.append(reader.line_num)
  except (UnicodeDecodeError, csv.Error) as e:
    raise MmjaxError(f"{path}: cannot parse ({e})") from None
  return Table(path, header, rows, lines)


@dataclasses.dataclass
class RawSource:
  """Items and interactions as read from a raw folder, before validation."""
  items_file: str
  item_ids: list[str]
  item_text: list[str]
  image_paths: list[str | None]   # real paths; None: refused (outside)
  image_names: list[str]        # as the table gives them, for reports
  item_where: list[str]         # "file:line" of each item
  interactions_file: str
  users: list[str]
  items: list[str]              # the item id each interaction names
  splits: list[int] | None      # from a split column; None -> split per user
  interaction_where: list[str]
  root: str                     # image paths are keyed relative to it
  files: list[str]              # table files whose bytes key the cache
  labels: list[float] | None = None   # the label column; None: unlabelled


def resolve(raw_cfg, name: str) -> str:
  """config.data.raw.<name> as a path: absolute, or relative to root."""
  return os.path.join(data_root(raw_cfg), getattr(raw_cfg, name))


def data_root(raw_cfg) -> str:
  root = raw_cfg.root
  if not root:
    raise MmjaxError("config.data.raw.root is required: the raw data folder, "
                     "e.g. --config.data.raw.root=../shared/data/clothing")
  if not os.path.isdir(root):
    raise MmjaxError(f"config.data.raw.root: data dir not found: {root}")
  return os.path.abspath(root)


def image_paths(raw_cfg, names: list[str]) -> list[str | None]:
  """Each image name's real path inside image_root, or None (refused)."""
  root = resolve(raw_cfg, "image_root")
  return [safe_paths.inside(root, n, absolute_root=raw_cfg.absolute_image_root)
          for n in names]


def read_splits(table: Table, name: str) -> list[int]:
  out = []
  for row, v in enumerate(table.required(name, "config.data.raw.columns.split")):
    if v.lower() not in _SPLIT_VALUES:
      raise MmjaxError(f"{table.where(row)}: split {v!r} is not one of "
                       "train/valid/test or 0/1/2")
    out.append(_SPLIT_VALUES[v.lower()])
  return out


def read_labels(table: Table, name: str) -> list[float]:
  """The label column as finite floats; anything else names its file:line."""
  out = []
  for row, v in enumerate(table.required(name, "config.data.raw.columns.label")):
    try:
      value = float(v)
    except ValueError:
      value = float("nan")
    if not math.isfinite(value):
      raise MmjaxError(f"{table.where(row)}: label {v!r} is not a finite number "
                       f"(config.data.raw.columns.label={name!r}: 0/1 or a rating)")
    out.append(value)
  return out


def from_tables(raw_cfg) -> RawSource:
  """The generic adapter: an items table and an interactions table."""
  cols, key = raw_cfg.columns, "config.data.raw.columns"
  items = read_table(resolve(raw_cfg, "items_file"), "config.data.raw.items_file")
  inter = read_table(resolve(raw_cfg, "interactions_file"),
                     "config.data.raw.interactions_file")
  images = items.required(cols.image, f"{key}.image")
  return RawSource(
      items_file=items.path,
      item_ids=items.required(cols.item_id, f"{key}.item_id"),
      item_text=items.required(cols.text, f"{key}.text"),
      image_paths=image_paths(raw_cfg, images),
      image_names=images,
      item_where=[items.where(r) for r in range(len(items.rows))],
      interactions_file=inter.path,
      users=inter.required(cols.user_id, f"{key}.user_id"),
      items=inter.required(cols.item_id, f"{key}.item_id"),
      splits=(read_splits(inter, cols.split)
              if cols.split and inter.has(cols.split) else None),
      labels=read_labels(inter, cols.label) if cols.label else None,
      interaction_where=[inter.where(r) for r in range(len(inter.rows))],
      root=data_root(raw_cfg),
      files=[items.path, inter.path])
