"""How far can a recommender get on the synthetic catalog, given item features?

  python -m mmjax.bench.ceiling --workdir runs/demo --out ceiling.json

The oracle scores with each user's *true* preferences, which no learner sees.
This benchmark asks what the train interactions allow: for each feature set it
fits, per user, a log-linear preference model over the items

  p(i | u) = softmax_i(w_u . x_i + b_i),   L2 penalty lam * |w_u|^2,

by full-softmax maximum likelihood on the train split (shared item bias b,
full-batch Adam), picks lam by valid recall@20 and reports the test metrics
with the same masking as the run's own evaluation. Feature sets:

- `true_attributes`: one-hot of every latent attribute, i.e. perfect item
  features (the same form as the true logits, so this is the fit's ceiling);
- `text_attributes` / `image_attributes`: only what one modality shows;
- `text_bag_of_words`: which tokens each item's text holds (the text tower's
  input, synonyms left apart), i.e. what a text encoder gives that keeps the
  words but does not learn which ones mean the same;
- `run_item_vectors`: the run's learned item vectors (its "item" output);
- `run_content`: the run's content vectors (fusion output before the
  item-ID embedding);
- `run_z_text` / `run_z_image`: the run's aligned text / image vectors.

`id_scale` re-scores the run with its item-ID table scaled down (valid and
test), a check of how much of the ID embeddings generalizes.

With the run's own test metrics and the oracle beside them, it says whether a
gap to the oracle lies in the item features or in what the few train
interactions per user can tell about a user.

It also says where the variance of the run's vectors goes (`variance`): for
the aligned text and image vectors, the item vectors, the item vectors with
the item-ID table zeroed (content alone) and the item-ID table itself, the
share of variance that an additive model of the true attributes explains
(R^2) and each attribute's between-value share. What the attributes leave
unexplained is item-specific: noise to a preference model over attributes.
"""

import argparse
import functools
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mmjax import api
from mmjax.data.catalog import TEST, TRAIN, VALID
from mmjax.data.synthetic import IMAGE_ATTRS, TEXT_ATTRS, VOCAB
from mmjax.errors import MmjaxError
from mmjax.eval.metrics import pad_lists, ranking_metrics, topk_from_scores

PENALTIES = (0.3, 1.0, 3.0, 10.0, 30.0)
KS = (10, 20, 50)
ID_SCALES = (0.0, 0.25, 0.5, 0.75, 1.0)


def one_hot(attrs: dict, names) -> np.ndarray:
  """(N, sum of value counts) float32 one-hot of the attributes `names`."""
  return np.concatenate(
      [np.eye(len(VOCAB[a]), dtype=np.float32)[attrs[a]] for a in names], axis=1)


def bag_of_words(tokens: np.ndarray, mask: np.ndarray) -> np.ndarray:
  """(N, T) float32 0/1: does text i hold token t, over the T tokens that
  some but not all texts hold (special tokens are in every text)."""
  n, vocab = tokens.shape[0], int(tokens.max()) + 1
  x = np.zeros((n, vocab), np.float32)
  rows = np.broadcast_to(np.arange(n)[:, None], tokens.shape)
  x[rows[mask > 0], tokens[mask > 0]] = 1.0
  count = x.sum(0)
  return x[:, (count > 0) & (count < n)]


