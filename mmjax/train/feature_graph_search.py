"""The feature graph's hyper-parameter search (`config.grid.axes`), picked
on valid, as MMRec's published tables are.

1. Each combination of the static axes' values is one program, trained in
   <workdir>/grid/<i>; the points of the vmapped axes train together in it,
   each with `config.seed` and the same early stopping.
2. The point with the best valid `train.early_stop.metric` is rerun in
   <workdir> itself with `config.seeds`: its test metrics (mean and standard
   deviation over the seeds) are the result, and its best state is what
   `mmjax.load`, export and recommend serve.

summary.json's `grid` lists every point's valid and test metrics and best
epochs. A killed search resumes: finished programs are read back from their
summary.json, an unfinished one resumes from its checkpoint.
"""

from __future__ import annotations

import copy
import json
import time

from etils import epath

from mmjax import config as config_lib
from mmjax.config import grid as grid_lib
from mmjax.train import feature_graph_trainer as ft
from mmjax.train.feature_graph_summary import grid_lines


def _with(config, values: dict, **sets):
  """A copy of `config` with `values` ({"a.b": v}) and `sets` set."""
  out = copy.deepcopy(config)
  with out.unlocked():
    for key, value in {**values, **sets}.items():
      parent, _, leaf = key.rpartition(".")
      (config_lib.get(out, parent) if parent else out)[leaf] = value
  return out


def program_configs(config) -> list[tuple[dict, object]]:
  """(the static values, the program's config) for each program of the
  search: its vmapped axes as its grid, one run per point with `seed`."""
  static, vmapped = grid_lib.split_static(grid_lib.parse_axes(config.grid.axes))
  vmapped_axes = grid_lib.format_axes(vmapped)
  return [(fixed, _with(config, fixed, **{"grid.axes": vmapped_axes, "seeds": ()}))
          for fixed in grid_lib.points(static) or [{}]]


def _finished(workdir: epath.Path, config) -> dict | None:
  """The summary of a program already trained with this config, or None."""
  path = workdir / "summary.json"
  if not path.exists():
    return None
  summary = json.loads(path.read_text())
  same = summary.get("config") == json.loads(json.dumps(config.to_dict()))
  return summary if same and "test" in summary else None


def _points(summary: dict, fixed: dict, program: int) -> list[dict]:
  """Each point of one program: its values, valid and test metrics, epochs."""
  base = dict(program=program, epochs_run=summary["epochs_run"],
              seconds_per_epoch=summary["seconds_per_epoch"])
  if "grid" not in summary:
    return [dict(point=dict(fixed), valid=summary["valid"], test=summary["test"],
                 best_epochs=summary["best_epochs"], **base)]
  return [dict(point={**fixed, **r["point"]}, valid=r["valid"], test=r["test"],
               best_epochs=r["best_epochs"], **base)
          for r in summary["grid"]["results"]]


def train_and_evaluate(config, workdir: str, log=print, *, make_evaluator,
                       dry_run: bool = False) -> dict:
  """The search and the rerun of its chosen point (module docstring); a
  config without `grid.axes` is one program. Returns the summary."""
  config_lib.validate(config)
  train = lambda c, w, **kw: ft.train_and_evaluate_feature_graph(
      c, w, log, make_evaluator=make_evaluator, **kw)
  if not config.grid.axes:
    return train(config, workdir, dry_run=dry_run)
  programs = program_configs(config)
  if dry_run:   # The first program: every other one has the same kind of shapes.
    return train(programs[0][1], workdir, dry_run=True)
  root, start = epath.Path(workdir), time.monotonic()
  results = []
  for i, (fixed, sub) in enumerate(programs):
    sub_dir = root / "grid" / str(i)
    log(f"search program {i + 1}/{len(programs)}"
        + (f" ({grid_lib.label(fixed)})" if fixed else "") + f": {sub_dir}")
    summary = _finished(sub_dir, sub)
    if summary is None:
      summary = train(sub, str(sub_dir))
    if "preempted_at_step" in summary:
      return summary
    results += _points(summary, fixed, i)
  metric = config.train.early_stop.metric
  best = max(results, key=lambda r: r["valid"][metric])["point"]
  search_seconds = time.monotonic() - start
  log("\n".join(grid_lines(results, metric, best)))
  seeds = list(config.seeds) or [config.seed]
  log(f"chosen on valid {metric}: {grid_lib.label(best)}; rerun with seeds {seeds}")
  grid = dict(axes=config.grid.axes, selected_by=metric, best=best, results=results,
              programs=len(programs), search_seconds=search_seconds)
  return train(_with(config, best, **{"grid.axes": ""}), workdir, extra={"grid": grid})
