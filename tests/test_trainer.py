"""End to end on the tiny catalog: train, checkpoint, evaluate, resume."""

import json
import os

import jax
import numpy as np
import pytest

from mmjax.train import reporting
from mmjax.train.step import TERMS
from mmjax.run import train_and_evaluate

# One worker runs the whole module, so its module fixtures run once.
pytestmark = pytest.mark.xdist_group("test_trainer")


@pytest.fixture(scope="module")
def run(tmp_path_factory, data_dir):
  from tiny import tiny_config
  cfg = tiny_config()
  cfg.data.dir = data_dir
  workdir = str(tmp_path_factory.mktemp("run"))
  summary = train_and_evaluate(cfg, workdir, log=lambda *_: None)
  return cfg, workdir, summary


def test_run_writes_the_contract_files(run):
  cfg, workdir, summary = run
  on_disk = json.load(open(os.path.join(workdir, "summary.json")))
  assert on_disk["data"]["num_items"] == cfg.data.synthetic.num_items
  assert on_disk["data"]["num_users"] == cfg.data.synthetic.num_users
  for split in ("valid", "test", "oracle", "popularity"):
    for k in ("recall@10", "recall@20", "ndcg@20", "recall@50"):
      assert 0.0 <= on_disk[split][k] <= 1.0
  for k in ("t2i_r@1", "t2i_r@5", "i2t_r@1", "i2t_r@10"):
    assert 0.0 <= on_disk["retrieval"][k] <= 1.0
  assert on_disk["train"]["steps"] == cfg.train.steps
  assert on_disk["train"]["examples_per_sec"] > 0
  assert on_disk["config"]["train"]["batch_size"] == cfg.train.batch_size
  # The oracle knows the generating model; it must beat popularity.
  assert on_disk["oracle"]["recall@20"] > on_disk["popularity"]["recall@20"]
  rows = reporting.read_metrics(os.path.join(workdir, "metrics.jsonl"))
  assert [r["step"] for r in rows] == [2, 4, 6]
  for r in rows:
    assert {"loss", *TERMS} <= set(r) and np.isfinite(r["loss"])
    assert 0.0 <= r["data_wait_share"] <= 1.0
  assert 0.0 <= on_disk["train"]["data_wait_share"] <= 1.0
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["3", "6"]
  assert os.listdir(os.path.join(workdir, "tensorboard"))
  assert os.path.getsize(os.path.join(workdir, "curves.png")) > 1000


def test_steps_per_call_trains_the_same_steps(run, tmp_path):
  """train.steps_per_call = 2 with checkpoints every 3 steps runs calls of
  2, 1, 2 and 1 steps (a call never crosses a checkpoint): the same logged
  metrics, checkpoints, parameters and evaluation as one step per call."""
  import training_runs as runs
  cfg, workdir, summary = run
  cfg = cfg.copy_and_resolve_references()
  cfg.train.steps_per_call = 2
  lines = []
  got = train_and_evaluate(cfg, str(tmp_path), log=lines.append)
  drop = lambda r: {k: v for k, v in r.items() if k not in runs.TIMINGS}
  want_rows = reporting.read_metrics(os.path.join(workdir, "metrics.jsonl"))[:3]
  got_rows = reporting.read_metrics(os.path.join(tmp_path, "metrics.jsonl"))
  assert [r["step"] for r in got_rows] == [2, 4, 6]
  for a, b in zip(got_rows, want_rows):
    assert drop(a) == pytest.approx(drop(b), rel=1e-5, abs=1e-6)
  assert runs.checkpoint_steps(tmp_path) == [3, 6]
  a, b = (runs.checkpoint_state(d, 6)["params"] for d in (tmp_path, workdir))
  # Float noise only (XLA may fuse the scanned step differently); Adam's
  # normalized updates lift it to ~1e-6 on near-zero parameters.
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(x, y, rtol=1e-4, atol=2e-5)
  assert got["test"]["recall@20"] == pytest.approx(summary["test"]["recall@20"], abs=1e-6)
  assert got["train"]["flops_per_step"] == pytest.approx(
      summary["train"]["flops_per_step"], rel=0.05)


@pytest.mark.parametrize("step,expected", [(0, 2), (2, 1), (3, 2), (5, 1), (6, 0)])
def test_calls_end_at_checkpoints_and_at_the_end(step, expected):
  from mmjax.train.loop import call_length
  assert call_length(step, 6, 2, 3) == expected


@pytest.mark.parametrize("step,expected", [(0, 2), (2, 1), (3, 1), (4, 2), (7, 1)])
def test_calls_end_at_evaluations_too(step, expected):
  from mmjax.train.loop import call_length
  assert call_length(step, 8, 2, 3, 4) == expected


def test_a_finished_run_with_steps_per_call_only_reevaluates(run, tmp_path):
  """Rerunning a finished run trains nothing (k-step calls or not) and
  evaluates the same checkpoint again."""
  cfg, workdir, _ = run
  cfg = cfg.copy_and_resolve_references()
  cfg.train.steps_per_call = 4
  first = train_and_evaluate(cfg, str(tmp_path), log=lambda *_: None)
  lines = []
  again = train_and_evaluate(cfg, str(tmp_path), log=lines.append)
  assert "resumed from checkpoint at step 6" in lines
  assert again["train"]["resumed_from"] == 6
  assert again["test"] == first["test"]


def test_rerun_resumes_from_the_latest_checkpoint(run):
  cfg, workdir, _ = run
  cfg = cfg.copy_and_resolve_references()
  cfg.train.steps = 8
  lines = []
  summary = train_and_evaluate(cfg, workdir, log=lines.append)
  assert "resumed from checkpoint at step 6" in lines
  assert summary["train"]["resumed_from"] == 6
  rows = reporting.read_metrics(os.path.join(workdir, "metrics.jsonl"))
  assert [r["step"] for r in rows] == [2, 4, 6, 8]


def test_dry_run_compiles_the_step_and_writes_only_its_report(config, tmp_path):
  workdir = tmp_path / "w"
  got = train_and_evaluate(config, str(workdir), log=lambda *_: None, dry_run=True)
  assert got["dry_run"] and got["flops_per_step"] > 0
  assert got["per_device_bytes"]["arguments"] > 0
  assert os.listdir(workdir) == ["dry_run.json"]   # No checkpoint, no lock.
