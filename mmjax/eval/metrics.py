"""Full-ranking top-K retrieval and ranking metrics (MMRec definitions).

Top-K runs as one jitted function over fixed-size user batches (the last batch
is padded, so there is a single compile). The metrics are computed in NumPy
on the resulting (U, k_max) index matrix.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np


def pad_lists(lists, fill=-1, width=None):
  """Per-user int lists -> (U, width) int32, right-padded with `fill`.

  `width` defaults to the longest list (0 if all lists are empty).
  """
  if width is None:
    width = max((len(l) for l in lists), default=0)
  out = np.full((len(lists), width), fill, np.int32)
  for row, l in enumerate(lists):
    l = np.asarray(l, np.int32)[:width]
    out[row, :len(l)] = l
  return out


def batched_apply(fn, arrays, batch_size, multiple_of=1):
  """Applies fn to row batches of `arrays` (same leading size), concatenated.

  Every call sees exactly min(batch_size, n) rows, rounded up to a multiple
  of `multiple_of` (e.g. the devices a batch is sharded over); the last batch
  is padded with zeros and the padding trimmed, so a jitted fn compiles once.
  fn may return an array or a pytree of arrays; returns the same, in NumPy.
  """
  n = arrays[0].shape[0]
  bs = max(1, min(batch_size, n))
  bs = -(-bs // multiple_of) * multiple_of
  outs = []
  for start in range(0, n, bs):
    chunk = [np.asarray(a[start:start + bs]) for a in arrays]
    m = chunk[0].shape[0]
    if m < bs:
      chunk = [np.pad(c, [(0, bs - m)] + [(0, 0)] * (c.ndim - 1))
               for c in chunk]
    outs.append(jax.tree.map(lambda x: np.asarray(x)[:m], fn(*chunk)))
  return jax.tree.map(lambda *xs: np.concatenate(xs, axis=0), *outs)


def _mask_topk(scores, exclude, k):
  """Sets scores[u, exclude[u, :]] = -inf (-1 = padding), then top-k indices."""
  scores = scores.astype(jnp.float32)
  n = scores.shape[1]
  rows = jnp.arange(scores.shape[0])[:, None]
  # -1 would wrap to the last item; index n is out of bounds and is dropped.
  cols = jnp.where(exclude < 0, n, exclude)
  scores = scores.at[rows, cols].set(-jnp.inf, mode="drop")
  return jax.lax.top_k(scores, k)[1].astype(jnp.int32)


_topk_scores_batch = jax.jit(_mask_topk, static_argnums=2)


@functools.partial(jax.jit, static_argnums=3)
def _topk_emb_batch(user_emb, exclude, item_emb, k):
  scores = user_emb.astype(jnp.float32) @ item_emb.astype(jnp.float32).T
  return _mask_topk(scores, exclude, k)


def _check(n_items, exclude, n_users, k_max):
  if not 0 < k_max <= n_items:
    raise ValueError(f"k_max={k_max} must be in [1, {n_items}] (#items).")
  if exclude.shape[0] != n_users:
    raise ValueError(f"exclude has {exclude.shape[0]} rows, want {n_users}.")


def topk_from_embeddings(user_emb, item_emb, exclude, k_max, batch_size=1024):
  """(U, k_max) int32 top items by score user_emb @ item_emb.T, best first.

  Args:
    user_emb: (U, d); item_emb: (N, d).
    exclude: (U, E) int item ids never to recommend (e.g. train positives),
      padded with -1.
    k_max: number of items returned per user.
    batch_size: users scored per jitted call.
  A user with fewer than k_max allowed items gets excluded ones (score -inf)
  at the end of the row.
  """
  exclude = np.asarray(exclude, np.int32)
  _check(item_emb.shape[0], exclude, user_emb.shape[0], k_max)
  item_emb = jnp.asarray(item_emb)
  fn = lambda u, e: _topk_emb_batch(u, e, item_emb, k_max)
  return batched_apply(fn, [user_emb, exclude], batch_size)


def topk_from_scores(scores, exclude, k_max, batch_size=1024):
  """Same as `topk_from_embeddings` from a precomputed (U, N) score matrix."""
  exclude = np.asarray(exclude, np.int32)
  _check(scores.shape[1], exclude, scores.shape[0], k_max)
  fn = lambda s, e: _topk_scores_batch(s, e, k_max)
  return batched_apply(fn, [scores, exclude], batch_size)


def hit_matrix(topk, targets):
  """(U, k) bool: topk[u, r] is one of the targets of u (-1 = padding).

  Few targets per user (the usual case): one (U, k) comparison per target
  column. Many: a vectorised membership test on (user, item) int64 keys.
  """
  topk = np.asarray(topk, np.int64)
  targets = np.asarray(targets, np.int64)
  if targets.shape[1] <= 64:
    hits = np.zeros(topk.shape, bool)
    for col in targets.T:   # -1 padding never equals an item id.
      hits |= topk == col[:, None]
    return hits
  base = max(topk.max(initial=0), targets.max(initial=0)) + 1
  users = np.arange(topk.shape[0], dtype=np.int64)[:, None]
  target_keys = (users * base + targets)[targets >= 0]
  return np.isin(users * base + topk, target_keys)


def ranking_metrics(topk, targets, ks=(10, 20, 50)):
  """recall/ndcg/precision/map @K, averaged over users with >= 1 target.

  With hits h_r (rank r = 1..K) and T = #targets of the user (targets are
  assumed unique per user), following MMRec:
    recall@K    = sum_{r<=K} h_r / T
    precision@K = sum_{r<=K} h_r / K
    ndcg@K      = sum_{r<=K} h_r / log2(r + 1)
                  / sum_{r<=min(T, K)} 1 / log2(r + 1)
    map@K       = sum_{r<=K} h_r * (sum_{r'<=r} h_r' / r) / min(T, K)

  Args:
    topk: (U, k_max) int item indices, best first.
    targets: (U, T_max) int target items, padded with -1.
    ks: cutoffs, each <= k_max.
  Returns:
    dict "recall@K", "ndcg@K", "precision@K", "map@K" -> float (all 0. when
    no user has a target).
  """
  targets = np.asarray(targets)
  return _metrics_from_hits(hit_matrix(topk, targets),
                            np.sum(targets >= 0, axis=1), ks)


def metrics_from_ranks(ranks, num_targets, k_max, ks=(10, 20, 50)):
  """`ranking_metrics` from where each target ranks instead of the top k.

  Args:
    ranks: (U, P) int, the 0-based rank of each target in the user's top
      k_max; k_max (or more) for a miss or a padding column.
    num_targets: (U,) the number of targets of each user.
    k_max, ks: as in `ranking_metrics`.
  """
  if max(ks) > k_max:
    raise ValueError(f"cutoff {max(ks)} > k_max={k_max} of the ranks.")
  n_t = np.asarray(num_targets)
  has = n_t > 0
  n_t = n_t[has]
  # From the (users, targets) ranks directly, not a (users, k_max) hit matrix:
  # a user's hits are distinct ranks, so sorted, the j-th hit (0-based) has
  # j + 1 hits at or above it. Misses (k_max) sort last.
  ranks = np.sort(np.clip(np.asarray(ranks)[has], 0, k_max), axis=1).astype(np.float64)
  gain = 1. / np.log2(ranks + 2)
  precision_at_hit = np.arange(1, ranks.shape[1] + 1) / (ranks + 1)
  ideal = np.cumsum(1. / np.log2(np.arange(2, k_max + 2)))  # ideal[j - 1]: j hits.
  mean = lambda x: float(np.mean(x)) if x.size else 0.
  out = {}
  for k in ks:
    hit = ranks < k
    count = hit.sum(axis=1)
    capped = np.minimum(n_t, k)
    out[f"recall@{k}"] = mean(count / n_t)
    out[f"ndcg@{k}"] = mean(np.where(hit, gain, 0.).sum(axis=1) / ideal[capped - 1])
    out[f"precision@{k}"] = mean(count / k)
    out[f"map@{k}"] = mean(np.where(hit, precision_at_hit, 0.).sum(axis=1) / capped)
  return out


def _metrics_from_hits(hits, n_t, ks):
  k_max = hits.shape[1]
  if max(ks) > k_max:
    raise ValueError(f"cutoff {max(ks)} > k_max={k_max} of the top-k matrix.")
  has = n_t > 0
  hits = hits[has].astype(np.float64)
  n_t = n_t[has]
  ranks = np.arange(1, k_max + 1)
  discount = 1. / np.log2(ranks + 1)
  cum_hits = np.cumsum(hits, axis=1)
  dcg = np.cumsum(hits * discount, axis=1)
  ideal = np.cumsum(discount)  # ideal[j - 1] = IDCG with j hits.
  sum_prec = np.cumsum(hits * cum_hits / ranks, axis=1)
  mean = lambda x: float(np.mean(x)) if x.size else 0.
  out = {}
  for k in ks:
    capped = np.minimum(n_t, k)
    out[f"recall@{k}"] = mean(cum_hits[:, k - 1] / n_t)
    out[f"ndcg@{k}"] = mean(dcg[:, k - 1] / ideal[capped - 1])
    out[f"precision@{k}"] = mean(cum_hits[:, k - 1] / k)
    out[f"map@{k}"] = mean(sum_prec[:, k - 1] / capped)
  return out
