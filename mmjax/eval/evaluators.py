"""Evaluators, after big_vision's `evaluators/common.py`: `from_config` builds
the ones that apply to the data, once; each one's `run(...)` yields
(name, value) pairs, "group/metric", which the caller logs as they come or
folds into summary.json's nested shape with `nested`.

  recommendation  full ranking of every item for the evaluated users
                  (`recommendation.Ranking`): "valid/recall@20", ...
  retrieval       text <-> image retrieval of every item: "retrieval/t2i_r@1"
  reference       the popularity ranking and, where the catalog carries true
                  preference scores, the oracle's: "popularity/recall@20"
  zero_shot       where config.eval.zero_shot.labels_file names the items'
                  classes: zero-shot classification of their images
                  (`zero_shot.ZeroShotEvaluator`): "zero_shot/top1"
"""

from __future__ import annotations

from typing import Iterable, Iterator

import numpy as np

from mmjax.data.catalog import TEST, TRAIN, Catalog
from mmjax.eval import recommendation
from mmjax.eval.metrics import ranking_metrics, topk_from_scores
from mmjax.eval.retrieval import text_image_retrieval
from mmjax.eval import zero_shot

KS = (10, 20, 50)                  # The end-to-end model's cutoffs.
FEATURE_GRAPH_KS = (5, 10, 20, 50)  # MMRec's.

Pairs = Iterator[tuple[str, float]]


def _pairs(group: str, metrics: dict) -> Pairs:
  for name, value in metrics.items():
    yield f"{group}/{name}", value


def nested(pairs: Iterable[tuple[str, float]]) -> dict:
  """("valid/recall@20", v), ... -> {"valid": {"recall@20": v}, ...}, the
  shape summary.json keeps."""
  out = {}
  for name, value in pairs:
    group, slash, metric = name.partition("/")
    if not slash:
      raise ValueError(f"metric name {name!r} has no group (want 'group/metric')")
    out.setdefault(group, {})[metric] = value
  return out


class RecommendationEvaluator:
  """Full-ranking recommendation metrics, built once from `data` (a `Catalog`
  or an `MMRecData`): the train masks and the valid/test targets are made
  (and placed on the mesh) here, so each `run` only ranks.

  `.users` are the user indices it ranks (those with a valid or a test
  item, ascending); `run`'s `users` are their vectors, in that order.
  """

  def __init__(self, data, mesh=None, how: str = "auto", ks=KS):
    self.engine = recommendation.Ranking(data, ks, mesh, how)
    self.users = self.engine.users

  def metrics(self, users, items, splits=("valid",)) -> dict:
    """{split: {"recall@K", "ndcg@K", "precision@K", "map@K"}}; one ranking
    serves every split asked."""
    return self.engine.metrics(users, items, splits)

  def run(self, users, items, splits=("valid",)) -> Pairs:
    """("valid/recall@20", value), ... for each split asked; `users`
    (U_eval, dim) are the vectors of `.users`, `items` (N, dim)."""
    for split, metrics in self.metrics(users, items, splits).items():
      yield from _pairs(split, metrics)


class RetrievalEvaluator:
  """Text <-> image retrieval over the catalog's items (item i's text
  matches item i's image), R@K both ways."""

  def __init__(self, ks=(1, 5, 10), batch_size: int = 1024):
    self.ks, self.batch_size = tuple(ks), batch_size

  def run(self, z_text, z_image) -> Pairs:
    """("retrieval/t2i_r@1", value), ... and "i2t_r@K"."""
    yield from _pairs("retrieval", text_image_retrieval(
        z_text, z_image, self.ks, self.batch_size))


class ReferenceEvaluator:
  """Test metrics of the rankings a model should beat, with the model's
  masking: popularity (train counts) and, where the catalog carries true
  preference scores (`oracle_scores`, synthetic data), the oracle.

  Neither depends on the model, so the first `run` computes them and later
  ones yield the same values.
  """

  def __init__(self, catalog, ks=KS):
    self.catalog, self.ks = catalog, tuple(ks)
    self._metrics = None

  def _compute(self) -> dict:
    c = self.catalog
    # Users without a test item count in no metric: leave them out.
    users = np.unique(c.split_pairs(TEST)[:, 0])
    exclude = recommendation.padded_targets(c.split_pairs(TRAIN), users)
    test = recommendation.padded_targets(c.split_pairs(TEST), users)
    # Full (users, items) score matrices, not vectors: today's top-k path.
    scores = {"popularity": np.broadcast_to(
        c.item_popularity().astype(np.float32), (len(users), c.num_items))}
    if c.oracle_scores is not None:
      scores["oracle"] = c.oracle_scores[users]
    return {name: ranking_metrics(topk_from_scores(s, exclude, max(self.ks)),
                                  test, self.ks) for name, s in scores.items()}

  def run(self) -> Pairs:
    """("popularity/recall@20", value), ... then "oracle/..." if any."""
    if self._metrics is None:
      self._metrics = self._compute()
    for name, metrics in self._metrics.items():
      yield from _pairs(name, metrics)


def has_texts_and_images(data) -> bool:
  return (isinstance(data, Catalog) and len(data.item_text) > 0
          and np.size(data.item_images) > 0)


def from_config(config, data, mesh=None) -> dict:
  """The evaluators that apply to `data`, by name.

  A `Catalog` (end-to-end model) gets "recommendation", "retrieval" (when
  it has item texts and images) and "reference" (popularity; the oracle
  too where it has `oracle_scores`), ranking as config.train.eval_ranking
  says. Any other data (`MMRecData`: the feature graph, whose items are
  fixed features) gets "recommendation" alone, at MMRec's cutoffs, ranking
  as config.train.eval_ranking says. "zero_shot" is added where the config
  names a labels file (its labels are read here, so a bad file fails early).
  """
  if not isinstance(data, Catalog):
    return {"recommendation": RecommendationEvaluator(
        data, mesh, config.train.eval_ranking, FEATURE_GRAPH_KS)}
  out = {"recommendation": RecommendationEvaluator(
      data, mesh, config.train.eval_ranking, KS)}
  if has_texts_and_images(data):
    out["retrieval"] = RetrievalEvaluator()
  out["reference"] = ReferenceEvaluator(data, KS)
  zs = zero_shot.from_config(config, data)
  if zs is not None:
    out["zero_shot"] = zs
  return out
