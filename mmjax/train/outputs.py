"""The run's files outside the checkpoints: the workdir itself, summary.json
and curves.png."""

import json
import os

import jax
import numpy as np

from mmjax.errors import MmjaxError
from mmjax.train import reporting


def prepare_workdir(workdir: str) -> str:
  """The absolute workdir, created; MmjaxError if it cannot be written."""
  workdir = os.path.abspath(workdir)
  try:
    os.makedirs(workdir, exist_ok=True)
    probe = os.path.join(workdir, ".write_probe")
    with open(probe, "w") as f:
      f.write("ok")
    os.remove(probe)
  except OSError as e:
    raise MmjaxError(f"workdir is not writable: {workdir} ({e.strerror})") from None
  return workdir


def jsonable(x):
  """`json.dump`'s default for NumPy scalars, tuples and sets."""
  if isinstance(x, (np.integer, np.floating)):
    return x.item()
  if isinstance(x, (tuple, set)):
    return list(x)
  raise TypeError(f"not JSON serializable: {type(x)}")


def write_outputs(workdir: str, summary: dict, metrics_path: str, formatter,
                  log) -> None:
  """summary.json, curves.png and the printed table (process 0 only)."""
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "summary.json"), "w") as f:
      json.dump(summary, f, indent=2, default=jsonable)
    reporting.plot_curves(metrics_path, os.path.join(workdir, "curves.png"))
    log(formatter(summary))
