"""MMRec-format data: `<name>.inter` plus one precomputed feature matrix per modality.

The interaction file is tab-separated with a header naming `userID`,
`itemID` and `x_label` (0/1/2 = train/valid/test), optionally `rating` and
`timestamp`. As in MMRec (enoche/MMRec, utils/dataset.py) only the three
required columns are used: every row is a positive, whatever its rating;
user/item counts are max id + 1; valid/test rows of users without a train
row (cold-start users) are dropped. Each feature file is a `.npy` matrix
whose row i describes item i.

Every problem found raises MmjaxError naming the file (and line or row),
before anything sized by the ids is allocated: ids must fit int32 and be
roughly dense (as MMRec's re-indexed 0..N-1 ids are). A UTF-8 byte-order
mark is accepted; identical rows are dropped and counted. MMRec's id mapping
files beside the .inter file, if there, give the users' and items' raw ids.
"""

from __future__ import annotations

import dataclasses
import os
import tokenize
import zipfile

import numpy as np

from mmjax.data import ids
from mmjax.data.catalog import SPLIT_NAMES, TEST, TRAIN, VALID
from mmjax.errors import MmjaxError

REQUIRED_COLUMNS = ("userID", "itemID", "x_label")
OPTIONAL_COLUMNS = ("rating", "timestamp")
ID_MAX = 2**31 - 2   # Ids are int32 and so is the count, max id + 1.
# An id space this much larger than the rows is a typo or unmapped raw ids:
# refused before users/items tables of that size are made.
DENSE_SLACK, DENSE_FACTOR = 1_000_000, 100


@dataclasses.dataclass
class MMRecData(ids.OwnIds):
  """Split interactions and item features of one MMRec data set.

  Attributes:
    pairs: split index (TRAIN/VALID/TEST) -> (M_s, 2) int32 (user, item) rows.
    features: modality name (feature file stem) -> (N, d) float32.
    num_users, num_items: max id + 1, over all splits.
    dropped_cold: split index -> rows dropped as cold-start users.
    dropped_repeated: rows dropped as repeats of an earlier identical row.
    user_ids, item_ids: raw ids of the dense ids, from MMRec's mapping files
      (ids.MMREC_MAPPINGS) in the data dir; None: the .inter ids are the ids.
  """
  pairs: dict[int, np.ndarray]
  features: dict[str, np.ndarray]
  num_users: int
  num_items: int
  dropped_cold: dict[int, int]
  dropped_repeated: int = 0
  user_ids: list | None = None
  item_ids: list | None = None

  def user_items(self, split_id: int) -> list[np.ndarray]:
    """Per user, the items of one split (in file order)."""
    p = self.pairs[split_id]
    order = np.argsort(p[:, 0], kind="stable")
    bounds = np.searchsorted(p[order, 0], np.arange(self.num_users + 1))
    items = p[order, 1]
    return [items[bounds[u]:bounds[u + 1]] for u in range(self.num_users)]

  def eval_users(self) -> np.ndarray:
    """The users with a valid or a test item, ascending."""
    return np.unique(np.concatenate([self.pairs[VALID][:, 0], self.pairs[TEST][:, 0]]))

  def describe(self) -> str:
    counts = ", ".join(f"{SPLIT_NAMES[s]} {len(self.pairs[s])}"
                       for s in (TRAIN, VALID, TEST))
    feats = ", ".join(f"{k} {v.shape[1]}-d" for k, v in self.features.items())
    cold = sum(self.dropped_cold.values())
    again = self.dropped_repeated
    return (f"{self.num_users} users, {self.num_items} items; {counts}"
            f"{f'; {cold} cold-start rows dropped' if cold else ''}"
            f"{f'; {again} repeated rows dropped' if again else ''}; "
            f"features: {feats or 'none (IDs only)'}")


def _read_lines(path: str) -> list[str]:
  if not os.path.isfile(path):
    raise MmjaxError(f"interaction file not found: {path}")
  try:
    with open(path, encoding="utf-8-sig") as f:
      lines = f.read().splitlines()
  except UnicodeDecodeError as e:   # Found by tests/test_fuzz_parsers.py.
    raise MmjaxError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
  if not lines or not lines[0].strip():
    raise MmjaxError(f"{path}: empty file (expected a header line "
                     f"{' '.join(REQUIRED_COLUMNS)})")
  return lines


def _header_columns(path: str, header: str) -> dict[str, int]:
  names = header.split("\t")
  missing = [c for c in REQUIRED_COLUMNS if c not in names]
  unknown = [c for c in names if c not in REQUIRED_COLUMNS + OPTIONAL_COLUMNS]
  if missing or unknown or len(set(names)) != len(names):
    raise MmjaxError(
        f"{path}:1: bad header {names}: want tab-separated "
        f"{list(REQUIRED_COLUMNS)} plus optionally {list(OPTIONAL_COLUMNS)}, "
        f"each once" + (f"; missing {missing}" if missing else "")
        + (f"; unknown {unknown}" if unknown else ""))
  return {name: i for i, name in enumerate(names)}


