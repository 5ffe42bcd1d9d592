"""Users' and items' own ids <-> the dense 0-based indices the models use.

A data set keeps its raw ids (SKUs, user names, MMRec's mapped ids) as one
list per kind in dense-index order; without them the ids are the dense ints.
`IdMap` translates both ways. A lookup takes the raw id or its text form
(`--user 7` finds the int id 7 and the string id "7" alike), so ids are
compared by `str()` and must be unique in that form.

MMRec's preprocessing writes `u_id_mapping.csv` (user_id, userID) and
`i_id_mapping.csv` (asin, itemID) beside the .inter file, tab-separated:
`read_mmrec_mapping` reads the raw id of every dense id from them.
"""

from __future__ import annotations

import csv
import os
from typing import Sequence

import numpy as np

from mmjax.errors import MmjaxError

# MMRec's mapping files: file name and the column holding the dense id.
MMREC_MAPPINGS = {"user": ("u_id_mapping.csv", "userID"),
                  "item": ("i_id_mapping.csv", "itemID")}
_EXAMPLES = 3   # Valid ids an error message names.


def check_raw(kind: str, raw: Sequence, count: int) -> list:
  """`raw` as a list of `count` str/int ids, unique in their str() form."""
  raw = list(raw)
  if len(raw) != count:
    raise MmjaxError(f"{kind} ids: {len(raw)} given for {count} {kind}s")
  bad = next((v for v in raw if isinstance(v, bool)
              or not isinstance(v, (str, int, np.integer))), None)
  if bad is not None:
    raise MmjaxError(f"{kind} ids must be str or int, got {bad!r}")
  raw = [v if isinstance(v, str) else int(v) for v in raw]
  seen: dict[str, int] = {}
  for i, v in enumerate(raw):
    first = seen.setdefault(str(v), i)
    if first != i:
      raise MmjaxError(f"{kind} id {v!r} is given twice (indices {first} "
                       f"and {i})")
  return raw


class IdMap:
  """Raw ids of one kind ("user" / "item") <-> dense indices 0..count-1.

  raw=None: the raw ids are the dense ints themselves.
  """

  def __init__(self, kind: str, count: int, raw: Sequence | None = None):
    self.kind, self.count = kind, int(count)
    self._raw = None if raw is None else check_raw(kind, raw, self.count)
    if self._raw == list(range(self.count)):   # The dense ints themselves.
      self._raw = None
    self._index = (None if self._raw is None else
                   {str(v): i for i, v in enumerate(self._raw)})

  def __len__(self) -> int:
    return self.count

  @property
  def has_raw(self) -> bool:
    return self._raw is not None

  @property
  def all_int(self) -> bool:
    """Whether every id is an int (a table column of them can be int64)."""
    return self._raw is None or all(isinstance(v, int) for v in self._raw)

  def column(self, indices=None) -> list:
    """The ids of `indices` (default: all) for one typed table column: ints,
    or strings when any id is one."""
    values = self.to_list() if indices is None else self.raws(indices)
    return values if self.all_int else [str(v) for v in values]

  def index(self, value) -> int:
    """The dense index of a raw id (or its text form); MmjaxError if unknown."""
    if self._index is None:
      dense = _as_int(value)
      if dense is not None and 0 <= dense < self.count:
        return dense
      raise MmjaxError(f"unknown {self.kind} {value!r}: {self.kind} ids are "
                       f"0..{self.count - 1}")
    if not isinstance(value, bool) and isinstance(value, (str, int, np.integer)):
      found = self._index.get(str(value))
      if found is not None:
        return found
    examples = ", ".join(repr(v) for v in self._raw[:_EXAMPLES])
    raise MmjaxError(f"unknown {self.kind} {value!r}: not one of the "
                     f"{self.count} {self.kind} ids of this data (e.g. "
                     f"{examples})")

  def indices(self, values) -> np.ndarray:
    """(n,) int32 dense indices of a list of raw ids."""
    return np.asarray([self.index(v) for v in values], np.int32)

  def raw(self, index: int):
    """The raw id of a dense index."""
    index = int(index)
    if not 0 <= index < self.count:
      raise MmjaxError(f"{self.kind} index {index} out of range "
                       f"[0, {self.count})")
    return index if self._raw is None else self._raw[index]

  def raws(self, indices) -> list:
    """The raw ids of dense indices, as a list."""
    indices = np.asarray(indices, np.int64)
    if self._raw is None:
      return indices.tolist()
    return [self._raw[i] for i in indices.tolist()]

  def to_list(self) -> list:
    """Every raw id, in dense order (the ints 0..count-1 without raw ids)."""
    return list(range(self.count)) if self._raw is None else list(self._raw)


