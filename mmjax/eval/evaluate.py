"""Full-ranking evaluation of a trained model, plus popularity (and, when the
data carries true preference scores, oracle) baselines.

Items and users are embedded by jitted, fixed-shape batched programs
(`embed.Embedder`); the metrics are `evaluators`': ranking masks each user's
train positives; retrieval ranks every item's aligned text against every
item's aligned image.
"""

import weakref

import jax
import numpy as np

from mmjax.data.catalog import TRAIN
from mmjax.data.features import TextTokenizer, normalize_images
from mmjax.eval.embed import Embedder
from mmjax.eval.evaluators import (KS, RecommendationEvaluator, ReferenceEvaluator,
                                   RetrievalEvaluator, nested)

# The last catalog's recommendation evaluator: `rank` is called again and
# again on one catalog (post-processing candidates), and builds its masks once.
_LAST: list = []


def recommendation_evaluator(catalog, mesh=None) -> RecommendationEvaluator:
  """The catalog's evaluator ("auto" ranking), reused while it is the last
  catalog asked for; `mesh` places a new one's mask (default device: none)."""
  if _LAST and _LAST[0]() is catalog:
    return _LAST[1]
  evaluator = RecommendationEvaluator(catalog, mesh, "auto", KS)
  _LAST[:] = [weakref.ref(catalog), evaluator]
  return evaluator


def baselines(catalog) -> dict:
  """Popularity test metrics, and the oracle's where the catalog carries
  true preference scores (`oracle_scores`); same masking as the model."""
  return nested(ReferenceEvaluator(catalog, KS).run())


def all_item_vectors(embedder: Embedder, params, buffers, catalog,
                     tokenizer: TextTokenizer) -> dict:
  """encode_items over the whole catalog: {"item", "z_text", "z_image", ...}."""
  tokens, mask = tokenizer.encode_all(catalog.item_text)
  return embedder.items(params, buffers, tokens, mask,
                        normalize_images(catalog.item_images))


def evaluate(graphdef, params, buffers, catalog, tokenizer: TextTokenizer, mesh,
             *, history_len: int, batch_size: int,
             embedder: Embedder | None = None) -> dict:
  """valid/test ranking metrics and text<->image retrieval for one model;
  pass the run's `embedder` to reuse its compiled functions.

  Besides the metrics, the result carries arrays (not JSON) for a
  post-processing step to start from: "item_vectors" (`all_item_vectors`)
  and "scoring_vectors" ((users, items) whose dot products are the scores).
  """
  embedder = embedder or Embedder(graphdef, mesh, batch_size)
  items = all_item_vectors(embedder, params, buffers, catalog, tokenizer)
  vectors = scoring_vectors(embedder, params, buffers, catalog, items["item"],
                            history_len)
  recommendation_evaluator(catalog, mesh)   # Its mask placed on the mesh.
  return dict(rank(*vectors, catalog), item_vectors=items, scoring_vectors=vectors,
              **nested(RetrievalEvaluator().run(items["z_text"], items["z_image"])))


def scoring_vectors(embedder: Embedder, params, buffers, catalog, item_vectors,
                    history_len: int) -> tuple[np.ndarray, np.ndarray]:
  """(users, items) whose dot products are the model's scores, the users
  pooled from their train histories."""
  histories = catalog.user_histories(TRAIN, max_len=history_len)
  users = embedder.users(params, buffers, histories, item_vectors)
  u, v = jax.device_get(embedder.scoring(params, buffers, users, item_vectors))
  return np.asarray(u), np.asarray(v)


def rank(users, items, catalog) -> dict:
  """valid/test full-ranking metrics of users . items, train items masked;
  `users` (U, dim) are every user's vectors."""
  evaluator = recommendation_evaluator(catalog)
  return evaluator.metrics(np.asarray(users)[evaluator.users], items, ("valid", "test"))
