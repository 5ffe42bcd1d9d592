"""Where each held-out item ranks in a user's full ranking, train items masked.

The ranking metrics only need the rank of every target item in the user's
top k (or "not in the top k"), so that is what these functions return: a
(U, P) int32 matrix, k for a miss or a padding target (-1).

The rank follows `lax.top_k`'s order: higher score first, equal scores by
lower item index. A masked item (a train positive, score -inf) is never a hit.

Two exact implementations:
- `ranks_from_top_k`: inside a jitted program, from `lax.top_k` indices. This
  is the path on GPU and TPU.
- `HostRanker`: for XLA:CPU, whose TopK is a single-threaded partial sort
  over indirect indices (and a full sort is slower still). Per block of
  users that fits in cache, NumPy scores the block (BLAS), masks it and
  selects the k largest values with `np.partition` (SIMD), and a target's
  rank is the number of those values above its score. Blocks run on a
  thread pool, so every core works (docs/experiments.md has the figures).
"""

from __future__ import annotations

import functools
import os
from concurrent.futures import ThreadPoolExecutor

import jax
import jax.numpy as jnp
import numpy as np
import threadpoolctl


def ranks_from_top_k(scores: jax.Array, targets: jax.Array, k: int) -> jax.Array:
  """(B, P) ranks of `targets` in the top k of `scores` (B, N), masked = -inf."""
  top = jax.lax.top_k(scores, k)[1]
  safe = jnp.maximum(targets, 0)
  finite = jnp.isfinite(jnp.take_along_axis(scores, safe, 1))
  match = top[:, None, :] == safe[:, :, None]            # (B, P, k)
  found = jnp.any(match, -1) & finite & (targets >= 0)
  return jnp.where(found, jnp.argmax(match, -1), k).astype(jnp.int32)


def _ranks_from_values(top: np.ndarray, target_scores: np.ndarray,
                       targets: np.ndarray, k: int):
  """Ranks from the k largest values of each row (any order), and the
  (row, column) positions whose rank needs the row itself: a tie with
  another item inside the top k, or a score equal to the k-th largest."""
  kth = top.min(1, keepdims=True)
  above = target_scores[:, :, None]
  greater = np.count_nonzero(top[:, None, :] > above, axis=-1)
  equal = np.count_nonzero(top[:, None, :] == above, axis=-1)
  hit = (targets >= 0) & np.isfinite(target_scores) & (target_scores >= kth)
  ranks = np.where(hit, greater, k).astype(np.int32)
  return ranks, hit & ((equal > 1) | (target_scores == kth))


