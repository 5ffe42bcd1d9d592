"""Valid and test metrics of feature-graph runs, MMRec's protocol: every item
ranked for every evaluated user, the user's train items masked.

`Evaluator` is `evaluators.RecommendationEvaluator` (built once from the data
and the mesh: the targets and the ranker's mask stay where they are between
evaluations) over the R runs one vmapped program trains together.
"""

from __future__ import annotations

import numpy as np

from mmjax.data.catalog import TRAIN
from mmjax.eval import ranking, recommendation
from mmjax.eval.evaluators import FEATURE_GRAPH_KS as KS
from mmjax.eval.evaluators import RecommendationEvaluator, nested


def make_ranker(data, targets: np.ndarray, mesh, how: str = "auto"):
  """Ranks `targets` (E, P) of the evaluated users (`data.eval_users()`),
  train items masked (`recommendation.make_ranker`)."""
  return recommendation.make_ranker(data.pairs[TRAIN], data.eval_users(), targets,
                                    data.num_items, max(KS), mesh, how)


def rank_runs(ranker, users, items) -> np.ndarray:
  """(R, E, P) ranks of the targets for each of R runs: `users` (R, E, dim)
  are the evaluated users' vectors, `items` (R, N, dim)."""
  if isinstance(ranker, ranking.HostRanker):   # Replicated: any copy will do.
    users, items = recommendation.host_array(users), recommendation.host_array(items)
  return np.stack([ranker(users[r], items[r]) for r in range(users.shape[0])])


class Evaluator:
  """(valid, test) metrics, one dict per run, from the runs' vectors."""

  def __init__(self, data, mesh, how: str = "auto"):
    self.evaluator = RecommendationEvaluator(data, mesh, how, KS)

  def __call__(self, users, items) -> tuple[list[dict], list[dict]]:
    """`users` (R, E, dim): the vectors of `data.eval_users()`, in order;
    `items` (R, N, dim)."""
    engine = self.evaluator.engine
    # Stacked runs go to the host (for the host ranker) once, not per run.
    users, items = engine.prepare(users), engine.prepare(items)
    valid, test = [], []
    for r in range(users.shape[0]):
      m = nested(self.evaluator.run(users[r], items[r], splits=("valid", "test")))
      valid.append(m["valid"])
      test.append(m["test"])
    return valid, test
