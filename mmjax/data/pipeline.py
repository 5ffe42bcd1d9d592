"""The grain train pipeline: interactions -> batches with joined item features.

Streams the catalog's train interactions (read from its TFDS ArrayRecord
files by `store.load_catalog`) through grain: seeded global
shuffle (a new order every epoch), per-process sharding, batching, then one
vectorized random transform per batch (item join, BERT masking, image
normalization + augmentation, history sampling). Its randomness is seeded by
the batch's position in the stream, so the stream is reproducible and
resumable from grain's iterator state. Prefetch runs in threads, or in worker
processes with `data.worker_count > 0`.

Items are tokenized once, up front, into an in-memory `ItemFeatures` table,
and interactions stream from memory: per-example tokenization and record
decoding would cost more CPU than the train step on a small machine.
"""

import dataclasses
import signal

import grain
from absl import flags
import numpy as np

from mmjax.data import store
from mmjax.data.catalog import TRAIN
from mmjax.data.features import (TextTokenizer, augment_images, mask_tokens,
                                 normalize_images)


@dataclasses.dataclass(frozen=True)
class ItemFeatures:
  """Model inputs of every item, indexed by item id."""
  tokens: np.ndarray   # (N, L) int32
  mask: np.ndarray     # (N, L) int32
  images: np.ndarray   # (N, H, W, 3) uint8

  @classmethod
  def build(cls, catalog, tokenizer: TextTokenizer) -> "ItemFeatures":
    tokens, mask = tokenizer.encode_all(catalog.item_text)
    return cls(tokens, mask, catalog.item_images)


def log_popularity(catalog) -> np.ndarray:
  """log of each item's (smoothed) share of train interactions: logQ."""
  counts = catalog.item_popularity().astype(np.float64)
  return np.log((counts + 1.0) / (counts.sum() + len(counts))).astype(np.float32)


@dataclasses.dataclass
class BatchTransform(grain.transforms.RandomMap):
  """{user_id, item_id} batch -> every model input, vectorized over the batch."""
  items: ItemFeatures
  tokenizer: TextTokenizer
  histories: np.ndarray   # (U, max train items) int32, -1 padded
  log_q: np.ndarray
  history_len: int
  mlm_prob: float
  mlm_max_predictions: int
  augment: bool
  co_items: bool = False   # Also another train item of each user (loss.co_item).

  def random_map(self, batch, rng: np.random.Generator):
    users = np.asarray(batch["user_id"], np.int32)
    item_ids = np.asarray(batch["item_id"], np.int32)
    tokens, mask = self.items.tokens[item_ids], self.items.mask[item_ids]
    mlm_tokens, positions, labels = mask_tokens(
        tokens, mask, self.tokenizer, self.mlm_prob, self.mlm_max_predictions, rng)
    # Each user's train items other than the target: the pool of both the
    # pooled history and the co-item.
    hist = self.histories[users]
    ok = (hist >= 0) & (hist != item_ids[:, None])
    out = dict(
        user_id=users, item_id=item_ids, tokens=tokens, mask=mask,
        image=self._images(item_ids, rng),
        mlm_tokens=mlm_tokens, mlm_positions=positions, mlm_labels=labels,
        history=self._sample_histories(hist, ok, rng),
        log_q=self.log_q[item_ids])
    if self.co_items:
      co = self._sample_co_items(hist, ok, rng)
      shown = np.where(co >= 0, co, item_ids)   # Rows without one: masked out.
      out.update(co_item_id=co, co_tokens=self.items.tokens[shown],
                 co_mask=self.items.mask[shown], co_image=self._images(shown, rng))
    return out

  def _images(self, item_ids, rng):
    images = normalize_images(self.items.images[item_ids])
    return augment_images(images, rng) if self.augment else images

  @staticmethod
  def _sample_co_items(hist, ok, rng):
    """One uniformly random entry of each row of hist where ok; -1 if none."""
    key = np.where(ok, rng.random(hist.shape), -1.0)
    pick = np.argmax(key, axis=1)
    co = hist[np.arange(len(hist)), pick]
    return np.where(ok.any(1), co, -1).astype(np.int32)

  def _sample_histories(self, hist, ok, rng):
    """Up to history_len random entries of each row of hist where ok (the
    user's train items but the target), in time order; -1 pads."""
    key = np.where(ok, rng.random(hist.shape), np.inf)
    pick = np.sort(np.argsort(key, axis=1)[:, :self.history_len], axis=1)
    picked = np.take_along_axis(hist, pick, 1)
    used = np.isfinite(np.take_along_axis(key, pick, 1))
    # Valid entries first, then padding.
    order = np.argsort(~used, axis=1, kind="stable")
    return np.where(np.take_along_axis(used, order, 1),
                    np.take_along_axis(picked, order, 1), -1).astype(np.int32)


def _ids(pair: np.ndarray) -> dict:
  return dict(user_id=pair[0], item_id=pair[1])


def text_tokenizer(data_dir: str, config) -> TextTokenizer:
  """The text tower's tokenizer: config.model.text.init_from's, else the
  catalog's WordPiece."""
  return TextTokenizer(config.model.text.init_from or store.tokenizer_path(data_dir),
                       config.data.max_text_len)


def train_dataset(data_dir: str, catalog, data_cfg, *, batch_size: int,
                  seed: int, process_index: int = 0, process_count: int = 1,
                  tokenizer: TextTokenizer | None = None,
                  co_items: bool = False) -> grain.IterDataset:
  """The endless, checkpointable stream of this process's train batches
  (tokenized by `tokenizer`, by default the catalog's); `co_items` adds the
  inputs of loss.co_item (co_item_id, co_tokens, co_mask, co_image)."""
  if tokenizer is None:
    tokenizer = TextTokenizer(store.tokenizer_path(data_dir), data_cfg.max_text_len)
  longest = max(1, int(np.bincount(catalog.split_pairs(TRAIN)[:, 0]).max()))
  transform = BatchTransform(
      items=ItemFeatures.build(catalog, tokenizer), tokenizer=tokenizer,
      histories=catalog.user_histories(TRAIN, max_len=longest),
      log_q=log_popularity(catalog),
      history_len=data_cfg.history_len, mlm_prob=data_cfg.mlm_prob,
      mlm_max_predictions=data_cfg.mlm_max_predictions, augment=data_cfg.augment,
      co_items=co_items)
  ds = grain.MapDataset.source(catalog.split_pairs(TRAIN))
  ds = ds.shuffle(seed=seed).repeat(None)
  ds = ds[process_index::process_count]
  ds = ds.map(_ids)
  ds = ds.batch(batch_size // process_count, drop_remainder=True)
  ds = ds.random_map(transform, seed=seed + 1)
  it = ds.to_iter_dataset(grain.ReadOptions(
      num_threads=data_cfg.num_threads, prefetch_buffer_size=data_cfg.prefetch))
  if data_cfg.worker_count > 0:
    # grain's worker processes read absl flags; the CLI parses none.
    if not flags.FLAGS.is_parsed():
      flags.FLAGS.mark_as_parsed()
    it = it.mp_prefetch(grain.MultiprocessingOptions(
        num_workers=data_cfg.worker_count), worker_init_fn=_ignore_ctrl_c)
  return it


def _ignore_ctrl_c(worker_index: int, worker_count: int) -> None:
  """A terminal's Ctrl-C reaches the workers too: the trainer handles it
  (finishes its step and saves, needing them) and then shuts them down."""
  del worker_index, worker_count
  signal.signal(signal.SIGINT, signal.SIG_IGN)
