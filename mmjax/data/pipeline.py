"""The grain train pipeline: interactions -> batches with joined item features.

Streams the train interactions through grain a batch at a time: each batch
index maps to its rows of a seeded global shuffle (a new order every epoch),
sharded per process (`stream.ShuffledBatches`), then one vectorized random
transform per batch (item join, BERT masking, image normalization +
augmentation, history sampling); no step runs per example in Python. Its
randomness is seeded by the batch's position in the stream, so the stream
is reproducible and resumable from grain's iterator state. Prefetch runs
in threads, or in worker processes with `data.worker_count > 0`.

With `data.item_ssl_fraction` > 0 the last rows of every batch are items
alone, from a second seeded stream over the whole catalog (each epoch of it
a new permutation of every item, sharded like the interactions): items
without a train interaction reach the self-supervised terms too. Those rows
have no user (`is_interaction` False; user 0, an empty history, no
co-item), and the train step keeps them out of the recommendation terms.

With `labels` (loss.pointwise on a labelled catalog) the stream runs over
every labelled train row, impressions too: each batch adds `label` and
`is_labelled`, and `is_interaction` is False on the rows that are no
positive (a 0 click), which the implicit terms then mask like item-only rows.

Items are joined per batch from the data dir's item records
(`stream.ItemRecords`: read, tokenized and cached within a bounded number of
items), so no process holds the whole catalog; the interactions, which the
history sampling needs in full, are held as small int arrays.
`ItemFeatures` is the in-memory join of the same values, for evaluation-size
catalogs and as the reference the streamed join is tested against.
"""

import dataclasses
import signal
import sys

import grain
from absl import flags
import numpy as np

from mmjax.data import store
from mmjax.data.batch_images import batch_model_images
from mmjax.data.features import TextTokenizer, mask_tokens
from mmjax.data.stream import (ItemRecords, ShuffledBatches, TrainInteractions,
                                _log_popularity)
from mmjax.errors import MmjaxError


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

  def lookup(self, item_ids):
    """(tokens, mask, uint8 images) of item_ids, as `ItemRecords.lookup`."""
    return self.tokens[item_ids], self.mask[item_ids], self.images[item_ids]


def log_popularity(catalog) -> np.ndarray:
  """log of each item's (smoothed) share of train interactions: logQ."""
  return _log_popularity(catalog.item_popularity())


@dataclasses.dataclass
class BatchTransform(grain.transforms.RandomMap):
  """(B, 2) (user_id, item_id) batch -> every model input, vectorized."""
  items: ItemFeatures | ItemRecords
  tokenizer: TextTokenizer
  histories: np.ndarray   # (U, max train items) int32, -1 padded
  log_q: np.ndarray
  history_len: int
  mlm_prob: float
  mlm_max_predictions: int
  augment: bool
  co_items: bool = False   # Also another train item of each user (loss.co_item).
  # Labelled streams (loss.pointwise): each row's label and whether it is a
  # positive, by row index (the stream's third column).
  labels: np.ndarray | None = None
  positive: np.ndarray | None = None

  def random_map(self, batch, rng: np.random.Generator):
    """batch: the (B, 2) pairs, or (pairs, item ids) with item-only rows."""
    pairs, item_only = batch if isinstance(batch, tuple) else (batch, None)
    pairs = np.asarray(pairs, np.int32)
    users, item_ids = pairs[:, 0].copy(), pairs[:, 1].copy()
    extra = len(item_only) if item_only is not None else 0
    if self.labels is not None:
      rows = pairs[:, 2]
      label = np.concatenate([self.labels[rows], np.zeros(extra, np.float32)])
      is_labelled = np.arange(len(users) + extra) < len(users)
      is_interaction = is_labelled & np.concatenate(
          [self.positive[rows], np.zeros(extra, bool)])
    elif item_only is not None:
      is_interaction = np.arange(len(users) + len(item_only)) < len(users)
    if item_only is not None:
      # User 0 keeps every gather in range; the step masks these rows out.
      users = np.concatenate([users, np.zeros(len(item_only), np.int32)])
      item_ids = np.concatenate([item_ids, np.asarray(item_only, np.int32)])
    tokens, mask, images = self.items.lookup(item_ids)
    mlm_tokens, positions, labels = mask_tokens(
        tokens, mask, self.tokenizer, self.mlm_prob, self.mlm_max_predictions, rng)
    # Each user's train items other than the target: the pool of both the
    # pooled history and the co-item.
    hist = self.histories[users]
    if item_only is not None:
      hist = np.where(is_interaction[:, None], hist, -1)
    ok = (hist >= 0) & (hist != item_ids[:, None])
    out = dict(
        user_id=users, item_id=item_ids, tokens=tokens, mask=mask,
        image=batch_model_images(images, rng if self.augment else None),
        mlm_tokens=mlm_tokens, mlm_positions=positions, mlm_labels=labels,
        history=self._sample_histories(hist, ok, rng),
        log_q=self.log_q[item_ids])
    if item_only is not None or self.labels is not None:
      out["is_interaction"] = is_interaction
    if self.labels is not None:
      out.update(label=label, is_labelled=is_labelled)
    if self.co_items:
      co = self._sample_co_items(hist, ok, rng)
      shown = np.where(co >= 0, co, item_ids)   # Rows without one: masked out.
      co_tokens, co_mask, co_images = self.items.lookup(shown)
      out.update(co_item_id=co, co_tokens=co_tokens, co_mask=co_mask,
                 co_image=batch_model_images(co_images, rng if self.augment else None))
    return out

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


