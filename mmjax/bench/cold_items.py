"""Cold items: how well `add_items` ranks items the run never saw.

  python -m mmjax.bench.cold_items --config tiny --seeds 0 1 2 --out cold_items.json
  python -m mmjax.bench.cold_items --config demo:small --out cold_items_demo.json

On the config's synthetic catalog, a fraction of the items (`--cold`, drawn
with the seed) is taken out of the catalog before training: the run trains
and validates on the other items alone (its tokenizer is the full catalog's,
whose texts share one small vocabulary). Every interaction of a held-out
item, whichever its split, is a cold target (as in the
`data.item_ssl_fraction` experiment, whose cold items' train interactions
went to test; here the items are gone from training entirely, ID rows and
score offsets included). After training, `add_items` gives the loaded model
the held-out items from their text and image alone, under their catalog
ids, and each user with a cold target is ranked two ways:

- all items: every item scored, the user's seen catalog items masked (as
  `recommend` ranks); the cold items compete with the trained ones;
- among the cold items: only the held-out items are ranked (the cold-start
  protocol).

recall@20 and ndcg@20 of the cold targets, against:
- popularity: train interactions per item; a cold item has none, so it ties
  with the catalog's never-bought items at 0 (ties broken at random): last
  among all items, and among the cold items a random order;
- random: uniform scores (the mean of `RANDOM_DRAWS` draws);
- oracle: the catalog's true preference logits (the ceiling).
The run's own test recall@20 on the catalog items is reported beside them.

"by_offset" repeats the all-items ranking with the new items' score offsets
at quantiles of the catalog's (`OFFSETS`), and also ranks the whole test
split (catalog and new items' test interactions), with the share of the top
20 that the new items take: the higher their offsets, the more they displace
catalog items.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import tempfile
import time

import numpy as np

from mmjax import api
from mmjax.config.loader import load as load_config
from mmjax.data import store, store_write, text
from mmjax.data.catalog import TEST, TRAIN
from mmjax.data.synthetic import SyntheticSpec
from mmjax.errors import MmjaxError
from mmjax.eval.metrics import pad_lists, ranking_metrics, topk_from_scores
from mmjax.run import train_and_evaluate

K = 20
RANDOM_DRAWS = 10
_HOLD_OUT_STREAM = 28   # The held-out draw's own random stream (any fixed key).
# The new items' score offsets tried: add_items' default (the catalog mean),
# then quantiles of the catalog's (`offset_quantile`).
OFFSETS = {"mean": None, "q10": 0.1, "q25": 0.25, "q50": 0.5, "q90": 0.9}
_ROW_FIELDS = ("interactions", "split", "labels")   # One entry per interaction.


def hold_out(catalog, cold: np.ndarray):
  """(the catalog without the `cold` items, their ids being their old dense
  indices; each user's cold items (old indices) over all splits)."""
  warm = np.setdiff1d(np.arange(catalog.num_items), cold)
  new_index = np.full(catalog.num_items, -1, np.int32)
  new_index[warm] = np.arange(len(warm), dtype=np.int32)
  users, items = catalog.interactions[:, 0], catalog.interactions[:, 1]
  keep = new_index[items] >= 0
  rows = {f: getattr(catalog, f, None) for f in _ROW_FIELDS}
  rows = {f: None if v is None else v[keep] for f, v in rows.items()}
  rows["interactions"] = np.stack([users[keep], new_index[items[keep]]], 1).astype(np.int32)
  attrs = {a: v[warm] for a, v in (catalog.item_attrs or {}).items()} or None
  oracle = None if catalog.oracle_scores is None else catalog.oracle_scores[:, warm]
  warm_catalog = dataclasses.replace(
      catalog, **rows, item_text=[catalog.item_text[i] for i in warm],
      item_images=catalog.item_images[warm], num_items=len(warm),
      item_image_files=(None if catalog.item_image_files is None else
                        [catalog.item_image_files[i] for i in warm]),
      item_attrs=attrs, oracle_scores=oracle,
      item_ids=[catalog.item_map.raw(i) for i in warm]).validate()
  targets = [[] for _ in range(catalog.num_users)]
  for u, i in catalog.interactions[~keep]:
    targets[u].append(int(i))
  return warm_catalog, [sorted(set(t)) for t in targets]


def recall_ndcg(scores: np.ndarray, exclude: np.ndarray, targets: np.ndarray) -> dict:
  """recall@K and ndcg@K of (U, N) scores, `exclude`d columns masked."""
  m = ranking_metrics(topk_from_scores(scores, exclude, K), targets, (K,))
  return {f"recall@{K}": m[f"recall@{K}"], f"ndcg@{K}": m[f"ndcg@{K}"]}


def evaluate(models: dict, catalog, cold: np.ndarray, targets: list, seed: int) -> dict:
  """Cold-target metrics of `models["mean"]` (the run with the cold items
  added) and the baselines, and `offset_sweep` over `models`; `catalog` is
  the full one (true preferences, old indices)."""
  model = models["mean"]
  users = np.asarray([u for u, t in enumerate(targets) if t])
  cols = model.item_map.indices(catalog.item_map.raws(cold))   # Cold items' columns.
  originals = np.asarray(catalog.item_map.indices(model.item_map.to_list()))
  to_col = np.full(catalog.num_items, -1, np.int64)
  to_col[originals] = np.arange(model.num_items)
  wanted = pad_lists([to_col[targets[u]] for u in users])
  among = pad_lists([np.searchsorted(cold, targets[u]) for u in users])
  seen = pad_lists([model.seen(model.user_map.raw(u)) for u in users])
  none = np.full((len(users), 1), -1, np.int32)
  rng = np.random.default_rng(seed)
  u, v = model.scoring_vectors
  popularity = np.zeros(model.num_items, np.float32)
  trained = np.bincount(model.catalog.split_pairs(TRAIN)[:, 1],
                        minlength=model.num_items)
  popularity[:len(trained)] = trained
  scores = {
      "model (add_items)": u[users] @ v.T,
      "popularity": np.broadcast_to(popularity, (len(users), model.num_items))
                    + rng.random((len(users), model.num_items), np.float32) * 0.5,
      "oracle": catalog.oracle_scores[users][:, originals],
  }
  out = {"all_items": {}, "among_cold": {}}
  for name, s in scores.items():
    out["all_items"][name] = recall_ndcg(s, seen, wanted)
    out["among_cold"][name] = recall_ndcg(np.ascontiguousarray(s[:, cols]), none, among)
  draws = [rng.random((len(users), model.num_items), np.float32) for _ in range(RANDOM_DRAWS)]
  for where, (take, exclude, t) in {"all_items": (slice(None), seen, wanted),
                                    "among_cold": (cols, none, among)}.items():
    runs = [recall_ndcg(np.ascontiguousarray(d[:, take]), exclude, t) for d in draws]
    out[where]["random"] = {k: float(np.mean([r[k] for r in runs])) for k in runs[0]}
  out["by_offset"] = offset_sweep(models, catalog, to_col, cols, users, seen, wanted)
  out["users"] = len(users)
  out["cold_targets"] = int((wanted >= 0).sum())
  return out


def offset_sweep(models: dict, catalog, to_col, cols, users, seen, wanted) -> dict:
  """Per `models` entry (the same new items at another `offset_quantile`):
  the cold targets' metrics as in "all_items", and the whole test split's
  (catalog and new items, each user's train items masked) with the share of
  its top-K slots that new items take."""
  test = [[] for _ in range(catalog.num_users)]
  for user, item in catalog.split_pairs(TEST):
    test[user].append(to_col[item])
  testers = np.asarray([t for t, items in enumerate(test) if items])
  targets = pad_lists([sorted(set(test[t])) for t in testers])
  out = {}
  for name, model in models.items():
    train = model.catalog.user_histories(TRAIN)
    exclude = pad_lists([train[t] for t in testers], width=max(1, max(map(len, train))))
    u, v = model.scoring_vectors
    top = topk_from_scores(u[testers] @ v.T, exclude, K)
    m = ranking_metrics(top, targets, (K,))
    out[name] = dict(cold_targets=recall_ndcg(u[users] @ v.T, seen, wanted),
                     test_split={f"recall@{K}": m[f"recall@{K}"],
                                 f"ndcg@{K}": m[f"ndcg@{K}"],
                                 f"new_share@{K}": float(np.isin(top, cols).mean())})
  return out


def one_seed(spec: str, seed: int, fraction: float, root: str, log) -> dict:
  config = load_config(spec)
  if config.data.name != "synthetic":
    raise MmjaxError(f"--config {spec}: data.name={config.data.name!r}; the "
                     "cold-item benchmark needs the synthetic catalog")
  config.seed = seed
  full_dir = store_write.ensure_synthetic(SyntheticSpec(**config.data.synthetic.to_dict()))
  catalog = store.load_catalog(full_dir)
  count = round(fraction * catalog.num_items)
  if not K <= count < catalog.num_items:
    raise MmjaxError(f"--cold={fraction} holds out {count} of {catalog.num_items} "
                     f"items: hold out at least {K} and keep some")
  rng = np.random.default_rng([seed, _HOLD_OUT_STREAM])
  cold = np.sort(rng.choice(catalog.num_items, count, replace=False))
  warm_catalog, targets = hold_out(catalog, cold)
  config.data.dir = os.path.join(root, f"data-{seed}")
  # The full catalog's tokenizer: WordPiece training does not break its ties
  # the same way twice, so a tokenizer trained here would make reruns differ.
  store_write.write_cached(warm_catalog, config.data.dir, extra_meta={},
                           tokenizer=text.load_tokenizer(store.tokenizer_path(full_dir)))
  workdir = os.path.join(root, f"run-{seed}")
  start = time.perf_counter()
  summary = train_and_evaluate(config, workdir, log=lambda *_: None)
  seconds = time.perf_counter() - start
  trained = api.load(workdir)
  models = {name: trained.add_items(
      texts=[catalog.item_text[i] for i in cold], images=catalog.item_images[cold],
      ids=catalog.item_map.raws(cold), offset_quantile=q) for name, q in OFFSETS.items()}
  result = evaluate(models, catalog, cold, targets, seed)
  result.update(seed=seed, items=catalog.num_items, cold_items=len(cold),
                train_seconds=round(seconds, 1),
                warm_test=dict(run=summary["test"][f"recall@{K}"],
                               popularity=summary["popularity"][f"recall@{K}"],
                               oracle=summary["oracle"][f"recall@{K}"]))
  log(f"seed {seed}: " + ", ".join(
      f"{where} {result[where]['model (add_items)'][f'recall@{K}']:.4f}"
      for where in ("all_items", "among_cold")) + f" ({seconds:.0f} s training)")
  return result


def mean_over(runs: list[dict]) -> dict:
  """The per-seed metrics averaged (same nesting, the numbers only)."""
  first = runs[0]
  if isinstance(first, dict):
    return {k: mean_over([r[k] for r in runs]) for k in first
            if isinstance(first[k], (dict, float))}
  return float(np.mean(runs))


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--config", default="tiny", help="a synthetic-catalog config "
                 "(tiny, demo:small, a file)")
  p.add_argument("--seeds", type=int, nargs="+", default=[0])
  p.add_argument("--cold", type=float, default=0.2, help="share of items held out")
  p.add_argument("--workdir", default="", help="keep the runs here (default: a "
                 "temporary dir, removed)")
  p.add_argument("--out", required=True, help="the JSON to write")
  args = p.parse_args(argv)
  if not 0 < args.cold < 1:
    raise MmjaxError(f"--cold={args.cold} must be in (0, 1)")
  root = args.workdir or tempfile.mkdtemp(prefix="cold_items-")
  try:
    runs = [one_seed(args.config, s, args.cold, root, print) for s in args.seeds]
  finally:
    if not args.workdir:
      shutil.rmtree(root, ignore_errors=True)
  out = dict(config=args.config, cold_fraction=args.cold, k=K, runs=runs,
             mean=mean_over(runs))
  with open(args.out, "w") as f:
    json.dump(out, f, indent=1)
  print("| ranked | model (add_items) | popularity | random | oracle |\n"
        "|---|---|---|---|---|")
  for where in ("all_items", "among_cold"):
    m = out["mean"][where]
    print(f"| {where} | " + " | ".join(
        f"{m[n][f'recall@{K}']:.4f}" for n in ("model (add_items)", "popularity",
                                               "random", "oracle")) + " |")
  print(f"\n| new items' offsets | cold targets recall@{K} | test split recall@{K} "
        f"| new items' share of the top {K} |\n|---|---|---|---|")
  for name, m in out["mean"]["by_offset"].items():
    t = m["test_split"]
    print(f"| {name} | {m['cold_targets'][f'recall@{K}']:.4f} | {t[f'recall@{K}']:.4f} "
          f"| {t[f'new_share@{K}']:.3f} |")


if __name__ == "__main__":
  main()
