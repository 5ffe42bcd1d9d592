"""The streamed train pipeline: items joined per batch from the item records."""

import json
import os
import pickle
import shutil

import numpy as np
import pytest

from mmjax.data import store
from mmjax.data.catalog import TRAIN
from mmjax.data.features import (TextTokenizer, augment_images, model_images,
                                 normalize_images)
from mmjax.data.pipeline import ItemFeatures, log_popularity, train_dataset
from mmjax.data.stream import ItemRecords, TrainInteractions
from mmjax.errors import MmjaxError


@pytest.fixture(scope="module")
def catalog(data_dir):
  return store.load_catalog(data_dir)


def _tokenizer(data_dir, config):
  return TextTokenizer(store.tokenizer_path(data_dir), config.data.max_text_len)


def _equal_streams(a, b, count):
  ita, itb = iter(a), iter(b)
  for _ in range(count):
    x, y = next(ita), next(itb)
    assert x.keys() == y.keys()
    for k in x:
      np.testing.assert_array_equal(x[k], y[k], err_msg=k)


@pytest.mark.parametrize("cache", [0, 7, 10_000])
def test_streamed_batches_equal_the_in_memory_ones(config, data_dir, catalog, cache):
  # Cache sizes: none, smaller than a batch (every batch evicts), all items.
  config.data.item_cache = cache
  memory = train_dataset(data_dir, catalog, config.data, batch_size=16, seed=5,
                         co_items=True,
                         items=ItemFeatures.build(catalog, _tokenizer(data_dir, config)))
  streamed = train_dataset(data_dir, None, config.data, batch_size=16, seed=5,
                           co_items=True)
  # Past one epoch (the train split has ~450 interactions here).
  _equal_streams(memory, streamed, 40)


def test_streamed_batches_equal_without_augmentation(config, data_dir, catalog):
  config.data.augment = False
  memory = train_dataset(data_dir, catalog, config.data, batch_size=8, seed=2,
                         items=ItemFeatures.build(catalog, _tokenizer(data_dir, config)))
  _equal_streams(memory, train_dataset(data_dir, None, config.data, batch_size=8,
                                       seed=2), 5)


def test_workers_stream_the_same_batches(config, data_dir):
  config.data.worker_count = 0
  want = train_dataset(data_dir, None, config.data, batch_size=8, seed=1)
  config.data.worker_count = 1
  got = train_dataset(data_dir, None, config.data, batch_size=8, seed=1)
  _equal_streams(want, got, 6)


def test_item_records_match_the_catalog(config, data_dir, catalog):
  tok = _tokenizer(data_dir, config)
  records = ItemRecords(data_dir, tok, capacity=5)
  feats = ItemFeatures.build(catalog, tok)
  ids = np.array([3, 3, 0, catalog.num_items - 1, 17, 3, 40, 0])
  for _ in range(2):   # The second time partly from the cache.
    for got, want in zip(records.lookup(ids), feats.lookup(ids)):
      np.testing.assert_array_equal(got, want)
  assert len(records._slots) == 5
  # Pickled (into a grain worker): the path travels, not the cache.
  clone = pickle.loads(pickle.dumps(records))
  assert len(clone._slots) == 0 and len(pickle.dumps(records)) < 10_000
  np.testing.assert_array_equal(clone.lookup(ids)[2], feats.images[ids])
  with pytest.raises(MmjaxError, match="out of range"):
    records.lookup([catalog.num_items])


def test_train_interactions_read_from_the_records(data_dir, catalog):
  read = TrainInteractions.read(data_dir)
  np.testing.assert_array_equal(read.pairs, catalog.split_pairs(TRAIN))
  longest = read.histories.shape[1]
  np.testing.assert_array_equal(read.histories,
                                catalog.user_histories(TRAIN, max_len=longest))
  np.testing.assert_array_equal(read.log_q, log_popularity(catalog))


def test_model_images_equal_normalize_then_augment():
  images = np.random.default_rng(0).integers(0, 256, (5, 12, 10, 3), np.uint8)
  want = augment_images(normalize_images(images), np.random.default_rng(3))
  np.testing.assert_array_equal(model_images(images, np.random.default_rng(3)), want)
  np.testing.assert_array_equal(model_images(images, None), normalize_images(images))


def test_stale_item_index_is_one_error(config, data_dir, tmp_path):
  copy = str(tmp_path / "d")
  shutil.copytree(data_dir, copy)
  path = os.path.join(copy, "items", "1.0.0", "item_records.npy")
  index = np.load(path)
  np.save(path, index[::-1].copy())
  records = ItemRecords(copy, _tokenizer(copy, config), capacity=0)
  with pytest.raises(MmjaxError, match="does not match"):
    records.lookup([0, 1])


def test_old_format_is_refused_with_the_fix(config, data_dir, tmp_path):
  copy = str(tmp_path / "old")
  shutil.copytree(data_dir, copy)
  meta_path = os.path.join(copy, "meta.json")
  with open(meta_path) as f:
    meta = json.load(f)
  with open(meta_path, "w") as f:
    json.dump({**meta, "format_version": 1}, f)
  with pytest.raises(MmjaxError, match="write the data dir again"):
    train_dataset(copy, None, config.data, batch_size=8, seed=0)
