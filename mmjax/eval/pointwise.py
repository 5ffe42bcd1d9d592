"""Explicit-label metrics (loss.pointwise) on the valid and test rows.

Every labelled row of a split, impressions included, is predicted by the
recommender's pointwise head from the scoring vectors that the ranking
metrics use (`evaluate.scoring_vectors`): 0/1 clicks get AUC and log-loss,
ratings the RMSE. NumPy only; AUC counts ties as half (the Mann-Whitney U
with mid-ranks).
"""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mmjax.data.catalog import split_index

def auc(scores, labels) -> float:
  """Area under the ROC curve of `scores` for 0/1 `labels`: the chance that a
  random positive outscores a random negative, ties counting half; NaN
  where one class is missing."""
  scores, labels = np.asarray(scores, np.float64), np.asarray(labels) > 0
  pos, neg = int(labels.sum()), int((~labels).sum())
  if pos == 0 or neg == 0:
    return float("nan")
  order = np.argsort(scores, kind="stable")
  ranks = np.empty(len(scores), np.float64)
  ranks[order] = np.arange(1, len(scores) + 1)
  # Tied scores share the mean of their ranks.
  _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
  sums = np.bincount(inverse, weights=ranks)
  ranks = (sums / counts)[inverse]
  return float((ranks[labels].sum() - pos * (pos + 1) / 2) / (pos * neg))


def log_loss(logits, labels) -> float:
  """Mean binary cross-entropy (nats) of sigmoid(logits) against 0/1 labels."""
  x, y = np.asarray(logits, np.float64), np.asarray(labels, np.float64)
  # -log sigmoid(x) = log(1 + e^-x), finite for any logit.
  return float(np.mean(y * np.logaddexp(0, -x) + (1 - y) * np.logaddexp(0, x)))


def rmse(predictions, labels) -> float:
  """Root mean squared error."""
  d = np.asarray(predictions, np.float64) - np.asarray(labels, np.float64)
  return float(np.sqrt(np.mean(d * d)))


def label_metrics(predictions, labels, kind: str) -> dict:
  """{"auc", "log_loss"} for "binary" labels, {"rmse"} for "rating"."""
  if kind == "binary":
    return {"auc": auc(predictions, labels), "log_loss": log_loss(predictions, labels)}
  return {"rmse": rmse(predictions, labels)}


def evaluate_labels(graphdef, params, buffers, catalog, scoring_vectors,
                    splits=("valid", "test")) -> dict:
  """{"kind": "binary" | "rating", split: metrics, ...} of the pointwise head
  on each split's labelled rows (and "oracle": {split: {"auc"}} where the
  catalog has true preference logits); {} for an unlabelled catalog or a
  model without the head. `scoring_vectors`: (users (U, d), items (N, d))."""
  kind = catalog.label_kind
  head = nnx.merge(graphdef, params, buffers).rec.pointwise if kind else None
  if head is None:
    return {}
  users, items = (np.asarray(x) for x in scoring_vectors)
  out = {"kind": kind}
  for split in splits:
    pairs, labels = catalog.labelled_rows(split_index(split))
    if len(labels):
      pred = head(jnp.asarray(users[pairs[:, 0]]), jnp.asarray(items[pairs[:, 1]]))
      out[split] = label_metrics(np.asarray(jax.device_get(pred)), labels, kind)
      if kind == "binary" and catalog.oracle_scores is not None:
        # The true preference logits' AUC: the ceiling the model's is read against.
        oracle = catalog.oracle_scores[pairs[:, 0], pairs[:, 1]]
        out.setdefault("oracle", {})[split] = {"auc": auc(oracle, labels)}
  return out
