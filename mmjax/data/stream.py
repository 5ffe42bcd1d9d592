"""Train-stream inputs read from a data dir, in memory that does not grow
with the catalog's items.

`ItemRecords` joins items per batch from the item records (looked up by item
id through `store.item_records`) instead of holding every item's tokens and
image: each process (and each grain worker) keeps only a bounded cache of
recently used items. `TrainInteractions` is what the stream needs of the
interactions (the train pairs, the users' train histories, the items'
log-popularity), read from the interaction records alone.
"""

from __future__ import annotations

import collections
import dataclasses

import numpy as np

from mmjax.data import store
from mmjax.data.catalog import TRAIN
from mmjax.data.features import TextTokenizer
from mmjax.errors import MmjaxError


class ItemRecords:
  """Tokens, attention masks and uint8 images of items, by item id, read
  from a data dir's item records with an LRU cache of `capacity` items.

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
    hit, slots = [], []
    for j, item in enumerate(unique.tolist()):
      slot = self._slots.get(item)
      if slot is not None:
        self._slots.move_to_end(item)
        hit.append(j)
        slots.append(slot)
    miss = np.setdiff1d(np.arange(len(unique)), hit)
    length = self.tokenizer.max_len
    tokens = np.empty((len(unique), length), np.int32)
    mask = np.empty((len(unique), length), np.int32)
    images = np.empty((len(unique), *self.image_shape), np.uint8)
    tokens[hit], mask[hit], images[hit] = (
        self._tokens[slots], self._mask[slots], self._images[slots])
    if len(miss):
      read = self._read(unique[miss])
      tokens[miss], mask[miss], images[miss] = read
      self._remember(unique[miss], *read)
    return tokens[inverse], mask[inverse], images[inverse]

  def _read(self, item_ids):
    if self._source is None:
      self._source = store.open_item_bytes(self.data_dir)
    keys = self._records[item_ids].tolist()
    ids, texts, pixels = zip(*map(store.parse_item, self._source.__getitems__(keys)))
    if list(ids) != item_ids.tolist():
      raise MmjaxError(f"{self.data_dir}: item_records.npy does not match the "
                       "item records; write the data dir again")
    tokens, mask = self.tokenizer.encode_all(texts)
    images = np.frombuffer(b"".join(pixels), np.uint8).reshape(
        len(ids), *self.image_shape)
    return tokens, mask, images

  def _remember(self, item_ids, tokens, mask, images):
    """Caches the newest min(len, capacity) items, evicting the least
    recently used ones."""
    keep = min(len(item_ids), self.capacity)
    for k in range(len(item_ids) - keep, len(item_ids)):
      if len(self._slots) < self.capacity:
        slot = len(self._slots)
      else:
        _, slot = self._slots.popitem(last=False)
      self._slots[int(item_ids[k])] = slot
      self._tokens[slot], self._mask[slot] = tokens[k], mask[k]
      self._images[slot] = images[k]


@dataclasses.dataclass(frozen=True)
class TrainInteractions:
  """What the train stream needs of the interactions."""
  pairs: np.ndarray       # (M, 2) int32 train (user_id, item_id), row order
  histories: np.ndarray   # (U, longest) int32 each user's train items, -1 pads
  log_q: np.ndarray       # (N,) float32 log of each item's smoothed share

  @classmethod
  def of(cls, pairs: np.ndarray, num_users: int, num_items: int):
    users = pairs[:, 0]
    counts = np.bincount(users, minlength=num_users)
    longest = max(1, int(counts.max()))
    return cls(pairs, _histories(pairs, counts, longest),
               _log_popularity(np.bincount(pairs[:, 1], minlength=num_items)))

  @classmethod
  def from_catalog(cls, catalog):
    return cls.of(catalog.split_pairs(TRAIN), catalog.num_users, catalog.num_items)

  @classmethod
  def read(cls, data_dir: str):
    """From the interaction records alone (no item is read)."""
    meta = store.read_meta(data_dir)
    part = store.read_records(store.open_interactions(data_dir, "train"))
    order = np.argsort(part["row"], kind="stable")
    pairs = np.stack([part["user_id"], part["item_id"]], 1)[order].astype(np.int32)
    return cls.of(pairs, int(meta["num_users"]), int(meta["num_items"]))


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