def _parse_rows(path: str, lines: list[str], cols: dict[str, int]) -> np.ndarray:
  """(M, 3) int64 userID, itemID, x_label; checks every field of every row."""
  rows = []
  width = len(cols)
  for lineno, line in enumerate(lines[1:], start=2):
    if not line.strip():
      continue
    fields = line.split("\t")
    if len(fields) != width:
      raise MmjaxError(f"{path}:{lineno}: {len(fields)} fields, header has {width}")
    try:
      for name in OPTIONAL_COLUMNS:
        if name in cols:
          float(fields[cols[name]])
      row = [int(fields[cols[c]]) for c in REQUIRED_COLUMNS]
    except ValueError:
      raise MmjaxError(f"{path}:{lineno}: non-numeric field in {line!r} "
                       "(userID, itemID, x_label must be integers)") from None
    if row[0] < 0 or row[1] < 0:
      raise MmjaxError(f"{path}:{lineno}: negative id in {line!r}")
    if max(row[0], row[1]) > ID_MAX:
      raise MmjaxError(f"{path}:{lineno}: id {max(row[0], row[1])} does not "
                       f"fit the int32 ids (at most {ID_MAX})")
    if row[2] not in (TRAIN, VALID, TEST):
      raise MmjaxError(f"{path}:{lineno}: x_label={row[2]} must be 0, 1 or 2")
    rows.append(row)
  if not rows:
    raise MmjaxError(f"{path}: no interaction rows after the header")
  return np.asarray(rows, np.int64)


def _check_dense(path: str, rows: np.ndarray, column: int, name: str) -> None:
  """Max id + 1 sizes a table: refuse an id space far beyond the rows."""
  limit = DENSE_SLACK + DENSE_FACTOR * len(rows)
  top = int(rows[:, column].max())
  if top >= limit:
    raise MmjaxError(
        f"{path}: {name} {top} is far beyond the {len(rows)} rows (at most "
        f"{limit - 1}); MMRec ids are 0..N-1, re-index them")


def _drop_repeated(rows: np.ndarray) -> tuple[np.ndarray, int]:
  """Rows without repeats of an earlier identical row, in file order."""
  _, first = np.unique(rows, axis=0, return_index=True)
  return rows[np.sort(first)], len(rows) - len(first)


def load_features(path: str, num_items: int) -> np.ndarray:
  """(num_items, d) float32 from a .npy file, validated."""
  if not os.path.isfile(path):
    raise MmjaxError(f"feature file not found: {path}")
  try:   # Memory-mapped: a header's shape is checked before any data is read.
    x = np.load(path, mmap_mode="r", allow_pickle=False)
  except (ValueError, OSError, EOFError, SyntaxError, tokenize.TokenError,
          zipfile.BadZipFile) as e:   # A garbled header fails numpy's parser.
    raise MmjaxError(f"{path}: not a readable .npy array "
                     f"({e or type(e).__name__})") from None
  if not isinstance(x, np.ndarray):
    x.close()
    raise MmjaxError(f"{path}: an .npz archive; want one .npy array")
  if x.ndim != 2:
    raise MmjaxError(f"{path}: shape {x.shape}, want 2-d (items, dim)")
  if not np.issubdtype(x.dtype, np.floating):
    raise MmjaxError(f"{path}: dtype {x.dtype}, want a float array")
  if x.shape[0] != num_items:
    raise MmjaxError(f"{path}: {x.shape[0]} rows, but the interactions have "
                     f"{num_items} items (max itemID + 1)")
  bad = ~np.isfinite(x).all(axis=1)
  if bad.any():
    raise MmjaxError(f"{path}: NaN/Inf in {int(bad.sum())} rows, first row "
                     f"{int(np.argmax(bad))}")
  return x.astype(np.float32)


def load(data_dir: str, inter_file: str, feature_files=(), feature_dir: str = "",
         num_items: int = 0) -> MMRecData:
  """Reads `<data_dir>/<inter_file>` and `<feature_dir or data_dir>/<f>`.

  `num_items` > 0 fixes the item count (the feature rows must match it);
  0 takes max itemID + 1 as MMRec does.
  """
  path = os.path.join(data_dir, inter_file)
  lines = _read_lines(path)
  rows = _parse_rows(path, lines, _header_columns(path, lines[0]))
  _check_dense(path, rows, 0, "userID")
  if not num_items:
    _check_dense(path, rows, 1, "itemID")
  rows, repeated = _drop_repeated(rows)
  n_items = int(rows[:, 1].max()) + 1
  if num_items:
    if n_items > num_items:
      line = int(np.argmax(rows[:, 1] >= num_items))
      raise MmjaxError(f"{path}: itemID {rows[line, 1]} out of range "
                       f"[0, {num_items}) (row {line + 1} after the header)")
    n_items = num_items
  users, split = rows[:, 0], rows[:, 2]
  in_train = np.zeros(int(users.max()) + 1, bool)
  in_train[users[split == TRAIN]] = True
  if not in_train.any():
    raise MmjaxError(f"{path}: no train rows (x_label = 0)")
  pairs, dropped = {}, {}
  for s in (TRAIN, VALID, TEST):
    keep = (split == s) & in_train[users]
    dropped[s] = int(np.sum(split == s) - keep.sum())
    pairs[s] = rows[keep, :2].astype(np.int32)
  features = {}
  for name in feature_files:
    stem = os.path.splitext(os.path.basename(name))[0]
    if stem in features:
      raise MmjaxError(f"feature file {name}: modality name {stem!r} given twice")
    features[stem] = load_features(
        os.path.join(feature_dir or data_dir, name), n_items)
  n_users = int(users.max()) + 1
  return MMRecData(pairs=pairs, features=features, num_users=n_users,
                   num_items=n_items, dropped_cold=dropped,
                   dropped_repeated=repeated,
                   user_ids=ids.read_mmrec_mapping(data_dir, "user", n_users),
                   item_ids=ids.read_mmrec_mapping(data_dir, "item", n_items))


def feature_file_list(value) -> tuple[str, ...]:
  """config.data.feature_files: "a.npy,b.npy" (command line) or a sequence."""
  if isinstance(value, str):
    value = value.split(",")
  return tuple(v.strip() for v in value if v.strip())
