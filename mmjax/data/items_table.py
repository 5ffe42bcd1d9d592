"""Items tables with one row per item (`mmjax features`, the text tower of
the feature graph): the columns in item order, by MMRec's integer ids or the
items' own ids."""

import collections
import csv
import os

from mmjax.errors import MmjaxError


def read_items(path: str, id_column: str, columns: list[str]) -> dict:
  """{column: values} of an items table, `id_column` included.

  Integer ids must be 0..N-1, each once: the rows come in id order (MMRec's
  row i is item i). Any other ids (e.g. SKUs) are the items' own ids, kept
  as strings: they must be unique and the rows stay in file order.
  """
  if not os.path.isfile(path):
    raise MmjaxError(f"items file not found: {path}")
  delimiter = "\t" if path.endswith((".tsv", ".inter")) else ","
  try:   # utf-8-sig: a byte-order mark is not part of the first column's name.
    with open(path, newline="", encoding="utf-8-sig") as f:
      reader = csv.DictReader(f, delimiter=delimiter)
      fields = reader.fieldnames or []
      for column in [id_column] + columns:
        if column not in fields:
          raise MmjaxError(f"{path}: no column {column!r} (columns: {fields})")
      rows = list(reader)
  except UnicodeDecodeError as e:
    raise MmjaxError(f"{path}: not UTF-8 text ({e.reason} at byte "
                     f"{e.start})") from None
  except csv.Error as e:
    raise MmjaxError(f"{path}: cannot parse ({e})") from None
  raw = [(row[id_column] or "").strip() for row in rows]
  columns = list(dict.fromkeys(columns + [id_column]))
  ids = [_int(v) for v in raw]
  if None in ids:   # The items' own ids: file order.
    first: dict[str, int] = {}
    for line, v in enumerate(raw, start=2):
      if not v:
        raise MmjaxError(f"{path}:{line}: {id_column} is empty")
      if first.setdefault(v, line) != line:
        raise MmjaxError(f"{path}:{line}: {id_column}={_short(v)!r} repeats "
                         f"line {first[v]}")
    out = {c: [row[c] for row in rows] for c in columns}
    out[id_column] = raw
    return out
  if sorted(ids) != list(range(len(ids))):   # Python ints: no overflow.
    dup = sorted(v for v, c in collections.Counter(ids).items() if c > 1)[:5]
    missing = sorted(set(range(len(ids))) - set(ids))[:5]
    outside = [_short(v) for v in ids if not 0 <= v < len(ids)][:5]
    raise MmjaxError(f"{path}: integer {id_column} must be 0..{len(ids) - 1}, "
                     f"each once (MMRec row order); duplicated: {dup}, missing: "
                     f"{missing}" + (f", out of range: {outside}" if outside else ""))
  order = sorted(range(len(ids)), key=ids.__getitem__)
  out = {c: [rows[i][c] for i in order] for c in columns}
  out[id_column] = sorted(ids)
  return out


def _int(value: str) -> int | None:
  try:
    return int(value)
  except ValueError:
    return None


def _short(value: int) -> str:
  text = str(value)
  return text if len(text) <= 20 else text[:17] + "..."
