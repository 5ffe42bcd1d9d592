"""On-disk storage of a Catalog as TFDS ArrayRecord data sets (no TensorFlow).

Layout of a data dir:

  meta.json             sizes, attribute names, format version (written last)
  tokenizer.json        WordPiece tokenizer trained on the item texts
  oracle_scores.npy     (U, N) float32 true logits, synthetic data only
  ids.json              {"users": [...], "items": [...]}: the raw data's own
                        ids in dense order (raw folders only; without it the
                        dense ints are the ids)
  items/1.0.0/          TFDS split "train": item_id, text, image (raw uint8
                        bytes), attributes; and item_records.npy, (N,) int32:
                        the record holding each item id
  interactions/1.0.0/   TFDS splits train/valid/test: user_id, item_id, row
                        (and label, float32, in a labelled catalog: meta.json's
                        "label_kind" is then "binary" or "rating")

TFDS shuffles records on write, so readers must use the stored ids, never
record positions; `row` is the interaction's row in `Catalog.interactions`,
which restores the original (time) order. Everything is written into a temp
folder beside the data dir and renamed into place, so a data dir that exists
is complete.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import os
import shutil
import tempfile

import numpy as np
import tensorflow_datasets as tfds
import tokenizers
from tensorflow_datasets.proto import tf_example_pb2

from mmjax import cache as cache_lib
from mmjax.data import catalog as catalog_lib
from mmjax.data import synthetic
from mmjax.data import text
from mmjax.errors import MmjaxError

FORMAT_VERSION = 2   # 2: raw image bytes, item_records.npy.
ITEMS_SPLIT = "train"  # "all" is reserved by TFDS.
_META, _TOKENIZER, _ORACLE = "meta.json", "tokenizer.json", "oracle_scores.npy"
_IDS = "ids.json"
_VERSION = "1.0.0"
_ITEM_RECORDS = os.path.join("items", _VERSION, "item_records.npy")
_ITEM_FIELDS = ("item_id", "text", "image")
# Records decoded per bulk read; bounds memory of the raw bytes in flight.
_READ_CHUNK = 4096


class _Builder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """A builder whose features and split generators are given at construction.

  Not registered with TFDS: readers use `tfds.builder_from_directory`, which
  needs only the files this writes.
  """
  VERSION = tfds.core.Version(_VERSION)

  # No code dir (checksums, metadata files) belongs to these builders. Saying
  # so also avoids TFDS probing it via `importlib_resources`, which it only
  # declares as a dependency for Python < 3.9 and then fails to import.
  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls):
    return None

  def __init__(self, *, features, splits, **kwargs):
    self._features = features
    self._splits = splits  # split name -> zero-arg fn yielding (key, example)
    super().__init__(file_format="array_record", **kwargs)

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self, features=tfds.features.FeaturesDict(self._features))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {name: gen() for name, gen in self._splits.items()}

  def _generate_examples(self):
    raise NotImplementedError("splits come from _split_generators")


class _ItemsBuilder(_Builder, skip_registration=True):
  name = "items"


class _InteractionsBuilder(_Builder, skip_registration=True):
  name = "interactions"


@contextlib.contextmanager
def _quiet():
  """Silences TFDS progress bars and its "Downloading and preparing" prints."""
  was_active = getattr(tfds.core.utils.tqdm_utils, "_active", True)
  tfds.disable_progress_bar()
  try:
    with contextlib.redirect_stdout(io.StringIO()):
      yield
  finally:
    tfds.display_progress_bar(was_active)


def _item_builder(cat, root):
  attrs = cat.item_attrs or {}
  clash = set(attrs) & set(_ITEM_FIELDS)
  if clash:
    raise MmjaxError(f"catalog.item_attrs uses reserved names {sorted(clash)}")
  h, w = cat.item_images.shape[1:3]
  features = {
      "item_id": tfds.features.Scalar(np.int32),
      "text": tfds.features.Text(),
      # Raw bytes, not TFDS's default of one int64 per pixel: decoding is a
      # copy instead of a parse, which the per-batch item join depends on.
      "image": tfds.features.Tensor(shape=(h, w, 3), dtype=np.uint8,
                                    encoding=tfds.features.Encoding.BYTES),
      **{a: tfds.features.Scalar(np.int32) for a in attrs},
  }

  def examples():
    for i in range(cat.num_items):
      yield i, {"item_id": i, "text": cat.item_text[i],
                "image": cat.item_images[i],
                **{a: v[i] for a, v in attrs.items()}}

  return _ItemsBuilder(features=features, splits={ITEMS_SPLIT: examples},
                       data_dir=root)


def _interactions_builder(cat, root):
  features = {
      "user_id": tfds.features.Scalar(np.int32),
      "item_id": tfds.features.Scalar(np.int32),
      "row": tfds.features.Scalar(np.int64),
  }
  if cat.labels is not None:
    features["label"] = tfds.features.Scalar(np.float32)

  def split_gen(split_id):
    def examples():
      for row in np.flatnonzero(cat.split == split_id):
        user, item = cat.interactions[row]
        example = {"user_id": user, "item_id": item, "row": row}
        if cat.labels is not None:
          example["label"] = cat.labels[row]
        yield int(row), example
    return examples

  splits = {name: split_gen(i) for i, name in
            enumerate(catalog_lib.SPLIT_NAMES)}
  empty = [n for i, n in enumerate(catalog_lib.SPLIT_NAMES)
           if not (cat.split == i).any()]
  if empty:
    raise MmjaxError(f"catalog.split has no {'/'.join(empty)} interactions")
  return _InteractionsBuilder(features=features, splits=splits, data_dir=root)


def write_catalog(
    catalog: catalog_lib.Catalog, data_dir: str, *, tokenizer_vocab: int = 1024
) -> None:
  """Writes `catalog` as a data dir, replacing an older mmjax data dir there."""
  _write(catalog, data_dir, tokenizer_vocab=tokenizer_vocab, replace=True)


def write_cached(catalog: catalog_lib.Catalog, data_dir: str, *,
                 tokenizer: tokenizers.Tokenizer, extra_meta: dict) -> None:
  """Writes a cache entry, unless a concurrent writer has just published one."""
  _write(catalog, data_dir, tokenizer_vocab=None, replace=False,
         extra_meta=extra_meta, tokenizer=tokenizer)


def _write(cat, data_dir, *, tokenizer_vocab, replace, extra_meta=None,
           tokenizer=None):
  """Writes into a temp dir beside data_dir, then renames it into place.

  With replace=False an existing data dir (e.g. one a concurrent process just
  finished) is kept and the new copy dropped. A given `tokenizer` is saved
  instead of one trained with `tokenizer_vocab`.
  """
  cat.validate()
  data_dir = os.path.abspath(os.fspath(data_dir))
  if (os.path.isdir(data_dir) and os.listdir(data_dir)
      and not is_data_dir(data_dir)):
    raise MmjaxError(f"refusing to overwrite {data_dir}: it is not empty and "
                     f"not an mmjax data dir (no {_META})")
  parent, base = os.path.split(data_dir)
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=f".{base}.tmp-", dir=parent)
  try:
    downloads = os.path.join(tmp, "_downloads")
    with _quiet():
      for builder in (_item_builder(cat, tmp), _interactions_builder(cat, tmp)):
        builder.download_and_prepare(download_dir=downloads)
    shutil.rmtree(downloads, ignore_errors=True)
    np.save(os.path.join(tmp, _ITEM_RECORDS), _index_item_records(tmp, cat.num_items))
    (tokenizer or text.train_wordpiece(cat.item_text, tokenizer_vocab)).save(
        os.path.join(tmp, _TOKENIZER))
    if cat.oracle_scores is not None:
      np.save(os.path.join(tmp, _ORACLE), cat.oracle_scores)
    if cat.user_ids is not None or cat.item_ids is not None:
      with open(os.path.join(tmp, _IDS), "w") as f:
        json.dump({"users": cat.user_ids, "items": cat.item_ids}, f)
    meta = {
        "format_version": FORMAT_VERSION,
        "num_users": int(cat.num_users),
        "num_items": int(cat.num_items),
        "image_size": cat.image_size,
        "attributes": list(cat.item_attrs or {}),
        "label_kind": cat.label_kind,
        "num_interactions": {n: int((cat.split == i).sum()) for i, n in
                             enumerate(catalog_lib.SPLIT_NAMES)},
        **(extra_meta or {}),
    }
    with open(os.path.join(tmp, _META), "w") as f:
      json.dump(meta, f, indent=2)
    _publish(tmp, data_dir, replace)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)  # A no-op once renamed.


def _publish(tmp, data_dir, replace):
  """Renames tmp to data_dir; each rename is atomic on one filesystem."""
  if os.path.isdir(data_dir) and not os.listdir(data_dir):
    os.rmdir(data_dir)
  if is_data_dir(data_dir):
    if not replace:
      return
    old = tempfile.mkdtemp(prefix=f".{os.path.basename(data_dir)}.old-",
                           dir=os.path.dirname(data_dir))
    os.rename(data_dir, os.path.join(old, "d"))
    os.rename(tmp, data_dir)
    shutil.rmtree(old, ignore_errors=True)
    return
  try:
    os.rename(tmp, data_dir)
  except OSError:
    # Lost a race to another writer; its copy is as good as ours.
    if replace or not is_data_dir(data_dir):
      raise


def is_data_dir(data_dir: str) -> bool:
  """Whether data_dir holds a complete mmjax data dir."""
  return os.path.isfile(os.path.join(data_dir, _META))


def read_meta(data_dir: str) -> dict:
  """meta.json of a data dir; MmjaxError if missing or of another version."""
  data_dir = os.fspath(data_dir)
  if not os.path.isdir(data_dir):
    raise MmjaxError(f"data dir not found: {data_dir}")
  if not is_data_dir(data_dir):
    raise MmjaxError(f"{data_dir} is not an mmjax data dir (no {_META})")
  path = os.path.join(data_dir, _META)
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
      os.path.join(os.fspath(data_dir), name, _VERSION))
  return builder.as_data_source(split, **kwargs)


def _raw_items(root):
  """The item records as serialized tf.train.Example bytes."""
  builder = tfds.builder_from_directory(os.path.join(root, "items", _VERSION))
  return builder.as_data_source(
      ITEMS_SPLIT, deserialize_method=tfds.decode.DeserializeMethod.RAW_BYTES)


def _index_item_records(root, num_items) -> np.ndarray:
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
  """(item_id, utf-8 text, raw image bytes) of one serialized item record:
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
  path = os.path.join(os.fspath(data_dir), _ITEM_RECORDS)
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
  return os.path.join(os.fspath(data_dir), _TOKENIZER)


