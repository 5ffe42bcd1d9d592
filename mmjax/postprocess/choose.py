"""Choosing the post-processing on valid, and the one file that keeps it.

`run` starts from the evaluated model (`eval.evaluate`'s result), tries the
configured item-ID table transforms, then the user refits against the chosen
table's vectors, and keeps for each the best on valid recall@20, so test
never steers a choice. The choice goes to <workdir>/postprocess.json:

  step           the checkpoint step it applies to (the run's last)
  item_id_table  chosen (a `TableTransform` dict), label, and recall_at_20
                 {"valid", "test"} of every candidate, keyed by label
  user_refit     chosen (the penalty, or null for the tower), label, steps,
                 recall_at_20 as above, and file: user_refit.npz when a
                 refit was chosen (its vectors, beside postprocess.json)

`mmjax.load` (and so export and recommend) reads it back through `read`,
`item_id_transform` and `user_refit_vectors`.
"""

from __future__ import annotations

import json
import os

import jax

from mmjax.data.catalog import TRAIN
from mmjax.errors import MmjaxError
from mmjax.train.atomic import atomic_write
from mmjax.eval.evaluate import rank, scoring_vectors
from mmjax.eval.metrics import pad_lists
from mmjax.postprocess import item_id_table, user_refit
from mmjax.postprocess.item_id_table import TableTransform

FILE = "postprocess.json"
_ARRAYS = ("item_vectors", "scoring_vectors")   # `evaluate`'s non-JSON entries.


def enabled(cfg) -> bool:
  """Whether config.postprocess asks for any candidate."""
  return bool(cfg.item_id_scales or cfg.item_id_clusters or cfg.user_refit_penalties)


def check_catalog(cfg, catalog) -> None:
  """Fails before training on choices the catalog cannot take."""
  too_many = [k for k in cfg.item_id_clusters if k > catalog.num_items]
  if too_many:
    raise MmjaxError(f"config.postprocess.item_id_clusters={tuple(too_many)}: more "
                     f"clusters than the {catalog.num_items} items")


def run(cfg, workdir: str, evaluated: dict, *, embedder, params, buffers, catalog,
        history_len: int, step: int, log=print) -> tuple[dict, dict | None]:
  """Post-processes the evaluated model as config.postprocess (`cfg`) asks.

  Returns (the metrics: `evaluated` without its arrays, "valid" and "test"
  those of the chosen post-processing; the summary.json entry, None when
  `cfg` asks for nothing). Writes postprocess.json (process 0), after
  removing a previous run's copy in every case.
  """
  result = {k: v for k, v in evaluated.items() if k not in _ARRAYS}
  _remove_stale(workdir)
  if not enabled(cfg):
    return result, None
  report = dict(step=int(step))
  vectors = evaluated["scoring_vectors"]
  if cfg.item_id_scales or cfg.item_id_clusters:
    candidates = item_id_table.candidates(cfg.item_id_scales, cfg.item_id_clusters)
    chosen, metrics, tried, vectors = evaluate_item_id_tables(
        embedder, params, buffers, catalog, candidates, evaluated,
        history_len=history_len)
    result.update(metrics)
    report["item_id_table"] = dict(chosen=chosen.to_dict(), label=chosen.label,
                                   recall_at_20=tried)
    log(item_id_table.describe(report["item_id_table"]))
  as_trained = {s: _recall(evaluated, s) for s in ("valid", "test")}
  if cfg.user_refit_penalties:
    penalty, metrics, tried, refit = evaluate_user_refits(
        vectors, catalog, cfg.user_refit_penalties, steps=cfg.user_refit_steps,
        tower={s: result[s] for s in ("valid", "test")})
    result.update(metrics)
    report["user_refit"] = dict(chosen=penalty, label=user_refit.label(penalty),
                                steps=int(cfg.user_refit_steps), recall_at_20=tried)
    if penalty is not None:
      report["user_refit"]["file"] = user_refit.FILE
      if jax.process_index() == 0:
        user_refit.save(workdir, *refit, penalty)
    log(user_refit.describe(report["user_refit"]))
  if jax.process_index() == 0:
    with atomic_write(os.path.join(workdir, FILE)) as f:
      json.dump(report, f, indent=2, default=float)   # numpy scalars.
  summary = dict(file=FILE, as_trained_recall_at_20=as_trained)
  for key in ("item_id_table", "user_refit"):
    if key in report:
      summary[key] = report[key]["label"]
  return result, summary


