"""Train-stream inputs read from a data dir, in memory that does not grow
with the catalog's items.

`ItemRecords` joins items per batch from the item records (looked up by item
id through `store.item_records`) instead of holding every item's tokens and
image: each process (and each grain worker) keeps only a bounded cache of
recently used items. `TrainInteractions` is what the stream needs of the
interactions (the train pairs, the users' train histories, the items'
log-popularity), read from the interaction records alone.
`ShuffledBatches` gives each batch's rows of the shuffled, sharded stream.
"""

from __future__ import annotations

import collections
import dataclasses
import threading

import grain
import numpy as np

from mmjax.data import image_bytes, store
from mmjax.data.catalog import TRAIN, label_kind
from mmjax.data.features import TextTokenizer
from mmjax.errors import MmjaxError


class ItemRecords:
  """Tokens, attention masks and uint8 images of items, by item id, read
  from a data dir's item records with an LRU cache of `capacity` items:
  an item is tokenized and its stored image decoded to the model's size
  (`image_bytes.decode`) when it is read, and cached as such.

  Pickles as (data dir, tokenizer, capacity): each grain worker opens the
  records itself, and its cache starts empty.
  """

  def __init__(self, data_dir: str, tokenizer: TextTokenizer, capacity: int):
    if capacity < 0:
      raise MmjaxError(f"item cache capacity {capacity} must be >= 0")
    self.data_dir, self.tokenizer, self.capacity = data_dir, tokenizer, capacity
    meta = store.read_meta(data_dir)
    self.num_items = int(meta["num_items"])
    side = int(meta["image_size"])
    self.image_shape = (side, side, 3)
    self._records = store.item_records(data_dir)
    if len(self._records) != self.num_items:
      raise MmjaxError(f"{data_dir}: item_records.npy has {len(self._records)} "
                       f"entries for {self.num_items} items; write the data dir again")
    self._source = None   # Opened on first read, in the reading process.
    # grain's read threads map batches concurrently: one lookup at a time
    # keeps a slot from being refilled while another batch copies it.
    self._lock = threading.Lock()
    self._slots: collections.OrderedDict[int, int] = collections.OrderedDict()
    length = tokenizer.max_len
    self._tokens = np.zeros((capacity, length), np.int32)
    self._mask = np.zeros((capacity, length), np.int32)
    self._images = np.zeros((capacity, *self.image_shape), np.uint8)

  def __getstate__(self):
    return dict(data_dir=self.data_dir, tokenizer=self.tokenizer,
                capacity=self.capacity)

  def __setstate__(self, state):
    self.__init__(**state)

  def lookup(self, item_ids) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(tokens (B, L) int32, mask (B, L) int32, images (B, H, W, 3) uint8)."""
    item_ids = np.asarray(item_ids)
    if item_ids.size and (item_ids.min() < 0 or item_ids.max() >= self.num_items):
      raise MmjaxError(f"item ids out of range [0, {self.num_items}): "
                       f"{item_ids.min()}..{item_ids.max()}")
    unique, inverse = np.unique(item_ids, return_inverse=True)
    with self._lock:
      slots = np.fromiter(map(self._slot, unique.tolist()), np.int64, len(unique))
      miss = np.flatnonzero(slots < 0)
      if len(unique) <= self.capacity:
        # Read the misses into the cache (evicting no item of this batch),
        # then gather every row from it at once.
        if len(miss):
          slots[miss] = self._remember(unique[miss], *self._read(unique[miss]))
        rows = slots[inverse]
        return self._tokens[rows], self._mask[rows], self._images[rows]
      length = self.tokenizer.max_len
      tokens = np.empty((len(unique), length), np.int32)
      mask = np.empty((len(unique), length), np.int32)
      images = np.empty((len(unique), *self.image_shape), np.uint8)
      hit = np.flatnonzero(slots >= 0)
      tokens[hit], mask[hit], images[hit] = (
          self._tokens[slots[hit]], self._mask[slots[hit]], self._images[slots[hit]])
      if len(miss):
        read = self._read(unique[miss])
        tokens[miss], mask[miss], images[miss] = read
        self._remember(unique[miss], *read)
    return tokens[inverse], mask[inverse], images[inverse]

  def _slot(self, item: int) -> int:
    """item's cache slot, marked most recently used; -1 if not cached."""
    slot = self._slots.get(item)
    if slot is None:
      return -1
    self._slots.move_to_end(item)
    return slot

  def _read(self, item_ids):
    if self._source is None:
      self._source = store.open_item_bytes(self.data_dir)
    keys = self._records[item_ids].tolist()
    ids, texts, files = zip(*map(store.parse_item, self._source.__getitems__(keys)))
    if list(ids) != item_ids.tolist():
      raise MmjaxError(f"{self.data_dir}: item_records.npy does not match the "
                       "item records; write the data dir again")
    tokens, mask = self.tokenizer.encode_all(texts)
    return tokens, mask, image_bytes.decode_all(files, self.image_shape[0])

  def _remember(self, item_ids, tokens, mask, images) -> np.ndarray:
    """Caches the newest min(len, capacity) items, evicting the least
    recently used ones; their slots (-1: not cached)."""
    keep = min(len(item_ids), self.capacity)
    slots = np.full(len(item_ids), -1, np.int64)
    for k in range(len(item_ids) - keep, len(item_ids)):
      if len(self._slots) < self.capacity:
        slot = len(self._slots)
      else:
        _, slot = self._slots.popitem(last=False)
      self._slots[int(item_ids[k])] = slots[k] = slot
    cached = slots >= 0
    self._tokens[slots[cached]] = tokens[cached]
    self._mask[slots[cached]] = mask[cached]
    self._images[slots[cached]] = images[cached]
    return slots


