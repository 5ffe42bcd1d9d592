"""What a run leaves behind: metrics.jsonl, TensorBoard events, curves.png."""

import json
import math
import os

import jax
import numpy as np


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


def truncate_after(path: str, step: int) -> None:
  """Drops rows past `step` (a resumed run rewrites them, never duplicates)."""
  if not os.path.exists(path):
    return
  with open(path) as f:
    rows = [line for line in f if line.strip() and json.loads(line)["step"] <= step]
  with open(path, "w") as f:
    f.writelines(rows)


def read_metrics(path: str) -> list[dict]:
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


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
  fig.savefig(out_path, dpi=90)
  plt.close(fig)
