"""What a run leaves behind: metrics.jsonl, TensorBoard events, curves.png.

On a workdir in an object store (gs://, s3://), which cannot append, a
JSON-lines file is kept in memory and its object rewritten whole at each
write, and TensorBoard events are written to a local folder and copied.
"""

import json
import math
import os
import shutil
import tempfile
import time

import jax
import numpy as np
from etils import epath

from mmjax.errors import MmjaxError
from mmjax.train import paths
from mmjax.train.atomic import atomic_write

# How often, at most, a remote workdir's TensorBoard events are copied while
# the run writes (each copy uploads the whole events file).
TB_SYNC_SECONDS = 60.0


class JsonLines:
  """Appends JSON rows to a file: a local file is appended to; a remote one
  is rewritten with every row so far (read back at the first write, so a
  `truncate_after` before it counts)."""

  def __init__(self, path):
    self.path = path
    self._rows = None   # Remote only.

  def append(self, row: dict) -> None:
    if paths.is_local(self.path):
      with open(self.path, "a") as f:
        f.write(json.dumps(row) + "\n")
      return
    if self._rows is None:
      exists = epath.Path(os.fspath(self.path)).exists()
      self._rows = read_metrics(self.path) if exists else []
    self._rows.append(row)
    self.flush()

  def flush(self) -> None:
    if self._rows is not None:
      with atomic_write(self.path) as f:
        f.writelines(json.dumps(r) + "\n" for r in self._rows)


class MetricsWriter:
  """Appends one JSON object per logged step and mirrors it to TensorBoard.

  Only process 0 writes; the other processes of a multi-host run keep quiet.
  """

  def __init__(self, workdir: str):
    self.active = jax.process_index() == 0
    self.path = paths.join(workdir, "metrics.jsonl")
    self._rows = JsonLines(self.path)
    self._tb = self._tb_local = None
    self._tb_dir = paths.join(workdir, "tensorboard")
    self._synced = time.monotonic()
    if self.active:
      from tensorboardX import SummaryWriter  # No TensorFlow needed.
      if paths.is_local(workdir):
        self._tb = SummaryWriter(self._tb_dir)
      else:
        # tensorboardX reaches gs:// and s3:// only through clients of its
        # own (google-cloud-storage, boto3) and no other scheme: events go
        # to a local folder, copied through epath.
        self._tb_local = tempfile.mkdtemp(prefix="mmjax_tensorboard_")
        self._tb = SummaryWriter(self._tb_local)

  def write(self, step: int, scalars: dict) -> None:
    if not self.active:
      return
    row = {"step": int(step), **{k: float(v) for k, v in scalars.items()}}
    self._rows.append(row)
    for k, v in row.items():
      if k != "step" and math.isfinite(v):
        self._tb.add_scalar(k, v, step)
    if (self._tb_local is not None
        and time.monotonic() - self._synced >= TB_SYNC_SECONDS):
      self.flush()

  def flush(self) -> None:
    """Everything written so far is in the workdir."""
    if not self.active:
      return
    self._rows.flush()
    self._tb.flush()
    if self._tb_local is not None:
      paths.upload_tree(self._tb_local, self._tb_dir)
      self._synced = time.monotonic()

  def close(self) -> None:
    if self._tb is None:
      return
    self._tb.close()
    if self._tb_local is not None:
      paths.upload_tree(self._tb_local, self._tb_dir)
      shutil.rmtree(self._tb_local, ignore_errors=True)
      self._tb_local = None
    self._tb = None


class ExampleIdLog:
  """`example_ids.p<process>.jsonl`: the (user, item) ids of each step's batch
  on this process (config.train.log_example_ids; off by default). Lets a test
  prove that a resumed stream repeats and skips nothing."""

  def __init__(self, workdir: str, resumed_from: int):
    self.path = paths.join(workdir, f"example_ids.p{jax.process_index()}.jsonl")
    truncate_after(self.path, resumed_from)
    self._rows = JsonLines(self.path)

  def write(self, step: int, batch: dict) -> None:
    self._rows.append(dict(step=int(step),
                           user_id=np.asarray(batch["user_id"]).tolist(),
                           item_id=np.asarray(batch["item_id"]).tolist()))


def truncate_after(path, step: int, log=None) -> None:
  """Drops rows past `step` (a resumed run rewrites them, never duplicates)
  and a torn last line (warned about through `log`)."""
  if not epath.Path(os.fspath(path)).exists():
    return
  rows = [r for r in read_metrics(path, log) if r["step"] <= step]
  with atomic_write(path) as f:
    f.writelines(json.dumps(r) + "\n" for r in rows)


def read_metrics(path, log=None) -> list[dict]:
  """The rows of a JSON-lines file (metrics.jsonl, example_ids.*.jsonl).

  A torn last line (its writer was killed mid-line) is skipped, with a
  warning through `log` if given; a bad line before the last one is
  damage, not a torn write: MmjaxError naming the file and line.
  """
  with epath.Path(os.fspath(path)).open() as f:
    lines = [(n, line) for n, line in enumerate(f, 1) if line.strip()]
  rows = []
  for i, (n, line) in enumerate(lines):
    try:
      rows.append(json.loads(line))
    except ValueError:
      if i < len(lines) - 1:
        raise MmjaxError(f"{path}: line {n} is not JSON (the file is damaged; "
                         "delete that line)") from None
      if log is not None:
        log(f"WARNING: dropped the torn last line {n} of {path} (its writer "
            "stopped mid-line)")
  return rows


def plot_curves(metrics_path, out_path) -> None:
  """One panel per logged quantity against step, as a PNG."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  rows = read_metrics(metrics_path)
  if not rows:
    return
  fig = curves_figure(rows)
  if isinstance(out_path, (str, os.PathLike)):
    with atomic_write(out_path, "wb") as f:
      fig.savefig(f, format="png", dpi=90)
  else:   # A buffer.
    fig.savefig(out_path, format="png", dpi=90)
  plt.close(fig)


def curves_figure(rows):
  """The matplotlib figure of `plot_curves` for metrics rows."""
  import matplotlib.pyplot as plt
  keys = [k for k in rows[-1] if k != "step"]
  cols = 4
  nrows = math.ceil(len(keys) / cols)
  fig, axes = plt.subplots(nrows, cols, figsize=(4 * cols, 2.6 * nrows), squeeze=False)
  for ax, key in zip(axes.flat, keys):
    # Only the rows that log the key: evaluations log every eval_every
    # steps, and a line through the rows between would break at each gap.
    logged = [(r["step"], r[key]) for r in rows if key in r]
    ax.plot(*zip(*logged), marker=".", markersize=4)
    ax.set_title(key, fontsize=9)
    ax.set_xlabel("step", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.locator_params(nbins=4)
  for ax in list(axes.flat)[len(keys):]:
    ax.axis("off")
  # Fixed margins: tight_layout draws every panel once more to measure it,
  # which cost more than the drawing itself.
  fig.subplots_adjust(left=0.05, right=0.98, bottom=0.5 / (2.6 * nrows),
                      top=1 - 0.3 / (2.6 * nrows), wspace=0.3, hspace=0.75)
  return fig