def attribute_variance(x: np.ndarray, attrs: dict) -> dict:
  """Where the variance of the rows of x goes, against the true attributes.

  r2: the share an additive model (one-hot of every attribute, least squares)
  explains; share[a]: the between-value variance of attribute a alone,
  sum_v n_v |mean_v - mean|^2 / sum_i |x_i - mean|^2.
  """
  x = np.asarray(x, np.float64)
  mean_norm = float(np.linalg.norm(x, axis=1).mean())
  x = x - x.mean(0)
  total = float((x ** 2).sum())
  design = np.concatenate([one_hot(attrs, VOCAB), np.ones((len(x), 1))], axis=1)
  coef, *_ = np.linalg.lstsq(design, x, rcond=None)
  share = {}
  for a in VOCAB:
    counts = np.bincount(attrs[a], minlength=len(VOCAB[a]))
    means = np.zeros((len(VOCAB[a]), x.shape[1]))
    np.add.at(means, attrs[a], x)
    means /= np.maximum(counts, 1)[:, None]
    share[a] = float((counts * (means ** 2).sum(1)).sum() / total)
  return dict(r2=float(1 - ((x - design @ coef) ** 2).sum() / total), share=share,
              mean_norm=mean_norm)


def fit_preferences(features: np.ndarray, pairs: np.ndarray, num_users: int,
                    penalty: float, steps: int = 400, lr: float = 0.05) -> np.ndarray:
  """(U, N) scores w_u . x_i + b_i of the fitted per-user log-linear models.

  pairs: (M, 2) train (user, item) rows. Features are scaled to unit overall
  std, so one penalty grid fits one-hots and learned vectors alike.
  """
  x = features / (features.std() + 1e-12)
  return np.asarray(_fit(jnp.asarray(x, jnp.float32), jnp.asarray(pairs[:, 0]),
                         jnp.asarray(pairs[:, 1]), jnp.float32(penalty),
                         num_users=num_users, steps=steps, lr=lr))


@functools.partial(jax.jit, static_argnames=("num_users", "steps", "lr"))
def _fit(x, users, items, penalty, *, num_users, steps, lr):
  """Full-batch Adam on the penalized full-softmax likelihood (one compile
  per feature shape; the penalty is traced)."""
  def loss(p):
    log_p = jax.nn.log_softmax(p["w"] @ x.T + p["b"], axis=1)
    nll = -jnp.sum(log_p[users, items]) / num_users
    return nll + penalty * jnp.sum(p["w"] ** 2) / num_users

  opt = optax.adam(lr)

  def step(carry, _):
    p, s = carry
    u, s = opt.update(jax.grad(loss)(p), s)
    return (optax.apply_updates(p, u), s), None

  p = dict(w=jnp.zeros((num_users, x.shape[1]), jnp.float32),
           b=jnp.zeros((x.shape[0],), jnp.float32))
  (p, _), _ = jax.lax.scan(step, (p, opt.init(p)), None, length=steps)
  return p["w"] @ x.T + p["b"]


def _held_out(catalog) -> tuple:
  """(exclude, valid, test) padded per-user lists: the run's evaluation masks."""
  return tuple(pad_lists(catalog.user_histories(s)) for s in (TRAIN, VALID, TEST))


def best_fit(features, catalog) -> dict:
  """Fits every penalty; the one with the best valid recall@20 gives test."""
  train = catalog.split_pairs(TRAIN)
  exclude, valid, test = _held_out(catalog)
  best = None
  for penalty in PENALTIES:
    top = topk_from_scores(fit_preferences(features, train, catalog.num_users, penalty),
                           exclude, max(KS))
    v = ranking_metrics(top, valid, KS)
    if best is None or v["recall@20"] > best["valid"]["recall@20"]:
      best = dict(penalty=penalty, valid=v, test=ranking_metrics(top, test, KS))
  return best


