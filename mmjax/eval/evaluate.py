"""Full-ranking evaluation of a trained model, plus oracle/popularity baselines.

Items and users are encoded by jitted, fixed-shape batched programs; ranking
masks each user's train positives; retrieval ranks every item's aligned text
against every item's aligned image.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mmjax.data.catalog import TEST, TRAIN, VALID
from mmjax.data.features import TextTokenizer, normalize_images
from mmjax.eval.metrics import (batched_apply, pad_lists, ranking_metrics,
                                topk_from_embeddings, topk_from_scores)
from mmjax.eval import item_id_table, user_refit
from mmjax.eval.item_id_table import TableTransform
from mmjax.eval.retrieval import text_image_retrieval
from mmjax.train import mesh as mesh_lib

KS = (10, 20, 50)


class Encoder:
  """Jitted item/user encoders over a (graphdef, params, rest) snapshot."""

  def __init__(self, graphdef, mesh, batch_size: int):
    self.batch, self.devices = batch_size, mesh.shape["data"]
    data, rep = mesh_lib.batch_sharding(mesh), mesh_lib.replicated(mesh)

    @functools.partial(jax.jit, out_shardings=rep)
    def items(params, rest, tokens, mask, images, ids):
      model = nnx.merge(graphdef, params, rest)
      return model.encode_items(tokens, mask, images, ids)

    @functools.partial(jax.jit, out_shardings=rep)
    def item_vectors(params, rest, content, ids):
      return nnx.merge(graphdef, params, rest).rec.item_vectors(content, ids)

    @functools.partial(jax.jit, out_shardings=rep)
    def users(params, rest, user_ids, history, item_table):
      model = nnx.merge(graphdef, params, rest)
      return model.encode_users(user_ids, history, item_table)

    @functools.partial(jax.jit, out_shardings=rep)
    def scoring(params, rest, users, items):
      model = nnx.merge(graphdef, params, rest)
      ids = jnp.arange(items.shape[0])
      return model.rec.scoring_vectors(users, items, ids)

    @functools.partial(jax.jit, out_shardings=rep)
    def texts(params, rest, tokens, mask):
      return nnx.merge(graphdef, params, rest).encode_text(tokens, mask)

    @functools.partial(jax.jit, out_shardings=rep)
    def images(params, rest, images):
      return nnx.merge(graphdef, params, rest).encode_images(images)

    self.scoring = scoring
    self._items, self._users, self._data = items, users, data
    self._texts, self._images, self._item_vectors = texts, images, item_vectors

  def _apply(self, jitted, params, rest, arrays, *replicated_args):
    """jitted over batches of `arrays`, each batch sharded on `data`."""
    fn = lambda *xs: jitted(params, rest, *(jax.device_put(x, self._data) for x in xs),
                            *replicated_args)
    return batched_apply(fn, arrays, self.batch, self.devices)

  def items(self, params, rest, tokens, mask, images):
    ids = np.arange(len(tokens), dtype=np.int32)
    return self._apply(self._items, params, rest, (tokens, mask, images, ids))

  def item_vectors(self, params, rest, content):
    """Item vectors of already encoded content (N, dim), e.g. to re-weigh
    the item-ID table without running the encoders again."""
    ids = np.arange(len(content), dtype=np.int32)
    return self._apply(self._item_vectors, params, rest, (np.asarray(content), ids))

  def users(self, params, rest, histories: np.ndarray, item_table: np.ndarray):
    ids = np.arange(len(histories), dtype=np.int32)
    return self._apply(self._users, params, rest, (ids, histories), item_table)

  def texts(self, params, rest, tokens, mask):
    """Aligned text vectors of tokenized texts (e.g. queries)."""
    return self._apply(self._texts, params, rest, (tokens, mask))

  def images(self, params, rest, images):
    """Aligned image vectors of normalized images."""
    return self._apply(self._images, params, rest, (images,))


def baselines(catalog) -> dict:
  """Oracle (true preference) and popularity test metrics, same masking."""
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


def all_item_vectors(encoder: Encoder, params, rest, catalog,
                     tokenizer: TextTokenizer) -> dict:
  """encode_items over the whole catalog: {"item", "z_text", "z_image", ...}."""
  tokens, mask = tokenizer.encode_all(catalog.item_text)
  return encoder.items(params, rest, tokens, mask, normalize_images(catalog.item_images))


def evaluate(graphdef, params, rest, catalog, tokenizer: TextTokenizer, mesh,
             *, history_len: int, batch_size: int, encoder: Encoder | None = None) -> dict:
  """valid/test ranking metrics and text<->image retrieval for one model;
  pass the run's `encoder` to reuse its compiled functions. The result's
  "scoring_vectors" (numpy (users, items), not JSON) feed
  `evaluate_user_refits`."""
  encoder = encoder or Encoder(graphdef, mesh, batch_size)
  items = all_item_vectors(encoder, params, rest, catalog, tokenizer)
  vectors = _scoring_vectors(encoder, params, rest, catalog, items["item"], history_len)
  return dict(rank(*vectors, catalog), scoring_vectors=vectors,
              retrieval=text_image_retrieval(items["z_text"], items["z_image"]))


def _scoring_vectors(encoder: Encoder, params, rest, catalog, item_vectors,
                     history_len: int) -> tuple[np.ndarray, np.ndarray]:
  """(users, items) whose dot products are the model's scores, the users
  pooled from their train histories."""
  users = encoder.users(params, rest, catalog.user_histories(TRAIN, max_len=history_len),
                        item_vectors)
  u, v = jax.device_get(encoder.scoring(params, rest, users, item_vectors))
  return np.asarray(u), np.asarray(v)


def rank(users, items, catalog) -> dict:
  """valid/test full-ranking metrics of users . items, train items masked."""
  exclude = pad_lists(catalog.user_histories(TRAIN))
  topk = np.asarray(topk_from_embeddings(users, items, exclude, max(KS)))
  return dict(
      valid=ranking_metrics(topk, pad_lists(catalog.user_histories(VALID)), KS),
      test=ranking_metrics(topk, pad_lists(catalog.user_histories(TEST)), KS))


def evaluate_item_id_tables(graphdef, params, rest, catalog, tokenizer, mesh,
                            transforms, *, history_len: int, batch_size: int,
                            encoder: Encoder | None = None
                            ) -> tuple[TableTransform, dict, dict]:
  """`evaluate` with each of `transforms` (item_id_table.candidates) applied
  to the item-ID table; the first of them wins ties.

  The choice is made on valid recall@20, so test stays untouched by it.
  Returns (the chosen transform, its `evaluate` result, {"valid"/"test":
  {label: recall@20}} for every transform tried).
  """
  encoder = encoder or Encoder(graphdef, mesh, batch_size)
  # The encoders do not see the ID table: encode the catalog once and only
  # re-add the transformed IDs per candidate.
  items = all_item_vectors(encoder, params, rest, catalog, tokenizer)
  retrieval = text_image_retrieval(items["z_text"], items["z_image"])
  table = item_id_table.id_table(params)
  labels = {k: item_id_table.cluster_labels(table, k)
            for k in sorted({t.clusters for t in transforms} - {0})}
  results, chosen, best_vectors = {}, None, None
  for t in transforms:
    if t == item_id_table.IDENTITY:
      new, vectors = params, items["item"]
    else:
      new = item_id_table.with_id_table(params, t.apply(table, labels.get(t.clusters)))
      vectors = encoder.item_vectors(new, rest, items["content"])
    scoring = _scoring_vectors(encoder, new, rest, catalog, vectors, history_len)
    results[t] = dict(rank(*scoring, catalog), retrieval=retrieval)
    # Keep only the leader's vectors; strictly better wins, so ties keep the first.
    if chosen is None or results[t]["valid"]["recall@20"] > results[chosen]["valid"]["recall@20"]:
      chosen, best_vectors = t, scoring
  tried = {split: {t.label: results[t][split]["recall@20"] for t in transforms}
           for split in ("valid", "test")}
  return chosen, dict(results[chosen], scoring_vectors=best_vectors), tried


def evaluate_user_refits(scoring_vectors, catalog, penalties, *, steps: int,
                         tower: dict | None = None
                         ) -> tuple[float | None, dict, dict, tuple]:
  """The model's own user vectors (the tower) and a `user_refit.refit` per
  penalty, against the same item vectors; the best valid recall@20 wins, the
  tower on ties, so test stays untouched by the choice. `tower`: the
  tower's {"valid", "test"} metrics if already ranked.

  Returns (the chosen penalty, None for the tower; its {"valid", "test"}
  metrics; {"valid"/"test": {label: recall@20}} for every candidate; its
  (users, items) scoring vectors).
  """
  users, items = scoring_vectors
  histories = pad_lists(catalog.user_histories(TRAIN))
  best = (None, tower or rank(users, items, catalog), (users, items))
  tried = {"valid": {}, "test": {}}
  for penalty in (None,) + tuple(float(p) for p in penalties):
    if penalty is None:
      metrics = best[1]
    else:
      vectors = user_refit.refit(users, items, histories, penalty, steps)
      metrics = rank(*vectors, catalog)
      if metrics["valid"]["recall@20"] > best[1]["valid"]["recall@20"]:
        best = (penalty, metrics, vectors)
    for split in tried:
      tried[split][user_refit.label(penalty)] = metrics[split]["recall@20"]
  return best[0], best[1], tried, best[2]