class ShuffledBatches(grain.transforms.Map):
  """Batch index -> that batch's rows of one process's share of an endless
  stream over `rows`, each epoch a new seeded permutation of them.

  The shape of grain's `shuffle().repeat()[p::count].batch()` (process p
  takes every count-th row from the p-th; a batch may span two epochs),
  with numpy's permutations, computed a batch at a time: grain computes it
  per row in Python, which cost more than the rest of the pipeline. A batch
  is a pure function of its index, so grain's iterator state (the next
  index) still restores the stream.
  """

  def __init__(self, rows: np.ndarray, batch: int, seed: int,
               process_index: int = 0, process_count: int = 1):
    if len(rows) == 0:
      raise MmjaxError("the train stream has no rows to shuffle")
    self.rows, self.batch, self.seed = rows, batch, seed
    self.process_index, self.process_count = process_index, process_count
    # Epochs one batch of every process spans: two unless rows are fewer.
    self._keep = 2 + batch * process_count // len(rows)
    self._orders: dict[int, np.ndarray] = {}
    self._lock = threading.Lock()

  def __getstate__(self):
    return {k: v for k, v in self.__dict__.items() if k not in ("_orders", "_lock")}

  def __setstate__(self, state):
    self.__dict__.update(state, _orders={}, _lock=threading.Lock())

  def map(self, index: int) -> np.ndarray:
    local = np.arange(index * self.batch, (index + 1) * self.batch, dtype=np.int64)
    epoch, at = np.divmod(self.process_index + local * self.process_count,
                          len(self.rows))
    picked = np.empty(self.batch, np.int64)
    for e in np.unique(epoch).tolist():
      here = epoch == e
      picked[here] = self._order(e)[at[here]]
    return self.rows[picked]

  def _order(self, epoch: int) -> np.ndarray:
    """The epoch's permutation, the last few kept: read threads may finish
    batches out of order across an epoch's end."""
    with self._lock:
      order = self._orders.get(epoch)
      if order is None:
        rng = np.random.default_rng([self.seed, epoch])
        order = rng.permutation(len(self.rows)).astype(np.int32)
        self._orders[epoch] = order
        while len(self._orders) > self._keep:
          del self._orders[min(self._orders)]
      return order


@dataclasses.dataclass(frozen=True)
class TrainInteractions:
  """What the train stream needs of the interactions.

  Unlabelled, `pairs` are the positives. Labelled (loss.pointwise), they are
  every train row, impressions too, and `labels` / `positive` say which
  rows are positives; histories and popularity count the positives only.
  """
  pairs: np.ndarray       # (M, 2) int32 train (user_id, item_id), row order
  histories: np.ndarray   # (U, longest) int32 each user's train items, -1 pads
  log_q: np.ndarray       # (N,) float32 log of each item's smoothed share
  labels: np.ndarray | None = None     # (M,) float32, labelled streams only
  positive: np.ndarray | None = None   # (M,) bool, labelled streams only

  @classmethod
  def of(cls, pairs: np.ndarray, num_users: int, num_items: int,
         labels: np.ndarray | None = None):
    positive = None
    if labels is not None:
      positive = np.ones(len(pairs), bool)
      if label_kind(labels) == "binary":
        positive = labels > 0
    pos = pairs if positive is None else pairs[positive]
    counts = np.bincount(pos[:, 0], minlength=num_users)
    longest = max(1, int(counts.max()))
    return cls(pairs, _histories(pos, counts, longest),
               _log_popularity(np.bincount(pos[:, 1], minlength=num_items)),
               labels, positive)

  @classmethod
  def from_catalog(cls, catalog, labelled: bool = False):
    if labelled:
      pairs, labels = catalog.labelled_rows(TRAIN)
      return cls.of(pairs, catalog.num_users, catalog.num_items, labels)
    return cls.of(catalog.split_pairs(TRAIN), catalog.num_users, catalog.num_items)

  @classmethod
  def read(cls, data_dir: str, labelled: bool = False):
    """From the interaction records alone (no item is read)."""
    meta = store.read_meta(data_dir)
    if labelled and not meta.get("label_kind"):
      raise MmjaxError(f"{data_dir} has no labels: loss.pointwise needs a label "
                       "column (data.raw.columns.label) or synthetic impressions "
                       "(data.synthetic.impressions)")
    part = store.read_records(store.open_interactions(data_dir, "train"))
    order = np.argsort(part["row"], kind="stable")
    pairs = np.stack([part["user_id"], part["item_id"]], 1)[order].astype(np.int32)
    labels = (part["label"][order].astype(np.float32)
              if meta.get("label_kind") else None)
    if labels is not None and not labelled and meta["label_kind"] == "binary":
      pairs = pairs[labels > 0]   # The positives alone, as from_catalog's.
    return cls.of(pairs, int(meta["num_users"]), int(meta["num_items"]),
                  labels if labelled else None)


def _histories(pairs, counts, width):
  """`Catalog.user_histories(TRAIN, max_len=width)` (width >= every count):
  each user's items in row order, left-aligned, -1 padded."""
  order = np.argsort(pairs[:, 0], kind="stable")
  users, items = pairs[order, 0], pairs[order, 1]
  starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
  out = np.full((len(counts), width), -1, np.int32)
  out[users, np.arange(len(users)) - starts[users]] = items
  return out


def _log_popularity(counts) -> np.ndarray:
  """log of each item's (smoothed) share of train interactions: logQ."""
  counts = counts.astype(np.float64)
  return np.log((counts + 1.0) / (counts.sum() + len(counts))).astype(np.float32)