def read_records(source):
  """All records of a source as a dict of stacked numpy arrays."""
  out = {}
  for lo in range(0, len(source), _READ_CHUNK):
    keys = list(range(lo, min(len(source), lo + _READ_CHUNK)))
    for record in source.__getitems__(keys):
      for k, v in record.items():
        out.setdefault(k, []).append(v)
  return {k: np.stack(v) for k, v in out.items()}


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

  oracle_file = os.path.join(data_dir, _ORACLE)
  raw_ids = _read_ids(data_dir)
  return catalog_lib.Catalog(
      item_text=[t.decode("utf-8") for t in items["text"][order]],
      item_images=items["image"][order],
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
  path = os.path.join(os.fspath(data_dir), _IDS)
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


# The WordPiece vocabulary the embedded catalog's tokenizer is trained to.
SYNTHETIC_VOCAB = 1024


def cached_dir(kind: str, key: dict, cache_root: str | None = None) -> str:
  """cache_root/<kind>-<hash of key and the format version>.

  cache_root defaults to $MMJAX_CACHE or ~/.cache/mmjax.
  """
  key = json.dumps({**key, "format_version": FORMAT_VERSION}, sort_keys=True)
  digest = hashlib.sha256(key.encode()).hexdigest()[:16]
  return os.path.join(cache_root or cache_lib.cache_root(), f"{kind}-{digest}")


def ensure_synthetic(
    spec: synthetic.SyntheticSpec, cache_root: str | None = None
) -> str:
  """Data dir of `spec`, generated and written on first use.

  The dir lives in cache_root (default: $MMJAX_CACHE or ~/.cache/mmjax) under
  a name hashed from the spec and the format version, so any change to either
  gets a fresh dir.
  """
  key = dataclasses.asdict(spec)
  if not spec.impressions:   # Unlabelled catalogs keep their cache entries.
    del key["impressions"]
  data_dir = cached_dir("synthetic", {"spec": key}, cache_root)
  if not is_data_dir(data_dir):
    _write(synthetic.generate(spec), data_dir, tokenizer_vocab=SYNTHETIC_VOCAB,
           replace=False,
           extra_meta={"synthetic_spec": dataclasses.asdict(spec)})
  return data_dir
