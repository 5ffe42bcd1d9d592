"""Runs killed at arbitrary steps resume bit-exactly, also on another device count."""

import os
import signal

import jax
import numpy as np
import pytest

import training_runs as runs
from mmjax.data import store
from mmjax.data.pipeline import train_dataset
from mmjax.train import reporting

STEPS = 12
EXACT = ("train.steps=12", "train.log_every=1", "train.checkpoint_every=1",
         "train.keep_checkpoints=2")


def _losses(workdir) -> list[dict]:
  """Every logged value except the wall-clock throughput."""
  rows = reporting.read_metrics(os.path.join(workdir, "metrics.jsonl"))
  return [{k: v for k, v in r.items() if k != "examples_per_sec"} for r in rows]


@pytest.mark.xdist_group("simulated_devices")
@pytest.mark.slow
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
