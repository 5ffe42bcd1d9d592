"""The train stream's per-batch steps: the batch shuffle, the batch image
transform and the item cache under concurrent read threads."""

import pickle
import threading

import numpy as np
import pytest

from mmjax.data import store
from mmjax.data.batch_images import batch_model_images
from mmjax.data.features import (TextTokenizer, augment_images, model_images,
                                 normalize_images)
from mmjax.data.pipeline import ItemFeatures
from mmjax.data.stream import ItemRecords, ShuffledBatches


def test_shuffled_batches_cover_every_row_once_per_epoch():
  rows = np.arange(7, dtype=np.int32) * 10
  batch, count = 3, 2   # Batches of both processes straddle epoch ends.
  shards = [ShuffledBatches(rows, batch, seed=4, process_index=p, process_count=count)
            for p in range(count)]
  per_process = [np.concatenate([s.map(i) for i in range(14)]) for s in shards]
  # Process p holds rows p, p + count, ... of the one global stream.
  stream = np.empty(sum(map(len, per_process)), np.int32)
  for p in range(count):
    stream[p::count] = per_process[p]
  epochs = stream.reshape(-1, len(rows))
  assert len(epochs) == 12
  for epoch in epochs:
    np.testing.assert_array_equal(np.sort(epoch), rows)
  assert len({tuple(e) for e in epochs}) > 6   # A new order each epoch.
  # Another seed, another stream.
  other = ShuffledBatches(rows, batch, seed=5, process_index=0, process_count=count)
  assert any((other.map(i) != shards[0].map(i)).any() for i in range(14))


def test_shuffled_batches_are_a_function_of_the_index():
  rows = np.stack([np.arange(50), np.arange(50) % 7], 1).astype(np.int32)
  s = ShuffledBatches(rows, 8, seed=1)
  want = [s.map(i) for i in range(30)]
  # Out of order (read threads), after a restore, in a worker (pickled).
  again = ShuffledBatches(rows, 8, seed=1)
  clone = pickle.loads(pickle.dumps(s))
  for i in [29, 3, 17, 0, 12, 28, 6]:
    np.testing.assert_array_equal(again.map(i), want[i])
    np.testing.assert_array_equal(clone.map(i), want[i])
  assert len(clone._orders) <= clone._keep


@pytest.mark.parametrize("shape,shift", [((5, 12, 10, 3), 2), ((128, 16, 16, 3), 2),
                                         ((3, 1, 1, 3), 2), ((4, 9, 5, 1), 3),
                                         ((2, 6, 6, 3), 0)])
def test_batch_images_equal_normalize_then_augment(shape, shift):
  images = np.random.default_rng(0).integers(0, 256, shape, np.uint8)
  want = augment_images(normalize_images(images), np.random.default_rng(3), shift)
  got = batch_model_images(images, np.random.default_rng(3), shift)
  assert got.dtype == np.float32
  np.testing.assert_array_equal(got, want)
  np.testing.assert_array_equal(
      got, model_images(images, np.random.default_rng(3), shift))
  np.testing.assert_array_equal(batch_model_images(images, None),
                                normalize_images(images))


def test_item_records_under_concurrent_lookups(config, data_dir):
  # grain's read threads share one ItemRecords: a cache smaller than the
  # items in flight evicts, and no lookup may see another item's slot.
  tok = TextTokenizer(store.tokenizer_path(data_dir), config.data.max_text_len)
  records = ItemRecords(data_dir, tok, capacity=24)
  feats = ItemFeatures.build(store.load_catalog(data_dir), tok)
  failures = []

  def run(seed):
    rng = np.random.default_rng(seed)
    for _ in range(60):
      ids = rng.integers(0, records.num_items, rng.integers(1, 20))
      got = records.lookup(ids)
      for g, w in zip(got, feats.lookup(ids)):
        if not np.array_equal(g, w):
          failures.append(seed)

  threads = [threading.Thread(target=run, args=(s,)) for s in range(4)]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  assert not failures
  assert len(records._slots) == 24