def _block_size(num_items: int, max_scores: int, most: int) -> int:
  """Users per block so that a block holds at most `max_scores` scores."""
  return max(1, min(most, max_scores // max(1, num_items)))


@functools.cache
def _blas_controller() -> threadpoolctl.ThreadpoolController:
  return threadpoolctl.ThreadpoolController()   # Finds the BLAS once.


def _exact_rank(row: np.ndarray, item: int, k: int) -> int:
  s = row[item]
  return min(k, int(np.count_nonzero(row > s) + np.count_nonzero(row[:item] == s)))


class HostRanker:
  """Ranks of fixed target items for fixed users, from NumPy embeddings.

  Args:
    exclude_indptr, exclude_items: CSR lists of each user's masked items
      (row u: exclude_items[exclude_indptr[u]:exclude_indptr[u + 1]]).
    targets: (U, P) int item ids, padded with -1.
    k: the longest cutoff.
    block: users per block; a block of scores should fit in the cache
      (default: 256, fewer for catalogs over 16k items, ~16 MB a block).
    threads: worker threads (default: the CPUs this process may use).
  """

  def __init__(self, exclude_indptr, exclude_items, targets, k: int,
               block: int | None = None, threads: int | None = None):
    self.targets = np.asarray(targets, np.int64)
    self.indptr = np.asarray(exclude_indptr, np.int64)
    self.items = np.asarray(exclude_items, np.int64)
    if self.indptr.shape != (len(self.targets) + 1,):
      raise ValueError(f"exclude_indptr has {len(self.indptr)} entries, want "
                       f"{len(self.targets) + 1} (users + 1)")
    self.k, self.block = k, block
    if threads is None:
      threads = (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                 else os.cpu_count())
    self.threads = max(1, threads or 1)
    self._pool = ThreadPoolExecutor(self.threads)

  def _scores(self, users, items_t, start, stop):
    out = np.matmul(users[start:stop], items_t)
    lo, hi = self.indptr[start], self.indptr[stop]
    rows = np.repeat(np.arange(stop - start), np.diff(self.indptr[start:stop + 1]))
    out[rows, self.items[lo:hi]] = -np.inf
    return out

  def _block(self, users, items_t, start, block):
    stop = min(start + block, len(self.targets))
    scores = self._scores(users, items_t, start, stop)
    targets = self.targets[start:stop]
    target_scores = np.take_along_axis(scores, np.maximum(targets, 0), 1)
    n = scores.shape[1]
    scores.partition(n - self.k, axis=1)   # In place: the k largest last.
    ranks, recount = _ranks_from_values(scores[:, n - self.k:], target_scores,
                                        targets, self.k)
    if recount.any():   # Rare (exact ties): score the block again, unchanged.
      scores = self._scores(users, items_t, start, stop)
      for row, col in zip(*np.nonzero(recount)):
        ranks[row, col] = _exact_rank(scores[row], targets[row, col], self.k)
    return ranks

  def __call__(self, users, items) -> np.ndarray:
    """(U, P) ranks for user vectors (U, d) against item vectors (N, d)."""
    users = np.asarray(users, np.float32)
    items = np.asarray(items, np.float32)
    if users.shape[0] != len(self.targets):
      raise ValueError(f"{users.shape[0]} user vectors for {len(self.targets)} users")
    if not 0 < self.k <= items.shape[0]:
      raise ValueError(f"k={self.k} must be in [1, {items.shape[0]}] (#items)")
    items_t = np.ascontiguousarray(items.T)
    block = self.block or _block_size(items.shape[0], 1 << 22, 256)
    starts = range(0, len(self.targets), block)
    # One BLAS thread per worker: the workers already use every core, and
    # a fixed thread count keeps each block's scores bitwise reproducible.
    with _blas_controller().limit(limits=1, user_api="blas"):
      parts = list(self._pool.map(lambda a: self._block(users, items_t, a, block), starts))
    if not parts:
      return np.zeros((0, self.targets.shape[1]), np.int32)
    return np.concatenate(parts)


class DeviceRanker:
  """`HostRanker`'s contract as one jitted program per block of users:
  scores, mask and `lax.top_k` on the device (GPU, TPU).

  Args:
    exclude: (U, N) bool device array, True = masked.
    targets: (U, P) int item ids, padded with -1.
    k: the longest cutoff.
    block: users per call; bounds the (block, N) score matrix (default:
      4096, fewer for catalogs over 64k items, ~1 GB of scores a call).
  """

  def __init__(self, exclude, targets, k: int, block: int | None = None):
    self.exclude = exclude
    self.targets = jnp.asarray(targets, jnp.int32)
    self.k, self.block = k, block

    def ranks(users, items, exclude, targets, start, size):
      rows = lambda a: jax.lax.dynamic_slice_in_dim(a, start, size)
      scores = jnp.where(rows(exclude), -jnp.inf, rows(users) @ items.T)
      return ranks_from_top_k(scores, rows(targets), k)

    # The start is traced and every block has the same size (the last one
    # starts early and keeps only its own rows), so there is one compile.
    self._ranks = jax.jit(ranks, static_argnums=5)

  def __call__(self, users, items) -> np.ndarray:
    num_users = self.targets.shape[0]
    if num_users == 0:
      return np.zeros((0, self.targets.shape[1]), np.int32)
    block = self.block or _block_size(items.shape[0], 1 << 28, 4096)
    size = min(block, num_users)
    parts = []
    for start in range(0, num_users, size):
      first = min(start, num_users - size)
      got = np.asarray(self._ranks(users, items, self.exclude, self.targets, first, size))
      parts.append(got[start - first:])
    return np.concatenate(parts)