def id_scale_sweep(model) -> list[dict]:
  """The run's own valid/test metrics with its item-ID table scaled by each
  of ID_SCALES (item = normalize(content + s * ID); s = 1 is the run's
  table as loaded, i.e. after the run's own postprocess.item_id_scales /
  item_id_clusters choice), scored by the user tower (no user refit).

  Where a scale below 1 scores held-out interactions better, part of what
  the ID embeddings learned fits the train interactions only."""
  exclude, valid, test = _held_out(model.catalog)
  rows = []
  for scale in ID_SCALES:
    u, v = model.with_item_id_scale(scale).scoring_vectors
    top = topk_from_scores(u @ v.T, exclude, max(KS))
    rows.append(dict(scale=scale, valid=ranking_metrics(top, valid, KS),
                     test=ranking_metrics(top, test, KS)))
  return rows


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--workdir", required=True, help="a finished run on the synthetic catalog")
  ap.add_argument("--out", default="", help="JSON path (default <workdir>/ceiling.json)")
  args = ap.parse_args(argv)
  model = api.load(args.workdir)
  attrs = getattr(model.catalog, "item_attrs", None)
  if not attrs:
    raise MmjaxError(f"{args.workdir}: its catalog has no latent attributes; the "
                     "ceiling needs the synthetic catalog")
  feature_sets = {
      "true_attributes": one_hot(attrs, VOCAB),
      "text_attributes": one_hot(attrs, TEXT_ATTRS),
      "image_attributes": one_hot(attrs, IMAGE_ATTRS),
      "text_bag_of_words": bag_of_words(*model.tokenizer.encode_all(model.catalog.item_text)),
      "run_item_vectors": model.item_embeddings["item"],
      "run_z_text": model.item_embeddings["z_text"],
  }
  for key in ("content", "z_image"):
    if key in model.item_embeddings:
      feature_sets[f"run_{key}"] = model.item_embeddings[key]
  start = time.perf_counter()
  fits = {name: best_fit(x, model.catalog) for name, x in feature_sets.items()}
  vectors = {k: model.item_embeddings[k] for k in ("z_text", "z_image", "item")
             if k in model.item_embeddings}
  if model.item_id_table is not None:
    content = model.item_embeddings["content"]   # item = normalize(content + ID).
    vectors["item_content_only"] = content / np.maximum(
        np.linalg.norm(content, axis=1, keepdims=True), 1e-6)
    vectors["item_id_table"] = model.item_id_table
  variance = {name: attribute_variance(x, attrs) for name, x in vectors.items()}
  id_scales = id_scale_sweep(model) if model.item_id_table is not None else []
  if "item_content_only" in vectors:   # How far the IDs turn the scored vectors.
    variance["item_content_only"]["mean_cos_to_item"] = float(np.mean(np.sum(
        vectors["item_content_only"] * vectors["item"], axis=1)))
  oracle = model.summary["oracle"]["recall@20"]
  out = dict(oracle=model.summary["oracle"], run_test=model.summary["test"], fits=fits,
             variance=variance, id_scale=id_scales, seconds=time.perf_counter() - start)
  path = args.out or os.path.join(args.workdir, "ceiling.json")
  with open(path, "w") as f:
    json.dump(out, f, indent=1)
  rows = [("run (its own model)", model.summary["test"])] + [
      (f"fit on {name} (lam {fit['penalty']:g})", fit["test"]) for name, fit in fits.items()]
  print("| | test recall@20 | x oracle | test ndcg@20 |\n|---|---|---|---|")
  for name, m in rows + [("oracle", model.summary["oracle"])]:
    print(f"| {name} | {m['recall@20']:.4f} | {m['recall@20'] / oracle:.2f} "
          f"| {m['ndcg@20']:.4f} |")
  print("\n| vectors | R^2 on the attributes | " + " | ".join(VOCAB) + " |\n"
        "|---|---|" + "---|" * len(VOCAB))
  for name, v in variance.items():
    print(f"| {name} | {v['r2']:.2f} | " + " | ".join(f"{v['share'][a]:.2f}" for a in VOCAB)
          + " |")
  if id_scales:
    print("\n| item-ID table scale | valid recall@20 | test recall@20 | x oracle |\n"
          "|---|---|---|---|")
    for row in id_scales:
      print(f"| {row['scale']:g} | {row['valid']['recall@20']:.4f} | "
            f"{row['test']['recall@20']:.4f} | {row['test']['recall@20'] / oracle:.2f} |")
  print(f"wrote {path}")


if __name__ == "__main__":
  main()
