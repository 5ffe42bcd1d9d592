"""The grain train pipeline: interactions -> joined item features -> batches.

Reads the TFDS ArrayRecord interactions (train split) and items through grain:
seeded global shuffle (a new order every epoch), per-process sharding, the
item join (text, image), tokenization, per-example random transforms (BERT
masking, image augmentation, history sampling; seeded per example so the
stream is reproducible and resumable), batching and prefetch (threads, or
worker processes with `data.worker_count > 0`).
"""

import dataclasses

import grain
import numpy as np

from mmjax.data import store
from mmjax.data.features import (TextTokenizer, augment_image, mask_tokens,
                                 normalize_images)


def train_histories(interactions: np.ndarray, split: np.ndarray,
                    num_users: int) -> list[np.ndarray]:
  """Each user's train items, sorted (the user tower's input)."""
  train = interactions[split == 0]
  order = np.lexsort((train[:, 1], train[:, 0]))
  train = train[order]
  bounds = np.searchsorted(train[:, 0], np.arange(num_users + 1))
  return [train[bounds[u]:bounds[u + 1], 1].astype(np.int32) for u in range(num_users)]


def pad_history(items: np.ndarray, length: int) -> np.ndarray:
  out = np.full((length,), -1, np.int32)
  out[:min(length, len(items))] = items[-length:]
  return out


def log_popularity(interactions: np.ndarray, split: np.ndarray, num_items: int):
  """log of each item's share of train interactions (logQ correction)."""
  counts = np.bincount(interactions[split == 0, 1], minlength=num_items)
  return np.log((counts + 1.0) / (counts.sum() + num_items)).astype(np.float32)


class _ItemLookup:
  """Random access to item records by item id (TFDS stores them shuffled)."""

  def __init__(self, data_dir: str):
    self.data_dir = data_dir
    self._source = store.open_items(data_dir)
    ids = np.asarray([self._source[i]["item_id"] for i in range(len(self._source))])
    self._index = np.empty(ids.max() + 1, np.int64)
    self._index[ids] = np.arange(len(ids))

  def __getitem__(self, item_id: int) -> dict:
    return self._source[int(self._index[item_id])]

  def __getstate__(self):
    return dict(data_dir=self.data_dir)

  def __setstate__(self, state):
    self.__init__(state["data_dir"])


@dataclasses.dataclass
class JoinItem(grain.transforms.Map):
  """(user, item) -> + tokens, mask, image (uint8), log_q."""
  items: _ItemLookup
  tokenizer: TextTokenizer
  log_q: np.ndarray

  def map(self, ex):
    item = self.items[ex["item_id"]]
    tokens, mask = self.tokenizer(item["text"])
    return dict(user_id=np.int32(ex["user_id"]), item_id=np.int32(ex["item_id"]),
                tokens=tokens, mask=mask, image=item["image"],
                log_q=self.log_q[ex["item_id"]])


@dataclasses.dataclass
class RandomExampleTransforms(grain.transforms.RandomMap):
  """BERT masking, image augmentation and history sampling for one example."""
  tokenizer: TextTokenizer
  histories: list
  history_len: int
  mlm_prob: float
  augment: bool

  def random_map(self, ex, rng: np.random.Generator):
    ex = dict(ex)
    ex["mlm_tokens"], ex["mlm_labels"] = mask_tokens(
        ex["tokens"], ex["mask"], self.tokenizer, self.mlm_prob, rng)
    image = normalize_images(ex["image"])
    ex["image"] = augment_image(image, rng) if self.augment else image
    # The target itself is never part of the history the user tower sees.
    hist = self.histories[ex["user_id"]]
    hist = hist[hist != ex["item_id"]]
    if len(hist) > self.history_len:
      hist = np.sort(rng.choice(hist, self.history_len, replace=False))
    ex["history"] = pad_history(hist, self.history_len)
    return ex


def train_dataset(data_dir: str, catalog, data_cfg, *, batch_size: int,
                  seed: int, process_index: int = 0,
                  process_count: int = 1) -> grain.IterDataset:
  """The endless, checkpointable stream of this process's train batches."""
  tokenizer = TextTokenizer(store.tokenizer_path(data_dir), data_cfg.max_text_len)
  histories = train_histories(catalog.interactions, catalog.split, catalog.num_users)
  log_q = log_popularity(catalog.interactions, catalog.split, catalog.num_items)
  ds = grain.MapDataset.source(store.open_interactions(data_dir, "train"))
  ds = ds.shuffle(seed=seed).repeat(None)
  ds = ds[process_index::process_count]
  ds = ds.map(JoinItem(_ItemLookup(data_dir), tokenizer, log_q))
  ds = ds.random_map(RandomExampleTransforms(
      tokenizer, histories, data_cfg.history_len, data_cfg.mlm_prob,
      data_cfg.augment), seed=seed + 1)
  ds = ds.batch(batch_size // process_count, drop_remainder=True)
  it = ds.to_iter_dataset(grain.ReadOptions(
      num_threads=data_cfg.num_threads, prefetch_buffer_size=data_cfg.prefetch))
  if data_cfg.worker_count > 0:
    it = it.mp_prefetch(grain.MultiprocessingOptions(
        num_workers=data_cfg.worker_count))
  return it
