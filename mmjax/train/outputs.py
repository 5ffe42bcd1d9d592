"""The run's files outside the checkpoints: the workdir itself (and its
lock), summary.json and curves.png."""

import contextlib
import json
import os

import jax
import numpy as np
from etils import epath

from mmjax.errors import MmjaxError
from mmjax.train import paths
from mmjax.train import reporting
from mmjax.train.atomic import atomic_write
from mmjax.train.workdir_lock import WorkdirLock


def prepare_workdir(workdir) -> str:
  """The workdir (absolute if local, a URL as given otherwise), created;
  MmjaxError if it cannot be written."""
  workdir = paths.resolve(workdir)
  if not paths.is_local(workdir):
    paths.check_checkpointable(workdir)
    _probe_remote(workdir)
    return workdir
  try:
    os.makedirs(workdir, exist_ok=True)
    probe = os.path.join(workdir, ".write_probe")
    with open(probe, "w") as f:
      f.write("ok")
    os.remove(probe)
  except OSError as e:
    raise MmjaxError(f"workdir is not writable: {workdir} ({e.strerror})") from None
  return workdir


def _probe_remote(workdir: str) -> None:
  probe = epath.Path(workdir) / ".write_probe"
  try:
    # No mkdir: an object store's folders are implied by the names under
    # them, and gcsfs's would create a missing (mistyped) bucket.
    probe.write_text("ok")
    probe.unlink()
  except Exception as e:   # Each scheme's client raises its own errors.
    why = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
    raise MmjaxError(f"workdir is not writable: {workdir} ({why})") from None


def check_workdir_free(workdir: str) -> None:
  """MmjaxError now if another live run holds the workdir, or if it is on a
  scheme that checkpoints cannot be written to (before the setup;
  `open_workdir` takes the lock after it)."""
  paths.check_checkpointable(workdir)
  # Process 0 holds the lock of a multi-process run. A single process asks
  # no backend: a refusal starts no device.
  if not jax.distributed.is_initialized() or jax.process_index() == 0:
    WorkdirLock(paths.resolve(workdir)).check_free()


@contextlib.contextmanager
def open_workdir(workdir: str, log=print):
  """`with open_workdir(w) as workdir:` creates the workdir and holds its
  lock while inside (one run per workdir); released however the block ends.
  Process 0 holds it for a multi-process run. `workdir` is a string (a
  local path or a URL): join it with "/"."""
  workdir = prepare_workdir(workdir)
  if jax.process_index() != 0:
    yield workdir
    return
  with WorkdirLock(workdir, log):
    yield workdir


def jsonable(x):
  """`json.dump`'s default for NumPy scalars, tuples and sets."""
  if isinstance(x, (np.integer, np.floating)):
    return x.item()
  if isinstance(x, (tuple, set)):
    return list(x)
  raise TypeError(f"not JSON serializable: {type(x)}")


def write_outputs(workdir: str, summary: dict, metrics_path, formatter,
                  log) -> None:
  """summary.json, curves.png and the printed table (process 0 only)."""
  if jax.process_index() == 0:
    with atomic_write(paths.join(workdir, "summary.json")) as f:
      json.dump(summary, f, indent=2, default=jsonable)
    # Drawn into a buffer and uploaded whole (atomic_write): matplotlib
    # never sees the remote path.
    reporting.plot_curves(metrics_path, paths.join(workdir, "curves.png"))
    log(formatter(summary))
