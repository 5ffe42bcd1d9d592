"""On-disk storage of a Catalog as TFDS ArrayRecord data sets (no TensorFlow).

Layout of a data dir:

  meta.json             sizes, attribute names, format version (written last)
  tokenizer.json        WordPiece tokenizer trained on the item texts
  oracle_scores.npy     (U, N) float32 true logits, synthetic data only
  ids.json              {"users": [...], "items": [...]}: the raw data's own
                        ids in dense order (raw folders only; without it the
                        dense ints are the ids)
  items/1.0.0/          TFDS split "train": item_id, text, image (an encoded
                        file, see image_bytes), attributes; and
                        item_records.npy, (N,) int32: the record holding each
                        item id
  interactions/1.0.0/   TFDS splits train/valid/test: user_id, item_id, row
                        (and label, float32, in a labelled catalog: meta.json's
                        "label_kind" is then "binary" or "rating")

TFDS shuffles records on write, so readers must use the stored ids, never
record positions; `row` is the interaction's row in `Catalog.interactions`,
which restores the original (time) order. `store_write` writes a data dir
(into a temp folder renamed into place, so a data dir that exists is
complete); this module reads one.
"""

from __future__ import annotations

import json
import os

import numpy as np
import tensorflow_datasets as tfds
from tensorflow_datasets.proto import tf_example_pb2

from mmjax.data import catalog as catalog_lib
from mmjax.data import image_bytes
from mmjax.errors import MmjaxError

FORMAT_VERSION = 3   # 3: images as encoded files (2: raw pixels).
ITEMS_SPLIT = "train"  # "all" is reserved by TFDS.
META_FILE, TOKENIZER_FILE, ORACLE_FILE = "meta.json", "tokenizer.json", "oracle_scores.npy"
IDS_FILE = "ids.json"
VERSION = "1.0.0"
ITEM_RECORDS_FILE = os.path.join("items", VERSION, "item_records.npy")
ITEM_FIELDS = ("item_id", "text", "image")
# Records decoded per bulk read; bounds memory of the raw bytes in flight.
_READ_CHUNK = 4096


def is_data_dir(data_dir: str) -> bool:
  """Whether data_dir holds a complete mmjax data dir."""
  return os.path.isfile(os.path.join(data_dir, META_FILE))


def read_meta(data_dir: str) -> dict:
  """meta.json of a data dir; MmjaxError if missing or of another version."""
  data_dir = os.fspath(data_dir)
  if not os.path.isdir(data_dir):
    raise MmjaxError(f"data dir not found: {data_dir}")
  if not is_data_dir(data_dir):
    raise MmjaxError(f"{data_dir} is not an mmjax data dir (no {META_FILE})")
  path = os.path.join(data_dir, META_FILE)
  try:
    with open(path) as f:
      meta = json.load(f)
  except (OSError, json.JSONDecodeError) as e:
    raise MmjaxError(f"cannot read {path}: {e}") from e
  if meta.get("format_version") != FORMAT_VERSION:
    raise MmjaxError(
        f"{path}: format_version {meta.get('format_version')!r} is not the "
        f"supported {FORMAT_VERSION}; write the data dir again (generated and "
        "ingested dirs are remade on their own once deleted)")
  return meta


def _source(data_dir, name, split, **kwargs):
  read_meta(data_dir)
  builder = tfds.builder_from_directory(
      os.path.join(os.fspath(data_dir), name, VERSION))
  return builder.as_data_source(split, **kwargs)


def _raw_items(root):
  """The item records as serialized tf.train.Example bytes."""
  builder = tfds.builder_from_directory(os.path.join(root, "items", VERSION))
  return builder.as_data_source(
      ITEMS_SPLIT, deserialize_method=tfds.decode.DeserializeMethod.RAW_BYTES)


def index_item_records(root, num_items) -> np.ndarray:
  """(N,) int32 record position of each item id, read from the records."""
  source, ids = _raw_items(root), []
  for lo in range(0, len(source), _READ_CHUNK):
    keys = list(range(lo, min(len(source), lo + _READ_CHUNK)))
    ids += [parse_item(r)[0] for r in source.__getitems__(keys)]
  index = np.full(num_items, -1, np.int32)
  index[np.asarray(ids, np.int64)] = np.arange(len(ids), dtype=np.int32)
  if len(ids) != num_items or (index < 0).any():
    raise MmjaxError(f"{root}: item ids are not exactly 0..{num_items - 1}")
  return index


def parse_item(record: bytes) -> tuple[int, bytes, bytes]:
  """(item_id, utf-8 text, encoded image) of one serialized item record:
  only the fields the train stream needs, without TFDS's per-feature decode."""
  feature = tf_example_pb2.Example.FromString(record).features.feature
  return (int(feature["item_id"].int64_list.value[0]),
          feature["text"].bytes_list.value[0],
          feature["image"].bytes_list.value[0])


