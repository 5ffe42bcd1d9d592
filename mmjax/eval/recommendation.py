"""The one full-ranking engine of both tasks: every item ranked for every
evaluated user, the user's train items masked, metrics from the targets' ranks.

`Ranking` is built once from the data (the masks and the padded targets are
made, and placed, then) and is called at every evaluation with the user and
item vectors; the exact rankers of `ranking.py` do the work: NumPy blocks on
the host (`how="host"`, and "auto" on the CPU backend, where they beat
XLA:CPU's TopK) or a jitted matmul + top_k on the device ("device").

A masked target (an item in both a user's train and held-out splits) is never
a hit, and ties rank by lower item index, as `lax.top_k` orders them.
"""

from __future__ import annotations

import jax
import numpy as np

from mmjax import mesh as mesh_lib
from mmjax.data.catalog import SPLIT_NAMES, TEST, TRAIN, VALID
from mmjax.errors import MmjaxError
from mmjax.eval import ranking
from mmjax.eval.metrics import metrics_from_ranks

HOW = ("auto", "host", "device")


def split_pairs(data, split: int) -> np.ndarray:
  """(M, 2) (user, item) rows of one split of a `Catalog` or an `MMRecData`."""
  if hasattr(data, "split_pairs"):
    return data.split_pairs(split)
  return data.pairs[split]


def eval_users(data) -> np.ndarray:
  """The users with a valid or a test item, ascending: a user without either
  counts in no metric, so is never ranked."""
  return np.unique(np.concatenate([split_pairs(data, VALID)[:, 0],
                                   split_pairs(data, TEST)[:, 0]])).astype(np.int64)


def padded_targets(pairs: np.ndarray, users: np.ndarray) -> np.ndarray:
  """(len(users), P) int32 items of each of `users` (ascending) in `pairs`,
  in row order, right-padded with -1."""
  pairs = np.asarray(pairs, np.int64).reshape(-1, 2)
  pairs = pairs[np.isin(pairs[:, 0], users)]
  row = np.searchsorted(users, pairs[:, 0])
  order = np.argsort(row, kind="stable")   # Stable: each user's row order.
  row, items = row[order], pairs[order, 1]
  counts = np.bincount(row, minlength=len(users))
  out = np.full((len(users), counts.max(initial=0)), -1, np.int32)
  starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
  out[row, np.arange(len(row)) - starts[row]] = items
  return out


def on_host(how: str) -> bool:
  if how not in HOW:
    raise MmjaxError(f"ranking how={how!r}: use one of {HOW}")
  return how == "host" or (how == "auto" and jax.default_backend() == "cpu")


def make_ranker(train_pairs, users, targets, num_items: int, k: int,
                mesh=None, how: str = "auto"):
  """The exact ranker of `targets` (len(users), P) for `users` (ascending),
  their `train_pairs` items masked: a `ranking.HostRanker` or, with
  `how="device"` (or "auto" off the CPU), a `ranking.DeviceRanker` whose
  mask is placed replicated on `mesh` (the default device without one)."""
  users = np.asarray(users, np.int64)
  if np.any(np.diff(users) <= 0):
    raise ValueError("users must be ascending and distinct")
  train = np.unique(np.asarray(train_pairs, np.int64).reshape(-1, 2), axis=0)
  train = train[np.isin(train[:, 0], users)]   # Sorted by user, then item.
  row = np.searchsorted(users, train[:, 0])
  if on_host(how):
    indptr = np.concatenate([[0], np.cumsum(np.bincount(row, minlength=len(users)))])
    return ranking.HostRanker(indptr, train[:, 1], targets, k)
  exclude = np.zeros((len(users), num_items), bool)
  exclude[row, train[:, 1]] = True
  return ranking.DeviceRanker(jax.device_put(exclude, _replicated(mesh)), targets, k)


def _replicated(mesh):
  return mesh_lib.replicated(mesh) if mesh is not None else None


def host_array(x) -> np.ndarray:
  """A NumPy copy of `x`; a replicated jax.Array reads one local copy."""
  if isinstance(x, jax.Array):
    return np.asarray(x.addressable_data(0))
  return np.asarray(x)


class Ranking:
  """Full-ranking metrics of the valid and test splits of `data` (a
  `Catalog` or an `MMRecData`) for its evaluated users (`.users`).

  Args:
    data: exposes the train/valid/test pairs, num_users and num_items.
    ks: the cutoffs of the metrics; the rankers keep the top max(ks).
    mesh: where the device ranker's mask lives (replicated).
    how: "auto", "host" or "device" (module docstring).
  """

  def __init__(self, data, ks, mesh=None, how: str = "auto"):
    self.ks, self.k = tuple(ks), max(ks)
    if data.num_items < self.k:
      raise MmjaxError(f"the data has {data.num_items} items; the metrics rank "
                       f"the top {self.k}, so at least that many")
    self.users = eval_users(data)
    self.targets, self.columns, start = {}, {}, 0
    for split in (VALID, TEST):
      name = SPLIT_NAMES[split]
      self.targets[name] = padded_targets(split_pairs(data, split), self.users)
      width = self.targets[name].shape[1]
      self.columns[name], start = slice(start, start + width), start + width
    self.num_targets = {s: np.sum(t >= 0, axis=1) for s, t in self.targets.items()}
    self.ranker = make_ranker(
        split_pairs(data, TRAIN), self.users, np.concatenate(list(self.targets.values()), 1),
        data.num_items, self.k, mesh, how)
    self.on_host = isinstance(self.ranker, ranking.HostRanker)
    self._place = _replicated(mesh)

  def prepare(self, x):
    """`x` as the ranker takes it: NumPy for the host ranker, a device
    array for the device one; so stacked runs, or a host array the device
    ranker takes in blocks, move once, not per run or per block."""
    if self.on_host:
      return host_array(x)
    return x if isinstance(x, jax.Array) else jax.device_put(x, self._place)

  def ranks(self, users, items) -> np.ndarray:
    """(U_eval, P) ranks of every target, valid columns then test columns;
    `users` (U_eval, dim) are the vectors of `.users`, in order."""
    return self.ranker(self.prepare(users), self.prepare(items))

  def metrics_from_ranks(self, ranks, splits=("valid", "test")) -> dict:
    """{split: {"recall@K": ...}} from `ranks`."""
    out = {}
    for split in splits:
      if split not in self.targets:
        raise MmjaxError(f"split {split!r}: the ranking evaluates "
                         f"{tuple(self.targets)}")
      out[split] = metrics_from_ranks(ranks[:, self.columns[split]],
                                      self.num_targets[split], self.k, self.ks)
    return out

  def metrics(self, users, items, splits=("valid", "test")) -> dict:
    """{split: {"recall@K", "ndcg@K", "precision@K", "map@K"}} of users . items."""
    return self.metrics_from_ranks(self.ranks(users, items), splits)
