"""The one training loop: every task (the end-to-end multimodal model, the
feature-graph model on fixed features, ...) trains through `run`.

The loop owns what every run needs: resuming from the newest good Orbax
checkpoint (with the data position and the early-stopping record), the
config and catalog checks of a resume, metrics.jsonl and TensorBoard, the
progress bar, the NaN guard, SIGTERM and Ctrl-C, the validation cadence,
early stopping and the best-valid state (<workdir>/best). A task supplies
what differs, through the `Task` interface below: its state, its compiled
programs, its batches and its evaluation. Evaluating the best state on test
and writing summary.json is the caller's part (`mmjax.run`).
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any, Protocol

import jax
import numpy as np
from etils import epath
from tqdm import tqdm

from mmjax.errors import MmjaxError
from mmjax.train import guard
from mmjax.train import preemption
from mmjax.train import reporting
from mmjax.train import resume
from mmjax.train.checkpoint import BestCheckpoint, Checkpointer
from mmjax.train.early_stop import EarlyStopping

LOOP_RECORD = "early_stop"


class Task(Protocol):
  """What a task gives the loop. `unit` is what `total`, the cadences and
  `state["step"]` count ("step" or "epoch")."""
  unit: str
  total: int
  total_key: str           # The config key of `total`, for messages.
  runs: int                # Runs trained together (vmapped seeds); 1 for most.
  per_call: int            # Units per call of the compiled program, at most.
  log_every: int           # Units between metrics rows.
  guarded: bool            # A non-finite unit leaves the last good state.
  keeps_best: bool         # The state holds each run's best (`keep_best`).
  examples_per_unit: int
  identity: dict           # What a resume must share (resume.run_identity).
  data_iterator: Any       # A checkpointable grain iterator, or None.

  def initial_state(self) -> dict:
    """The sharded train state at unit 0, with an int `step` leaf."""

  def prepare(self, state: dict, start: int, workdir: str, log) -> float:
    """Compiles the first call and reports its memory; returns FLOPs/unit."""

  def advance(self, state: dict, n: int) -> tuple[dict, list[dict], float]:
    """Trains `n` units: (state, one metrics row per unit, seconds spent
    waiting for data)."""

  def evaluate(self, state: dict) -> list[dict]:
    """Valid metrics, one dict per run."""

  def keep_best(self, state: dict, improved: list[bool]) -> dict:
    """The state with the improved runs' current parameters kept as their
    best (a task whose runs share no state returns it unchanged)."""

  def servable(self, state: dict) -> dict:
    """What <workdir>/best keeps: the part of the state that serves."""


@dataclasses.dataclass
class Outcome:
  """How the loop ended."""
  state: dict                    # The latest train state.
  early_stop: EarlyStopping
  best_step: int | None          # The step <workdir>/best holds.
  stats: dict
  metrics_path: str
  last_row: dict                 # The last metrics row written.
  preempted_at: int | None = None
  preempted_by: str | None = None   # "SIGTERM" or "SIGINT" (Ctrl-C).


def call_length(step: int, total: int, per_call: int, *every: int) -> int:
  """Units in the call after `step`: at most `per_call`, ending at or before
  the next multiple of each cadence in `every` (0: none) and the end."""
  n = min(per_call, total - step)
  for e in every:
    if e:
      n = min(n, e - step % e)
  return n


def _discard_best_after(workdir: str, step: int) -> None:
  """Best states of units past the resumed checkpoint are trained again
  (and saved again, identically)."""
  if jax.process_index() != 0:
    return
  best = epath.Path(workdir) / "best"
  if best.exists():
    for d in best.iterdir():
      if d.name.isdigit() and int(d.name) > step:
        d.rmtree()


def _mean_rows(rows: list[dict]) -> dict:
  return {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}


def _valid_row(stop: EarlyStopping, valid: list[dict]) -> dict:
  row = {f"valid_{k}": float(np.mean([m[k] for m in valid])) for k in valid[0]}
  row[f"best_valid_{stop.metric}"] = stop.score
  if stop.runs > 1:   # Per run, to compare seeds and grid points over time.
    row.update({f"valid_{stop.metric}/run{r}": m[stop.metric]
                for r, m in enumerate(valid)})
  return row


def restore(task: Task, config, workdir: str, log):
  """(state, early-stopping record, Checkpointer): the newest good
  checkpoint's, or the initial ones."""
  ckpt = Checkpointer(workdir, every=config.train.checkpoint_every,
                      keep=config.train.keep_checkpoints)
  state = resume.restore_newest_good(
      ckpt, task.initial_state(), task.data_iterator, config, workdir, log,
      identity=task.identity, total=task.total, total_key=task.total_key)
  stopping = config.train.early_stop
  record = ckpt.restore_loop(int(state["step"])) if ckpt.latest_step() else None
  if record and LOOP_RECORD in record:
    stop = EarlyStopping.from_json(record[LOOP_RECORD])
  else:
    stop = EarlyStopping.start(task.runs, stopping.metric, stopping.patience)
  return state, stop, ckpt


