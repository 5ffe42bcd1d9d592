"""What a run leaves behind: metrics.jsonl, TensorBoard events, curves.png."""

import json
import math
import os

import jax
import numpy as np

from mmjax.errors import MmjaxError
from mmjax.train.atomic import atomic_write


class MetricsWriter:
  """Appends one JSON object per logged step and mirrors it to TensorBoard.

  Only process 0 writes; the other processes of a multi-host run keep quiet.
  """

  def __init__(self, workdir: str):
    self.active = jax.process_index() == 0
    self.path = os.path.join(workdir, "metrics.jsonl")
    self._tb = None
    if self.active:
      from tensorboardX import SummaryWriter  # No TensorFlow needed.
      self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

  def write(self, step: int, scalars: dict) -> None:
    if not self.active:
      return
    row = {"step": int(step), **{k: float(v) for k, v in scalars.items()}}
    with open(self.path, "a") as f:
      f.write(json.dumps(row) + "\n")
    for k, v in row.items():
      if k != "step" and math.isfinite(v):
        self._tb.add_scalar(k, v, step)

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()


class ExampleIdLog:
  """`example_ids.p<process>.jsonl`: the (user, item) ids of each step's batch
  on this process (config.train.log_example_ids; off by default). Lets a test
  prove that a resumed stream repeats and skips nothing."""

  def __init__(self, workdir: str, resumed_from: int):
    self.path = os.path.join(workdir, f"example_ids.p{jax.process_index()}.jsonl")
    truncate_after(self.path, resumed_from)

  def write(self, step: int, batch: dict) -> None:
    row = dict(step=int(step), user_id=np.asarray(batch["user_id"]).tolist(),
               item_id=np.asarray(batch["item_id"]).tolist())
    with open(self.path, "a") as f:
      f.write(json.dumps(row) + "\n")


def truncate_after(path: str, step: int, log=None) -> None:
  """Drops rows past `step` (a resumed run rewrites them, never duplicates)
  and a torn last line (warned about through `log`)."""
  if not os.path.exists(path):
    return
  rows = [r for r in read_metrics(path, log) if r["step"] <= step]
  with atomic_write(path) as f:
    f.writelines(json.dumps(r) + "\n" for r in rows)


def read_metrics(path: str, log=None) -> list[dict]:
  """The rows of a JSON-lines file (metrics.jsonl, example_ids.*.jsonl).

  A torn last line (its writer was killed mid-line) is skipped, with a
  warning through `log` if given; a bad line before the last one is
  damage, not a torn write: MmjaxError naming the file and line.
  """
  with open(path) as f:
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


def plot_curves(metrics_path: str, out_path: str) -> None:
  """One panel per logged quantity against step."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  rows = read_metrics(metrics_path)
  if not rows:
    return
  keys = [k for k in rows[-1] if k != "step"]
  cols = 4
  nrows = math.ceil(len(keys) / cols)
  fig, axes = plt.subplots(nrows, cols, figsize=(4 * cols, 2.6 * nrows), squeeze=False)
  steps = np.asarray([r["step"] for r in rows])
  for ax, key in zip(axes.flat, keys):
    ax.plot(steps, [r.get(key, np.nan) for r in rows])
    ax.set_title(key, fontsize=9)
    ax.set_xlabel("step", fontsize=8)
    ax.tick_params(labelsize=7)
  for ax in list(axes.flat)[len(keys):]:
    ax.axis("off")
  fig.tight_layout()
  if isinstance(out_path, str):
    with atomic_write(out_path, "wb") as f:
      fig.savefig(f, format="png", dpi=90)
  else:   # A buffer.
    fig.savefig(out_path, format="png", dpi=90)
  plt.close(fig)