def text_tokenizer(data_dir: str, config) -> TextTokenizer:
  """The text tower's tokenizer: config.model.text.init_from's, else the
  catalog's WordPiece."""
  return TextTokenizer(config.model.text.init_from or store.tokenizer_path(data_dir),
                       config.data.max_text_len)


def train_dataset(data_dir: str, catalog, data_cfg, *, batch_size: int,
                  seed: int, process_index: int = 0, process_count: int = 1,
                  tokenizer: TextTokenizer | None = None,
                  co_items: bool = False, labels: bool = False,
                  items: ItemFeatures | None = None) -> grain.IterDataset:
  """The endless, checkpointable stream of this process's train batches
  (tokenized by `tokenizer`, by default the catalog's); `co_items` adds the
  inputs of loss.co_item (co_item_id, co_tokens, co_mask, co_image),
  `labels` those of loss.pointwise (label, is_labelled, is_interaction).

  `catalog` (the data dir's, loaded) only saves re-reading the interactions;
  None reads them from data_dir. Items stream from data_dir's records unless
  `items` gives them in memory; both give the same batches.
  `data_cfg.item_ssl_fraction` of each batch's rows are item-only rows.
  """
  if tokenizer is None:
    tokenizer = TextTokenizer(store.tokenizer_path(data_dir), data_cfg.max_text_len)
  inter = (TrainInteractions.read(data_dir, labels) if catalog is None
           else TrainInteractions.from_catalog(catalog, labels))
  if items is None:
    items = ItemRecords(data_dir, tokenizer, data_cfg.item_cache)
  transform = BatchTransform(
      items=items, tokenizer=tokenizer, histories=inter.histories,
      log_q=inter.log_q,
      history_len=data_cfg.history_len, mlm_prob=data_cfg.mlm_prob,
      mlm_max_predictions=data_cfg.mlm_max_predictions, augment=data_cfg.augment,
      co_items=co_items, labels=inter.labels, positive=inter.positive)
  local = batch_size // process_count
  m = item_only_rows(data_cfg.item_ssl_fraction, local)
  source = inter.pairs
  if labels:   # The row index finds each row's label in the transform.
    rows = np.arange(len(source), dtype=np.int32)[:, None]
    source = np.concatenate([source, rows], 1)
  batches = ShuffledBatches(source, local - m, seed, process_index, process_count)
  if m:
    # Item-only rows: a second stream, batched in step with the first, so
    # grain's iterator state (the next index) restores both positions.
    item_batches = ShuffledBatches(np.arange(len(inter.log_q), dtype=np.int32),
                                   m, seed + 2, process_index, process_count)
    batches = _Zip(batches, item_batches)
  # Endless: as many batch indices as int64 row positions allow.
  ds = grain.MapDataset.range(sys.maxsize // (local * process_count)).map(batches)
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


@dataclasses.dataclass(frozen=True)
class _Zip(grain.transforms.Map):
  """Batch index -> (interaction rows, item-only item ids)."""
  pairs: ShuffledBatches
  items: ShuffledBatches

  def map(self, index):
    return self.pairs.map(index), self.items.map(index)


def item_only_rows(fraction: float, local_batch: int) -> int:
  """Item-only rows of each process's batch of `local_batch` rows."""
  # The epsilon: products like 0.29 * 100 fall just below the whole number.
  m = int(fraction * local_batch + 1e-9)
  if fraction > 0 and m == 0:
    raise MmjaxError(f"data.item_ssl_fraction={fraction} gives no item-only row in "
                     f"a per-process batch of {local_batch}: set it to at least "
                     f"{1 / local_batch:.4g} or to 0")
  return m


def _ignore_ctrl_c(worker_index: int, worker_count: int) -> None:
  """A terminal's Ctrl-C reaches the workers too: the trainer handles it
  (finishes its step and saves, needing them) and then shuts them down."""
  del worker_index, worker_count
  signal.signal(signal.SIGINT, signal.SIG_IGN)
