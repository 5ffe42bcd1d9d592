"""Valid and test metrics of feature-graph runs, MMRec's protocol: every item
ranked for every evaluated user, the user's train items masked.

`Evaluator` is built once from the data and the mesh (the targets and the
ranker's mask stay where they are between evaluations) and is called at
every evaluation with the runs' user and item vectors.
"""

from __future__ import annotations

import jax
import numpy as np

from mmjax import mesh as mesh_lib
from mmjax.data.catalog import TEST, TRAIN, VALID
from mmjax.errors import MmjaxError
from mmjax.eval import ranking
from mmjax.eval.metrics import metrics_from_ranks, pad_lists

KS = (5, 10, 20, 50)


def make_ranker(data, targets: np.ndarray, mesh, how: str = "auto"):
  """Ranks `targets` (E, P) of the evaluated users (`data.eval_users()`),
  train items masked: NumPy blocks (`how="host"`; "auto" picks them on CPU,
  where they beat XLA:CPU's TopK) or a jitted matmul + top_k ("device")."""
  users = data.eval_users()
  train = np.unique(data.pairs[TRAIN], axis=0)    # Sorted by user, then item.
  if how == "host" or (how == "auto" and jax.default_backend() == "cpu"):
    train = train[np.isin(train[:, 0], users)]
    row = np.searchsorted(users, train[:, 0])
    indptr = np.concatenate([[0], np.cumsum(np.bincount(row, minlength=len(users)))])
    return ranking.HostRanker(indptr, train[:, 1], targets, max(KS))
  exclude = np.zeros((data.num_users, data.num_items), bool)
  exclude[train[:, 0], train[:, 1]] = True
  return ranking.DeviceRanker(
      jax.device_put(exclude[users], mesh_lib.replicated(mesh)), targets, max(KS))


def rank_runs(ranker, users, items) -> np.ndarray:
  """(R, E, P) ranks of the targets for each of R runs: `users` (R, E, dim)
  are the evaluated users' vectors, `items` (R, N, dim)."""
  if isinstance(ranker, ranking.HostRanker):   # Replicated: any copy will do.
    users, items = (np.asarray(x.addressable_data(0)) for x in (users, items))
  return np.stack([ranker(users[r], items[r]) for r in range(users.shape[0])])


class Evaluator:
  """(valid, test) metrics, one dict per run, from the runs' vectors."""

  def __init__(self, data, mesh, how: str = "auto"):
    if data.num_items < max(KS):
      raise MmjaxError(f"the data has {data.num_items} items; the metrics rank "
                       f"the top {max(KS)}, so at least that many")
    users = data.eval_users()
    self.targets = {}
    for split in (VALID, TEST):
      items = data.user_items(split)   # One pass over the split, then per user.
      self.targets[split] = pad_lists([items[u] for u in users])
    self.ranker = make_ranker(
        data, np.concatenate([self.targets[VALID], self.targets[TEST]], 1), mesh, how)

  def __call__(self, users, items) -> tuple[list[dict], list[dict]]:
    """`users` (R, E, dim): the vectors of `data.eval_users()`, in order;
    `items` (R, N, dim)."""
    ranks = rank_runs(self.ranker, users, items)
    width = self.targets[VALID].shape[1]   # The ranker's columns: valid, then test.
    out = []
    for split, cols in ((VALID, slice(0, width)), (TEST, slice(width, None))):
      n_t = np.sum(self.targets[split] >= 0, axis=1)
      out.append([metrics_from_ranks(r[:, cols], n_t, max(KS), KS) for r in ranks])
    return out[0], out[1]
