"""A feature-graph run's served model: every user's and item's vector from
the best-valid state in <workdir>/best, for the run that serves.

Runs of one program (vmapped seeds, grid points) each keep their best
state; the served one is the best on valid within the chosen grid point
(`feature_graph_trainer.served_run`), recorded in summary.json and
recomputed from the checkpoint's early-stopping record for a run that has
not finished.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
from etils import epath

from mmjax import config as config_lib
from mmjax import mesh as mesh_lib
from mmjax.config.saved import from_saved
from mmjax.errors import MmjaxError
from mmjax.train import feature_graph_trainer as ft
from mmjax.train import loop
from mmjax.train.checkpoint import restore_best
from mmjax.train.resume import CONFIG_FILE


@dataclasses.dataclass
class Serving:
  """Scores are `users @ items.T` (unit vectors: the ranking the run was
  evaluated with)."""
  users: np.ndarray      # (U, dim)
  items: np.ndarray      # (N, dim)
  run: int               # Index of the served run among the vmapped ones.
  seed: int
  step: int              # The epoch of the served run's best state.
  config: object
  data: object           # mmrec.MMRecData: the pairs of every split.


def run_config(workdir: str):
  """The config a run trained with (<workdir>/config.json)."""
  path = epath.Path(workdir) / CONFIG_FILE
  if not path.exists():
    raise MmjaxError(f"{path} not found: not a training workdir (train first)")
  try:
    values = json.loads(path.read_text())
  except (OSError, json.JSONDecodeError) as e:
    raise MmjaxError(f"cannot read {path}: {e}") from None
  return from_saved(values, str(path))


def restore_task(workdir: str, config=None, make_evaluator=None):
  """(task, its best state, early-stopping record) of a feature-graph run,
  on the local devices; `make_evaluator(data, mesh)` builds the task's
  evaluator (None: serving only)."""
  config = config if config is not None else run_config(workdir)
  data = ft.load_data(config)
  mesh = mesh_lib.make_mesh(config_lib.default_config().mesh)
  evaluator = make_evaluator(data, mesh) if make_evaluator is not None else None
  task = ft.FeatureGraphTask(config, data, mesh, evaluator)
  _, stop, ckpt = loop.restore(task, config, workdir, lambda *_: None)
  ckpt.close()
  if not stop.evaluated:
    raise MmjaxError(f"{workdir}: no validation has run yet, so there is no best "
                     "state to serve")
  state = restore_best(workdir, task.servable(task.initial_state()))
  if state is None:
    raise MmjaxError(f"no best-valid state in {epath.Path(workdir) / 'best'}")
  return task, state, stop


def restore_serving(workdir: str, config=None) -> Serving:
  """The served run's user and item vectors."""
  task, state, stop = restore_task(workdir, config)
  served = ft.served_run(stop, task.seeds, task.points)
  r = served["run"]
  users, items = task.programs.embed_all(task.consts, state["best"], task.hp)
  return Serving(users=np.asarray(users[r]), items=np.asarray(items[r]), run=r,
                 seed=served["seed"], step=served["best_epoch"], config=task.config,
                 data=task.data)
