"""A NaN/Inf loss or gradient norm never reaches the parameters."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import training_runs as runs
from mmjax.errors import MmjaxError
from mmjax.train import guard
from mmjax import mesh as mesh_lib
from mmjax.train import reporting
from mmjax.run import train_and_evaluate


def _toy_step(loss, grad_norm):
  def step_fn(state, batch):
    new = dict(state, params=state["params"] + batch, step=state["step"] + 1)
    return new, dict(loss=jnp.float32(loss), grad_norm=jnp.float32(grad_norm))
  return jax.jit(guard.skip_nonfinite(step_fn))


def _toy_state():
  return dict(params=jnp.ones(3), step=jnp.int32(4), skipped=jnp.int32(1))


@pytest.mark.parametrize("loss,grad_norm", [(np.nan, 1.0), (1.0, np.inf), (np.inf, np.nan)])
def test_nonfinite_step_is_not_applied_but_counted(loss, grad_norm):
  state, metrics = _toy_step(loss, grad_norm)(_toy_state(), jnp.full(3, 5.0))
  np.testing.assert_array_equal(state["params"], np.ones(3))
  assert int(state["step"]) == 5 and int(state["skipped"]) == 2
  assert int(metrics["skipped"]) == 2


def test_finite_step_is_applied():
  state, _ = _toy_step(0.5, 2.0)(_toy_state(), jnp.full(3, 5.0))
  np.testing.assert_array_equal(state["params"], np.full(3, 6.0))
  assert int(state["step"]) == 5 and int(state["skipped"]) == 1


def test_policy_limits():
  skip = guard.NanPolicy("skip", max_skipped_steps=2)
  assert skip.observe(3, 0) is None
  assert "step 4" in skip.observe(4, 1) and not skip.failed
  assert skip.observe(5, 1) is None   # No new skip.
  skip.observe(6, 2)
  assert not skip.failed
  skip.observe(7, 3)
  assert skip.failed and "max_skipped_steps=2" in str(skip.error(7))
  stop = guard.NanPolicy("stop", max_skipped_steps=2)
  stop.observe(1, 1)
  assert stop.failed


POISONED_STEP = 2


@pytest.fixture()
def poisoned(monkeypatch):
  """NaN images in the batch of step POISONED_STEP of a fresh run."""
  calls = []
  real = mesh_lib.global_batch

  def global_batch(local, mesh):
    calls.append(1)
    if len(calls) == POISONED_STEP:
      local = dict(local, image=np.full_like(local["image"], np.nan))
    return real(local, mesh)

  monkeypatch.setattr(mesh_lib, "global_batch", global_batch)


def _config(config, policy):
  config.train.update(steps=3, log_every=1, checkpoint_every=1, keep_checkpoints=5,
                      nan_policy=policy)
  return config


def test_skip_policy_skips_the_poisoned_step(config, tmp_path, poisoned):
  lines = []
  train_and_evaluate(_config(config, "skip"), str(tmp_path), log=lines.append)
  rows = reporting.read_metrics(os.path.join(tmp_path, "metrics.jsonl"))
  assert [r["skipped"] for r in rows] == [0, 1, 1]
  assert not np.isfinite(rows[1]["loss"]) and np.isfinite(rows[2]["loss"])
  assert any("step 2: non-finite" in l for l in lines)
  before, skipped = (runs.checkpoint_state(tmp_path, s) for s in (1, 2))
  for a, b in zip(jax.tree.leaves(before["params"]), jax.tree.leaves(skipped["params"])):
    np.testing.assert_array_equal(a, b)
  final = runs.checkpoint_state(tmp_path, 3)
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(final["params"]))


def test_stop_policy_saves_the_last_good_state_and_fails(config, tmp_path, poisoned):
  with pytest.raises(MmjaxError, match="non-finite loss or gradient norm at step 2"):
    train_and_evaluate(_config(config, "stop"), str(tmp_path), log=lambda *_: None)
  assert runs.checkpoint_steps(tmp_path) == [1, 2]
  good, saved = (runs.checkpoint_state(tmp_path, s) for s in (1, 2))
  for a, b in zip(jax.tree.leaves(good["params"]), jax.tree.leaves(saved["params"])):
    np.testing.assert_array_equal(a, b)
  assert int(saved["skipped"]) == 1
  assert not os.path.exists(os.path.join(tmp_path, "summary.json"))


def test_the_error_names_the_checkpoint_of_a_longer_call():
  """With train.steps_per_call > 1 the checkpoint is the call's last step."""
  from mmjax.train.guard import NanPolicy
  policy = NanPolicy("stop", 0, skipped=1)
  assert "checkpoint 5 holds the last good parameters" in str(policy.error(5))
  msg = str(policy.error(5, saved_at=8))
  assert "at step 5" in msg and "checkpoint 8 holds the parameters after step 8" in msg