def run(task: Task, config, workdir: str, log=print) -> Outcome:
  """Trains `task` from the newest good checkpoint in `workdir` (or from
  scratch) to `task.total` units or an early stop."""
  state, stop, ckpt = restore(task, config, workdir, log)
  start = int(state["step"])
  _discard_best_after(workdir, start)
  best = BestCheckpoint(workdir)
  if jax.process_index() == 0:
    resume.save_config(workdir, config)
    resume.save_identity(workdir, task.identity)
  writer = reporting.MetricsWriter(workdir)
  if writer.active:   # Rows past the checkpoint, and a line torn by a kill.
    reporting.truncate_after(writer.path, start, log)
  flops = task.prepare(state, start, workdir, log)

  total, eval_every = task.total, config.train.eval_every
  nan_policy = guard.NanPolicy.from_config(config.train, int(state.get("skipped", 0)))
  bar = tqdm(total=total, initial=start, desc="train", unit=task.unit,
             dynamic_ncols=True,
             disable=jax.process_index() != 0 or start >= total or stop.done)
  call_seconds, eval_seconds = [], []
  log_state = dict(pending=[], last_row={}, waited=0.0, waited_since_log=0.0,
                   t_log=time.time())
  t_loop = time.time()

  def flush(step: int, valid: list[dict] | None = None) -> None:
    """Writes the mean of the rows since the last one (and `valid`)."""
    ls = log_state
    now = time.time()
    row = _mean_rows(ls["pending"])
    ls["pending"] = []
    row["examples_per_sec"] = ((step - start) * task.examples_per_unit
                               / max(now - t_loop, 1e-9))
    if task.guarded:
      row["skipped"] = nan_policy.skipped   # The running count, not its mean.
    row["data_wait_share"] = ls["waited_since_log"] / max(now - ls["t_log"], 1e-9)
    ls["waited"] += ls["waited_since_log"]
    ls["waited_since_log"], ls["t_log"] = 0.0, now
    if valid is not None:
      row.update(_valid_row(stop, valid))
    writer.write(step, row)
    ls["last_row"] = row
    postfix = dict(loss=f"{row['loss']:.3f}", ex_s=f"{row['examples_per_sec']:.0f}")
    if f"best_valid_{stop.metric}" in row:
      postfix[f"valid_{stop.metric}"] = f"{row[f'best_valid_{stop.metric}']:.4f}"
    postfix["data_wait"] = f"{row['data_wait_share']:.0%}"
    bar.set_postfix(**postfix)

  preempted_at, step, best_unsaved = None, start, False
  loop_record = lambda: {LOOP_RECORD: stop.to_json()}
  with preemption.StopFlag() as signals:
    while step < total and not stop.done:
      signals.unsaved = ("the work since the newest complete checkpoint was not "
                         f"saved; a rerun resumes from it ({ckpt.directory})")
      k = call_length(step, total, task.per_call, config.train.checkpoint_every,
                      eval_every)
      t0, c0 = time.time(), time.process_time()
      state, rows, wait = task.advance(state, k)
      call_seconds.append(((time.time() - t0) / k, (time.process_time() - c0) / k))
      log_state["waited_since_log"] += wait
      failed_at = None
      for i, row in enumerate(rows):
        step += 1
        log_state["pending"].append(row)
        if task.guarded:
          note = nan_policy.observe(step, int(row["skipped"]))
          if note:
            log(note)
          if nan_policy.failed:
            failed_at = step
        elif not all(math.isfinite(v) for v in row.values()):
          failed_at = step
        if failed_at is not None:
          break
        bar.update(1)
        if i < len(rows) - 1 and step % task.log_every == 0:
          flush(step)   # The call's last row may come with an evaluation.
      evaluate = failed_at is None and (
          step == total or (eval_every and step % eval_every == 0))
      valid = None
      if evaluate:
        t0, c0 = time.time(), time.process_time()
        valid = task.evaluate(state)
        eval_seconds.append((time.time() - t0, time.process_time() - c0))
        improved = stop.update(step, valid)
        if any(improved):
          state = task.keep_best(state, improved)
          # A state that holds its best is saved with the next checkpoint
          # (frequent evaluations would otherwise write one per improvement).
          best_unsaved = task.keeps_best
          if not task.keeps_best:
            best.save(step, task.servable(state), stop.score)
      if log_state["pending"] and (step % task.log_every == 0 or step == total
                                   or evaluate or failed_at is not None):
        flush(step, valid)
      if failed_at is not None:
        bar.close()
        _fail(task, ckpt, state, loop_record(), nan_policy, failed_at)
      step = int(state["step"])
      finished = step == total or stop.done
      saved = ckpt.save(step, state, task.data_iterator, loop=loop_record(),
                        force=finished)
      if signals.requested and not finished and not saved:
        saved = ckpt.save(step, state, task.data_iterator, loop=loop_record(),
                          force=True)
      if saved and best_unsaved:   # best/ never runs ahead of the checkpoints.
        best.save(step, task.servable(state), stop.score)
        best_unsaved = False
      if signals.requested and not finished:   # The save waits for one in flight.
        signals.unsaved = (f"the checkpoint of {task.unit} {step} was not finished; "
                           "a rerun resumes from the newest complete one "
                           f"({ckpt.directory})")
        ckpt.wait()
        preempted_at = step
        break
  bar.close()
  ckpt.wait()
  best.wait()
  seconds = time.time() - t_loop
  ckpt.close()
  writer.close()
  if preempted_at is not None:
    how = ("interrupted (Ctrl-C)" if signals.requested == "SIGINT"
           else "preempted (SIGTERM)")
    log(f"{how}: saved checkpoint at {task.unit} {preempted_at} in "
        f"{ckpt.directory}; rerun the same command to resume")
  trained = (step - start) * task.examples_per_unit
  steady = lambda xs, i: float(np.median([x[i] for x in (xs[1:] or xs)])) if xs else 0.0
  stats = {
      f"{task.unit}s": step, "resumed_from": start, "seconds": seconds,
      "examples_per_sec": trained / max(seconds, 1e-9) if trained else 0.0,
      "flops_per_" + task.unit: flops,
      "data_wait_share": ((log_state["waited"] + log_state["waited_since_log"])
                          / max(seconds, 1e-9)),
      # The first call compiles: the medians leave it out.
      f"seconds_per_{task.unit}": steady(call_seconds, 0),
      f"cpu_seconds_per_{task.unit}": steady(call_seconds, 1),
      "seconds_per_eval": steady(eval_seconds, 0),
      "cpu_seconds_per_eval": steady(eval_seconds, 1),
      "first_call_seconds": call_seconds[0][0] if call_seconds else 0.0,
      "early_stopped": stop.done and step < total,
      "best_step": best.step(),
  }
  outcome = Outcome(state=state, early_stop=stop, best_step=best.step(), stats=stats,
                    metrics_path=writer.path, last_row=log_state["last_row"],
                    preempted_at=preempted_at, preempted_by=signals.requested)
  best.close()
  return outcome


def _fail(task: Task, ckpt, state, record, nan_policy, step: int):
  """Stops on a non-finite unit: a guarded task's state is still good and is
  saved; otherwise the newest checkpoint stays the newest."""
  if task.guarded:
    saved_at = int(state["step"])
    ckpt.save(saved_at, state, task.data_iterator, loop=record, force=True)
    ckpt.wait()
    raise nan_policy.error(step, saved_at=saved_at)
  ckpt.wait()
  latest = ckpt.latest_step()
  held = ("no checkpoint was written yet" if latest is None else
          f"the newest checkpoint ({ckpt.directory}, {task.unit} {latest}) holds "
          "the last finite state")
  raise MmjaxError(f"non-finite loss at {task.unit} {step}: stopped; {held} "
                   "(lower train.lr or raise the temperature, or check the "
                   "features for NaN)")