def open_item_bytes(data_dir: str):
  """Random-access source of serialized item records (see `parse_item`)."""
  read_meta(data_dir)
  return _raw_items(os.fspath(data_dir))


def item_records(data_dir: str) -> np.ndarray:
  """(N,) int32: the position in `open_item_bytes` of each item id's record."""
  path = os.path.join(os.fspath(data_dir), ITEM_RECORDS_FILE)
  try:
    index = np.load(path)
  except (OSError, ValueError) as e:
    raise MmjaxError(f"cannot read {path}: {e}") from None
  if index.ndim != 1 or index.dtype != np.int32:
    raise MmjaxError(f"{path}: want a 1-d int32 array, got {index.dtype} "
                     f"{index.shape}; write the data dir again")
  return index


def open_items(data_dir: str):
  """Random-access source of item records (item_id, text bytes, image, attrs).

  Wrap with `grain.MapDataset.source(...)`. Record i is NOT item i.
  """
  return _source(data_dir, "items", ITEMS_SPLIT)


def open_interactions(data_dir: str, split: str):
  """Random-access source of (user_id, item_id, row) records of one split."""
  catalog_lib.split_index(split)  # Validates the name.
  return _source(data_dir, "interactions", split)


def tokenizer_path(data_dir: str) -> str:
  return os.path.join(os.fspath(data_dir), TOKENIZER_FILE)


def read_records(source):
  """All records of a source as a dict of stacked numpy arrays; bytes
  fields as object arrays (a fixed-width bytes array would drop trailing
  NULs and pad every value to the longest)."""
  out = {}
  for lo in range(0, len(source), _READ_CHUNK):
    keys = list(range(lo, min(len(source), lo + _READ_CHUNK)))
    for record in source.__getitems__(keys):
      for k, v in record.items():
        out.setdefault(k, []).append(v)
  return {k: _stack(v) for k, v in out.items()}


def _stack(values):
  if isinstance(values[0], bytes):
    out = np.empty(len(values), object)
    out[:] = values
    return out
  return np.stack(values)


def load_catalog(data_dir: str) -> catalog_lib.Catalog:
  """Reads a data dir back into a Catalog (items ordered by item_id)."""
  meta = read_meta(data_dir)
  n, u = meta["num_items"], meta["num_users"]
  items = read_records(open_items(data_dir))
  order = np.argsort(items["item_id"])
  if not np.array_equal(items["item_id"][order], np.arange(n)):
    raise MmjaxError(f"{data_dir}: item ids are not exactly 0..{n - 1}")
  attrs = {a: items[a][order].astype(np.int32) for a in meta["attributes"]}

  parts = [read_records(open_interactions(data_dir, s))
           for s in catalog_lib.SPLIT_NAMES]
  rows = np.concatenate([p["row"] for p in parts])
  order_rows = np.argsort(rows)
  pairs = np.concatenate(
      [np.stack([p["user_id"], p["item_id"]], axis=1) for p in parts])
  split = np.concatenate(
      [np.full(len(p["row"]), i, np.int8) for i, p in enumerate(parts)])
  labels = (np.concatenate([p["label"] for p in parts])[order_rows].astype(np.float32)
            if meta.get("label_kind") else None)

  oracle_file = os.path.join(data_dir, ORACLE_FILE)
  raw_ids = _read_ids(data_dir)
  files = items["image"][order].tolist()
  return catalog_lib.Catalog(
      item_text=[t.decode("utf-8") for t in items["text"][order]],
      item_images=image_bytes.decode_all(files, meta["image_size"]),
      item_image_files=files,
      interactions=pairs[order_rows].astype(np.int32),
      split=split[order_rows],
      num_users=u,
      num_items=n,
      item_attrs=attrs or None,
      oracle_scores=(np.load(oracle_file) if os.path.exists(oracle_file)
                     else None),
      user_ids=raw_ids.get("users"),
      item_ids=raw_ids.get("items"),
      labels=labels,
  ).validate()


def _read_ids(data_dir) -> dict:
  """ids.json of a data dir ({} without one: the dense ints are the ids)."""
  path = os.path.join(os.fspath(data_dir), IDS_FILE)
  if not os.path.exists(path):
    return {}
  try:
    with open(path) as f:
      raw_ids = json.load(f)
  except (OSError, json.JSONDecodeError) as e:
    raise MmjaxError(f"cannot read {path}: {e}") from None
  if not isinstance(raw_ids, dict):
    raise MmjaxError(f"{path}: want {{\"users\": [...], \"items\": [...]}}")
  return raw_ids
