"""Writing a Catalog as a data dir (the layout `store` reads), and the
cache of generated and ingested data dirs.

Everything is written into a temp folder beside the data dir and renamed
into place, so a data dir that exists is complete.
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
from tensorflow_datasets.core import shuffle as tfds_shuffle

from mmjax import cache as cache_lib
from mmjax.data import catalog as catalog_lib
from mmjax.data import image_bytes
from mmjax.data import store
from mmjax.data import synthetic
from mmjax.data import text
from mmjax.errors import MmjaxError


class _Builder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """A builder whose features and split generators are given at construction.

  Not registered with TFDS: readers use `tfds.builder_from_directory`, which
  needs only the files this writes.
  """
  VERSION = tfds.core.Version(store.VERSION)

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


@contextlib.contextmanager
def _shuffle_in_memory():
  """TFDS's write shuffle holds up to 1 GB in memory and spills the rest
  through tf.io.gfile, which needs TensorFlow. The catalog being written is
  in memory already, so its serialized copy is held there too."""
  was = tfds_shuffle.MAX_MEM_BUFFER_SIZE
  tfds_shuffle.MAX_MEM_BUFFER_SIZE = 1 << 62
  try:
    yield
  finally:
    tfds_shuffle.MAX_MEM_BUFFER_SIZE = was


def _item_builder(cat, root):
  attrs = cat.item_attrs or {}
  clash = set(attrs) & set(store.ITEM_FIELDS)
  if clash:
    raise MmjaxError(f"catalog.item_attrs uses reserved names {sorted(clash)}")
  features = {
      "item_id": tfds.features.Scalar(np.int32),
      "text": tfds.features.Text(),
      # The encoded file as bytes: read where it is used, at the size it is
      # used (TFDS's Image feature would need TensorFlow).
      "image": tfds.features.Tensor(shape=(), dtype=np.object_),
      **{a: tfds.features.Scalar(np.int32) for a in attrs},
  }
  files = cat.item_image_files

  def examples():
    for i in range(cat.num_items):
      image = (files[i] if files is not None
               else image_bytes.encode_array(cat.item_images[i]))
      yield i, {"item_id": i, "text": cat.item_text[i], "image": image,
                **{a: v[i] for a, v in attrs.items()}}

  return _ItemsBuilder(features=features, splits={store.ITEMS_SPLIT: examples},
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
      and not store.is_data_dir(data_dir)):
    raise MmjaxError(f"refusing to overwrite {data_dir}: it is not empty and "
                     f"not an mmjax data dir (no {store.META_FILE})")
  parent, base = os.path.split(data_dir)
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=f".{base}.tmp-", dir=parent)
  try:
    downloads = os.path.join(tmp, "_downloads")
    with _quiet(), _shuffle_in_memory():
      for builder in (_item_builder(cat, tmp), _interactions_builder(cat, tmp)):
        builder.download_and_prepare(download_dir=downloads)
    shutil.rmtree(downloads, ignore_errors=True)
    np.save(os.path.join(tmp, store.ITEM_RECORDS_FILE),
            store.index_item_records(tmp, cat.num_items))
    (tokenizer or text.train_wordpiece(cat.item_text, tokenizer_vocab)).save(
        os.path.join(tmp, store.TOKENIZER_FILE))
    if cat.oracle_scores is not None:
      np.save(os.path.join(tmp, store.ORACLE_FILE), cat.oracle_scores)
    if cat.user_ids is not None or cat.item_ids is not None:
      with open(os.path.join(tmp, store.IDS_FILE), "w") as f:
        json.dump({"users": cat.user_ids, "items": cat.item_ids}, f)
    meta = {
        "format_version": store.FORMAT_VERSION,
        "num_users": int(cat.num_users),
        "num_items": int(cat.num_items),
        "image_size": cat.image_size,
        "attributes": list(cat.item_attrs or {}),
        "label_kind": cat.label_kind,
        "num_interactions": {n: int((cat.split == i).sum()) for i, n in
                             enumerate(catalog_lib.SPLIT_NAMES)},
        **(extra_meta or {}),
    }
    with open(os.path.join(tmp, store.META_FILE), "w") as f:
      json.dump(meta, f, indent=2)
    _publish(tmp, data_dir, replace)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)  # A no-op once renamed.


def _publish(tmp, data_dir, replace):
  """Renames tmp to data_dir; each rename is atomic on one filesystem."""
  if os.path.isdir(data_dir) and not os.listdir(data_dir):
    os.rmdir(data_dir)
  if store.is_data_dir(data_dir):
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
    if replace or not store.is_data_dir(data_dir):
      raise


# The WordPiece vocabulary the embedded catalog's tokenizer is trained to.
SYNTHETIC_VOCAB = 1024


def cached_dir(kind: str, key: dict, cache_root: str | None = None) -> str:
  """cache_root/<kind>-<hash of key and the format version>.

  cache_root defaults to $MMJAX_CACHE or ~/.cache/mmjax.
  """
  key = json.dumps({**key, "format_version": store.FORMAT_VERSION}, sort_keys=True)
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
  if not store.is_data_dir(data_dir):
    _write(synthetic.generate(spec), data_dir, tokenizer_vocab=SYNTHETIC_VOCAB,
           replace=False,
           extra_meta={"synthetic_spec": dataclasses.asdict(spec)})
  return data_dir