def _as_int(value) -> int | None:
  """An int id from an int or a decimal string; None for anything else."""
  if isinstance(value, bool):
    return None
  if isinstance(value, (int, np.integer)):
    return int(value)
  if isinstance(value, str) and value.strip().lstrip("-").isdigit():
    return int(value.strip())
  return None


def read_mmrec_mapping(data_dir: str, kind: str, count: int) -> list | None:
  """Raw ids of dense ids 0..count-1 from MMRec's mapping file of `kind`
  in data_dir; None if there is no such file.

  The file is a table (tab- or comma-separated, with a header) with the dense
  id column (userID / itemID) and the raw id in another column (MMRec:
  user_id / asin). Rows for ids >= count are ignored (ids only in a mapping).
  """
  name, dense_column = MMREC_MAPPINGS[kind]
  path = os.path.join(data_dir, name)
  if not os.path.isfile(path):
    return None
  try:
    with open(path, newline="", encoding="utf-8-sig") as f:
      first = f.readline()
      f.seek(0)
      rows = list(csv.reader(f, delimiter="\t" if "\t" in first else ","))
  except (OSError, UnicodeDecodeError, csv.Error) as e:
    raise MmjaxError(f"{path}: cannot read ({e})") from None
  header = [h.strip() for h in rows[0]] if rows else []
  others = [c for c in header if c != dense_column]
  if dense_column not in header or not others:
    raise MmjaxError(f"{path}: want a header with {dense_column!r} and the raw "
                     f"id column, got {header}")
  col, raw_col = header.index(dense_column), header.index(others[0])
  raw: list = [None] * count
  for line, row in enumerate(rows[1:], start=2):
    if not row:
      continue
    if len(row) != len(header):
      raise MmjaxError(f"{path}:{line}: {len(row)} fields, the header has "
                       f"{len(header)}")
    dense = _as_int(row[col])
    if dense is None or dense < 0:
      raise MmjaxError(f"{path}:{line}: {dense_column}={row[col]!r} is not an "
                       "id >= 0")
    if dense < count:
      if raw[dense] is not None:
        raise MmjaxError(f"{path}:{line}: {dense_column} {dense} mapped twice")
      raw[dense] = row[raw_col].strip()
      if not raw[dense]:
        raise MmjaxError(f"{path}:{line}: empty {others[0]!r}")
  if None in raw:
    raise MmjaxError(f"{path}: no row for {dense_column} {raw.index(None)} "
                     f"(the data has {kind} ids 0..{count - 1})")
  try:
    return check_raw(kind, raw, count)
  except MmjaxError as e:
    raise MmjaxError(f"{path}: {e}") from None


class OwnIds:
  """`user_map` / `item_map` of a data class with `num_users`, `num_items`
  and optional `user_ids` / `item_ids` lists (the data's own ids)."""

  @property
  def user_map(self) -> IdMap:
    """The users' own ids <-> dense user indices."""
    return IdMap("user", self.num_users, self.user_ids)

  @property
  def item_map(self) -> IdMap:
    """The items' own ids <-> dense item indices."""
    return IdMap("item", self.num_items, self.item_ids)
