"""Full-ranking evaluation of a trained model, plus popularity (and, when the
data carries true preference scores, oracle) baselines.

Items and users are embedded by jitted, fixed-shape batched programs
(`embed.Embedder`); ranking masks each user's train positives; retrieval
ranks every item's aligned text against every item's aligned image.
"""

import jax
import numpy as np

from mmjax.data.catalog import TEST, TRAIN, VALID
from mmjax.data.features import TextTokenizer, normalize_images
from mmjax.eval.embed import Embedder
from mmjax.eval.metrics import (pad_lists, ranking_metrics, topk_from_embeddings,
                                topk_from_scores)
from mmjax.eval.retrieval import text_image_retrieval

KS = (10, 20, 50)


def baselines(catalog) -> dict:
  """Popularity test metrics, and the oracle's where the catalog carries
  true preference scores (`oracle_scores`); same masking as the model."""
  exclude = pad_lists(catalog.user_histories(TRAIN))
  test = pad_lists(catalog.user_histories(TEST))
  counts = catalog.item_popularity().astype(np.float32)
  out = {}
  pop_scores = np.broadcast_to(counts, (catalog.num_users, catalog.num_items))
  out["popularity"] = ranking_metrics(
      topk_from_scores(pop_scores, exclude, max(KS)), test, KS)
  if catalog.oracle_scores is not None:
    out["oracle"] = ranking_metrics(
        topk_from_scores(catalog.oracle_scores, exclude, max(KS)), test, KS)
  return out


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
  return dict(rank(*vectors, catalog), item_vectors=items, scoring_vectors=vectors,
              retrieval=text_image_retrieval(items["z_text"], items["z_image"]))


def scoring_vectors(embedder: Embedder, params, buffers, catalog, item_vectors,
                    history_len: int) -> tuple[np.ndarray, np.ndarray]:
  """(users, items) whose dot products are the model's scores, the users
  pooled from their train histories."""
  histories = catalog.user_histories(TRAIN, max_len=history_len)
  users = embedder.users(params, buffers, histories, item_vectors)
  u, v = jax.device_get(embedder.scoring(params, buffers, users, item_vectors))
  return np.asarray(u), np.asarray(v)


def rank(users, items, catalog) -> dict:
  """valid/test full-ranking metrics of users . items, train items masked."""
  exclude = pad_lists(catalog.user_histories(TRAIN))
  topk = np.asarray(topk_from_embeddings(users, items, exclude, max(KS)))
  return dict(
      valid=ranking_metrics(topk, pad_lists(catalog.user_histories(VALID)), KS),
      test=ranking_metrics(topk, pad_lists(catalog.user_histories(TEST)), KS))
