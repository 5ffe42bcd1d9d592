"""summary.json of a feature-graph run: the test metrics at each run's best
valid epoch, their mean and standard deviation over seeds, per grid point
the same, and the printed table."""

from __future__ import annotations

import numpy as np

from mmjax.config.grid import label
from mmjax.train.early_stop import EarlyStopping


def _mean_std(dicts: list[dict]) -> tuple[dict, dict]:
  keys = dicts[0].keys()
  return ({k: float(np.mean([d[k] for d in dicts])) for k in keys},
          {k: float(np.std([d[k] for d in dicts])) for k in keys})


def summarize(stop: EarlyStopping, valid: list[dict], test: list[dict], seeds,
              points: list[dict]) -> dict:
  """The contract: test/valid (mean over seeds) of each run's best state;
  `valid`/`test`: per run, the metrics of its best state; the reported grid
  point is the one with the best mean valid score."""
  s, select = len(seeds), stop.metric
  groups = []
  for g in range(len(points)):
    rs = range(g * s, (g + 1) * s)
    test_mean, test_std = _mean_std([test[r] for r in rs])
    valid_mean, valid_std = _mean_std([valid[r] for r in rs])
    groups.append(dict(
        test=test_mean, test_std=test_std, valid=valid_mean, valid_std=valid_std,
        best_epochs=[stop.best_step[r] for r in rs],
        seeds=[test[r] for r in rs]))
  best = max(range(len(groups)), key=lambda g: groups[g]["valid"][select])
  out = dict(groups[best])
  out["best_epoch"] = int(round(np.mean(out["best_epochs"])))
  if s == 1:
    del out["seeds"], out["test_std"], out["valid_std"]
  out["seed_list"] = list(seeds)
  out["selected_by"] = select
  if len(points) > 1:
    out["grid"] = dict(best=points[best], results=[
        dict(point=p, test=g["test"], valid=g["valid"], test_std=g["test_std"],
             best_epochs=g["best_epochs"])
        for p, g in zip(points, groups)])
  return out


def grid_lines(results: list[dict], metric: str, best: dict) -> list[str]:
  """One line per grid point: its valid and test `metric` and best epochs."""
  lines = [f"  grid points (by valid {metric}):"]
  for r in results:
    mark = "*" if r["point"] == best else " "
    lines.append(f"  {mark} {label(r['point'])}: valid {r['valid'][metric]:.4f} "
                 f"test {r['test'][metric]:.4f}, best epoch(s) {r['best_epochs']}")
  return lines


def format_summary(s: dict, split: str = "test") -> str:
  std = s.get(f"{split}_std", {})
  pm = lambda k: f"{s[split][k]:.4f}" + (f" ± {std[k]:.4f}" if std else "")
  lines = ["", f"results ({split} at the best valid epoch, mean over seeds "
           f"{s['seed_list']}, train items masked):"]
  for k in ("recall", "ndcg", "precision", "map"):
    lines.append("  " + "  ".join(f"{k}@{c}: {pm(f'{k}@{c}')}" for c in (10, 20, 50)))
  lines.append(f"  best epoch {s['best_epoch']} (per run {s['best_epochs']})"
               + (f", {s['epochs_run']} epochs run" if "epochs_run" in s else ""))
  if "grid" in s:
    lines += grid_lines(s["grid"]["results"], s["selected_by"], s["grid"]["best"])
  if "served_run" in s:
    r = s["served_run"]
    lines.append(f"  served: run {r['run']} (seed {r['seed']}, best epoch "
                 f"{r['best_epoch']}), the best on valid")
  if "seconds_per_epoch" in s:
    lines.append(f"  {s['seconds_per_epoch']:.3f} s/epoch, {s['seconds_per_eval']:.3f} "
                 f"s/eval for {s['runs']} run(s)")
  return "\n".join(lines)