def describe(summary: dict) -> str:
  """One line on summary.json's `postprocess` entry."""
  chosen = []
  if "item_id_table" in summary:
    chosen.append(f"item-ID table {summary['item_id_table']}")
  if "user_refit" in summary:
    chosen.append(f"user vectors {summary['user_refit']}")
  before = summary["as_trained_recall_at_20"]
  return (f"post-processed ({summary['file']}): {', '.join(chosen)}; as trained: "
          f"valid recall@20 {before['valid']:.4f}, test {before['test']:.4f}")


def _recall(result: dict, split: str) -> float:
  return result[split]["recall@20"]


def _remove_stale(workdir: str) -> None:
  """A previous evaluation's choice is never paired with this model."""
  if jax.process_index() != 0:
    return
  for name in (FILE, user_refit.FILE):
    path = os.path.join(workdir, name)
    if os.path.exists(path):
      os.remove(path)


def evaluate_item_id_tables(embedder, params, buffers, catalog, transforms,
                            evaluated: dict, *, history_len: int
                            ) -> tuple[TableTransform, dict, dict, tuple]:
  """Each of `transforms` (item_id_table.candidates) applied to the item-ID
  table; the first of them wins ties. `evaluated`: `eval.evaluate`'s result
  for the table as trained, whose item vectors are reused (the encoders do
  not see the ID table, so only the IDs are re-added per candidate).

  The choice is made on valid recall@20, so test stays untouched by it.
  Returns (the chosen transform; its {"valid", "test"} metrics; {"valid" /
  "test": {label: recall@20}} for every transform tried; its (users, items)
  scoring vectors).
  """
  items = evaluated["item_vectors"]
  table = item_id_table.id_table(params)
  labels = {k: item_id_table.cluster_labels(table, k)
            for k in sorted({t.clusters for t in transforms} - {0})}
  results, chosen, best_vectors = {}, None, None
  for t in transforms:
    if t == item_id_table.IDENTITY:
      vectors = evaluated["scoring_vectors"]
      results[t] = {s: evaluated[s] for s in ("valid", "test")}
    else:
      new = item_id_table.with_id_table(params, t.apply(table, labels.get(t.clusters)))
      item_vectors = embedder.item_vectors(new, buffers, items["content"])
      vectors = scoring_vectors(embedder, new, buffers, catalog, item_vectors,
                                history_len)
      results[t] = rank(*vectors, catalog)
    # Keep only the leader's vectors; strictly better wins, so ties keep the first.
    if chosen is None or _recall(results[t], "valid") > _recall(results[chosen], "valid"):
      chosen, best_vectors = t, vectors
  tried = {split: {t.label: _recall(results[t], split) for t in transforms}
           for split in ("valid", "test")}
  return chosen, results[chosen], tried, best_vectors


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
      if _recall(metrics, "valid") > _recall(best[1], "valid"):
        best = (penalty, metrics, vectors)
    for split in tried:
      tried[split][user_refit.label(penalty)] = _recall(metrics, split)
  return best[0], best[1], tried, best[2]


# -- reading the choice back -------------------------------------------------

def read(workdir: str) -> dict | None:
  """postprocess.json of a run, or None for a run without post-processing."""
  path = os.path.join(workdir, FILE)
  if not os.path.isfile(path):
    return None
  try:
    with open(path) as f:
      report = json.load(f)
    int(report["step"])
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise MmjaxError(f"cannot read {path}: {e}") from None
  return report


def item_id_transform(report: dict | None, step: int) -> TableTransform | None:
  """The chosen item-ID table transform if `report` applies to `step`."""
  if not report or report["step"] != step or "item_id_table" not in report:
    return None
  return TableTransform.from_dict(report["item_id_table"]["chosen"])


def user_refit_vectors(workdir: str, report: dict | None, step: int):
  """The chosen user refit's arrays (`user_refit.load`) if `report` applies
  to `step` and chose one; None otherwise."""
  chosen = (report or {}).get("user_refit", {})
  if report is None or report["step"] != step or chosen.get("chosen") is None:
    return None
  try:
    return user_refit.load(workdir)
  except (OSError, KeyError, ValueError) as e:
    raise MmjaxError(f"{FILE} chose the user refit {chosen['label']!r} but "
                     f"{os.path.join(workdir, user_refit.FILE)} cannot be read: "
                     f"{str(e).splitlines()[0]}") from None
