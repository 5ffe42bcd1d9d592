"""Runs killed at arbitrary steps resume bit-exactly, also on another device
count; a resume that would change the batch size, seed, data or go back in
steps is refused."""

import json
import os
import re
import shutil
import signal

import jax
import numpy as np
import pytest

import training_runs as runs
from mmjax.data import store
from mmjax.data.pipeline import train_dataset
from mmjax.errors import MmjaxError
from mmjax.run import train_and_evaluate
from mmjax.train import reporting
from mmjax.train import resume
from cpu_collectives import retry_on_rendezvous_abort

STEPS = 12
EXACT = ("train.steps=12", "train.log_every=1", "train.checkpoint_every=1",
         "train.keep_checkpoints=2")


def _losses(workdir) -> list[dict]:
  """Every logged value except the wall-clock throughput."""
  rows = reporting.read_metrics(os.path.join(workdir, "metrics.jsonl"))
  return [{k: v for k, v in r.items() if k not in runs.TIMINGS} for r in rows]


@pytest.mark.xdist_group("simulated_devices")
@pytest.mark.slow
@retry_on_rendezvous_abort
def test_sigkill_twice_then_resume_is_bit_identical(tmp_path, data_dir):
  ref_dir, run_dir = str(tmp_path / "reference"), str(tmp_path / "interrupted")
  reference = runs.launch(ref_dir, data_dir, *EXACT)   # Runs alongside.
  first = runs.kill_after(runs.launch(run_dir, data_dir, *EXACT), run_dir, 3)
  resumed_at = runs.checkpoint_steps(run_dir)[-1]
  second = runs.kill_after(runs.launch(run_dir, data_dir, *EXACT), run_dir,
                           resumed_at + 3)
  assert first < second < STEPS
  rc, _, err = runs.finish(runs.launch(run_dir, data_dir, *EXACT))
  assert rc == 0, err[-3000:]
  rc, _, err = runs.finish(reference)
  assert rc == 0, err[-3000:]

  got, want = _losses(run_dir), _losses(ref_dir)
  assert [r["step"] for r in got] == list(range(1, STEPS + 1))
  assert got == want   # Exact float equality, every term of every step.
  a = runs.checkpoint_state(run_dir, STEPS)
  b = runs.checkpoint_state(ref_dir, STEPS)
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.xdist_group("simulated_devices")
@pytest.mark.slow
@retry_on_rendezvous_abort
def test_resume_on_four_devices_after_eight_continues_the_stream(tmp_path, data_dir,
                                                                 config):
  workdir = str(tmp_path / "run")
  # Both runs end by SIGTERM (preemption), so neither spends time evaluating.
  common = ("train.steps=1000", "train.log_example_ids=True", "train.log_every=1",
            "train.checkpoint_every=1000")
  eight = runs.launch(workdir, data_dir, *common, devices=8)
  runs.signal_after(eight, workdir, 2, signal.SIGTERM)
  rc, out, err = runs.finish(eight)
  assert rc == 0, err[-3000:]
  stopped = runs.checkpoint_steps(workdir)[-1]
  four = runs.launch(workdir, data_dir, *common, devices=4)
  runs.signal_after(four, workdir, stopped + 3, signal.SIGTERM)
  rc, out, err = runs.finish(four)
  assert rc == 0, err[-3000:]
  assert f"resumed from checkpoint at step {stopped}" in out
  assert "over 4 cpu device(s)" in out
  total = runs.checkpoint_steps(workdir)[-1]
  assert total >= stopped + 3

  logged = reporting.read_metrics(os.path.join(workdir, "example_ids.p0.jsonl"))
  assert [r["step"] for r in logged] == list(range(1, total + 1))
  # The uninterrupted stream, straight from the pipeline.
  stream = iter(train_dataset(data_dir, store.load_catalog(data_dir), config.data,
                              batch_size=config.train.batch_size, seed=config.seed,
                              co_items=config.loss.co_item > 0))
  for row in logged:
    want = next(stream)
    assert row["user_id"] == want["user_id"].tolist(), row["step"]
    assert row["item_id"] == want["item_id"].tolist(), row["step"]


def _copy(trained_workdir, tmp_path) -> str:
  workdir = str(tmp_path / "run")
  shutil.copytree(trained_workdir, workdir)
  return workdir


def _as_trained(config):
  """The config of the `trained_workdir` fixture's run."""
  config.train.steps = 4
  config.train.checkpoint_every = 4
  return config


def test_changed_batch_size_is_refused_unless_allowed(tmp_path, trained_workdir,
                                                      config):
  workdir = _copy(trained_workdir, tmp_path)
  config = _as_trained(config)
  config.train.batch_size = 32
  with pytest.raises(MmjaxError) as e:
    train_and_evaluate(config, workdir, log=lambda *_: None)
  assert str(e.value) == (
      f"refusing to resume checkpoint 4 in {workdir}: changed since it was "
      "trained: train.batch_size (16 -> 32); use the original values, another "
      "--workdir, or --config.train.allow_resume_change=train.batch_size")
  assert not os.path.exists(os.path.join(workdir, ".lock"))   # Released.
  config.train.allow_resume_change = ("train.batch_size",)
  summary = train_and_evaluate(config, workdir, log=lambda *_: None)
  assert summary["train"]["resumed_from"] == 4


def test_steps_below_the_checkpoint_are_refused(tmp_path, trained_workdir, config):
  workdir = _copy(trained_workdir, tmp_path)
  config = _as_trained(config)
  config.train.steps = 3
  with pytest.raises(MmjaxError, match=r"config.train.steps=3 is below step 4 "):
    train_and_evaluate(config, workdir, log=lambda *_: None)


def test_changed_seed_and_data_are_named(tmp_path):
  old = {"train.batch_size": 16, "seed": 0, "data": {"fingerprint": "a", "dir": "/d1"}}
  (tmp_path / resume.IDENTITY_FILE).write_text(json.dumps(old))
  new = {"train.batch_size": 16, "seed": 1, "data": {"fingerprint": "b", "dir": "/d2"}}
  with pytest.raises(MmjaxError, match=re.escape(
      "seed (0 -> 1), data (another catalog: /d1 -> /d2); ") + ".*"
      + re.escape("allow_resume_change=seed,data")):
    resume.check_identity(str(tmp_path), new, (), 4)
  resume.check_identity(str(tmp_path), new, ("seed", "data"), 4)
  moved = dict(old, data={"fingerprint": "a", "dir": "/elsewhere"})
  resume.check_identity(str(tmp_path), moved, (), 4)   # Same catalog, moved.
